"""``envkit verify NAME --host A --host B …``: the same verification on many engines at once.

Each host runs in a thread of its own: its engine is reached (``envkit.engine.client``), the image
brought there if it lacks it, then preflight, probe and benchmark run there as ``verify`` runs them
here (``envkit.verify.runner``), with the host's own engine, GPUs and driver. A host that cannot be
reached or fails ends in its own result; the others go on. The fleet's exit code is the worst of
the hosts' (``SEVERITY``).

How the image gets to a host, in this order:

1. **present**: the host's engine already holds the exact image ID; nothing moves.
2. **pull**: a registry location is recorded for the image ID (``envkit push`` or a pull by
   digest remembered it); the host's engine pulls it by digest and the ID is checked before the
   tag moves. A location that does not answer is noted and the next one tried.
3. **stream**: `docker save` here streamed into `docker load` there, through the two engine
   connections, with no archive written to disk; the loaded image's ID is checked.

The verification itself always names the image by ID, so a host whose tag names another build is
never verified by mistake.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal

import docker
import docker.errors
import requests.exceptions
from pydantic import BaseModel, ConfigDict, Field

from envkit import __version__
from envkit.engine.archive import transfer_image
from envkit.engine.client import EngineHost, connection_lost, find_image, get_client, host_client
from envkit.engine.registry import known_locations, pull_image
from envkit.errors import (
    EngineRefused,
    EngineUnreachable,
    EnvkitError,
    GpuHostNotReady,
    IntegrityError,
    Interrupted,
    NetworkError,
    UsageError,
    VerificationFailed,
)
from envkit.events import Event
from envkit.host import gpu as gpu_host
from envkit.verify import preflight as pf
from envkit.verify import runner
from envkit.verify.report import VerifyReport

SCHEMA = "envkit-verify-fleet/1"

# The fleet's exit code is the hosts' worst, worst first:
#   1  a bug on some host: nothing else can be trusted;
#   5  an image that is not what its ID or digest says (a damaged or tampered copy);
#   8  a host verified and found wrong (numerics, throughput, hang): the verification's finding;
#   7  a host not ready for the image (runtime, driver, architecture);
#   6  the image's registry did not answer and the host could not be given the image;
#   4  a host's engine refused the image (load failed, disk full);
#   3  a host's engine could not be reached;
#   2  a usage error found on one host only;
#   0  passed.
# Any other code (a newer one) ranks just below 1.
SEVERITY = (1, 5, 8, 7, 6, 4, 3, 2, 0)

HostStatus = Literal["pass", "failed", "host_not_ready", "unreachable", "error"]

ClientFactory = Callable[[EngineHost], Any]
Show = Callable[[Event], None]


def severity_rank(code: int) -> int:
    """Smaller is worse."""
    return SEVERITY.index(code) if code in SEVERITY else 1


def worst_exit_code(codes: Iterable[int]) -> int:
    return min(codes, key=severity_rank, default=0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Transfer(_Model):
    method: Literal["present", "pull", "stream"]
    detail: str
    location: str | None = None
    bytes: int | None = None
    seconds: float = 0.0
    # Registry locations that did not answer before the image was streamed instead.
    failed_locations: list[str] = []


class HostError(_Model):
    label: str
    message: str
    hint: str | None = None


class HostResult(_Model):
    host: str  # as given on the command line
    engine: str  # the URL dialled
    status: HostStatus
    exit_code: int
    summary: str
    transfer: Transfer | None = None
    gpu: str | None = None
    driver: str | None = None
    images_per_s: dict[str, float] = {}
    seconds: float = 0.0
    error: HostError | None = None
    report: VerifyReport | None = None


class FleetReport(_Model):
    schema_: str = Field(default=SCHEMA, alias="schema")
    envkit_version: str = __version__
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    target: str
    image: str
    image_id: str
    exit_code: int
    hosts: list[HostResult]

    @property
    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts if h.exit_code != 0]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True) + "\n"


# --------------------------------------------------------------------------- the host's GPUs


class HostGpuReader:
    """The host's driver and GPUs, read where they are: ``nvidia-smi`` in a container of the image
    on the host's engine, with a GPU request (the NVIDIA runtime mounts the tool in). Run at most
    once, and only when a check asks (``--cpu`` never does)."""

    def __init__(self, client: Any, image_id: str, run_id: str) -> None:
        self.client, self.image_id, self.run_id = client, image_id, run_id
        self._done = False
        self.csv: str | None = None
        self.started = False
        self.problem: str | None = None

    def _read(self) -> None:
        if self._done:
            return
        self._done = True
        from docker.types import DeviceRequest  # noqa: PLC0415

        container = None
        try:
            container = self.client.containers.create(
                self.image_id,
                entrypoint=[gpu_host.NVIDIA_SMI_QUERY[0]],
                command=gpu_host.NVIDIA_SMI_QUERY[1:],
                device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])],
                network_mode="none",
                labels={runner.LABEL_VERIFY_RUN: self.run_id},
                detach=True,
            )
            container.start()
            self.started = True
            status = container.wait(timeout=60)
            text = container.logs(stdout=True, stderr=False).decode(errors="replace")
            if int(status.get("StatusCode", -1)) == 0 and text.strip():
                self.csv = text
            else:
                self.problem = f"nvidia-smi exited {status.get('StatusCode')} in a GPU container"
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            self.problem = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except (docker.errors.APIError, requests.exceptions.RequestException):
                    pass

    def nvidia_smi(self) -> str | None:
        self._read()
        return self.csv

    def hook(self, name: str) -> str | None:
        """Stands in for ``which nvidia-container-runtime-hook`` on the host: a GPU container that
        started there proves the engine's GPU device driver works."""
        if name != "nvidia-container-runtime-hook":
            return None
        self._read()
        return "the host's engine (a GPU container started there)" if self.started else None

    def driver(self) -> str | None:
        return gpu_host.parse_nvidia_smi(self.csv).driver if self.csv else None


def _remote_disk(_path: str) -> int:
    raise OSError("the engine is on another machine; its free disk is not measured from here")


def host_readers(client: Any, host: EngineHost, gpus: HostGpuReader) -> pf.HostReaders:
    """Preflight's readers for the host's engine: versions and runtimes from it, GPUs and driver
    through ``gpus``, free disk only when the engine's socket (so its disk) is on this machine."""
    readers = pf.HostReaders(
        docker_version=client.version,
        docker_info=client.info,
        nvml=lambda: None,
        nvidia_smi=gpus.nvidia_smi,
        which=gpus.hook,
        list_dir=lambda _path: [],
    )
    if not host.on_this_machine:
        readers.disk_free = _remote_disk
    return readers


# --------------------------------------------------------------------------- the image


@dataclass(frozen=True)
class Source:
    """The image as this machine's engine holds it."""

    client: Any
    requested: str
    ref: str  # the tag (or ID) it is known by here
    image_id: str
    tagged: bool


def local_source(requested: str, client_factory: Callable[[], Any] = get_client) -> Source:
    client = client_factory()
    ref = runner.resolve_image_ref(requested)
    attrs = find_image(client, ref)
    if attrs is None:
        raise UsageError(
            f"image {ref} is not on this machine's engine, which gives it to the hosts",
            hint=f"build it first (`envkit build {requested}`), or pull it (`envkit pull`)",
        )
    tagged = not ref.startswith("sha256:") and ref in (attrs.get("RepoTags") or [])
    return Source(client, requested, ref, attrs["Id"], tagged)


def bring_image(source: Source, client: Any, say: Callable[[str], None]) -> Transfer:
    """Make the host's engine hold ``source``'s image: present, pulled by digest, or streamed."""
    started = time.monotonic()
    if find_image(client, source.image_id) is not None:
        return Transfer(method="present", detail=f"image {source.image_id[7:19]} already there")
    tag = source.ref if source.tagged else None
    failed: list[str] = []
    for location in known_locations(source.image_id):
        say(f"pulling {location}")
        try:
            pulled = pull_image(client, location, expected_id=source.image_id, tag=tag, progress=say)
        except NetworkError as exc:
            say(f"{location} did not answer: {exc.message}")
            failed.append(f"{location}: {exc.message}")
            continue
        return Transfer(
            method="pull", detail=f"pulled {location}", location=location,
            bytes=pulled.bytes_downloaded, seconds=round(time.monotonic() - started, 2),
        )
    result = transfer_image(source.client, client, source.ref, show=lambda e: say(e.message))
    why = "no registry location answered" if failed else "no registry location recorded"
    return Transfer(
        method="stream", detail=f"exported here and imported there, streamed ({why})",
        bytes=result.bytes_streamed, seconds=round(time.monotonic() - started, 2), failed_locations=failed,
    )


# --------------------------------------------------------------------------- one host


def best_rates(report: VerifyReport | None) -> dict[str, float]:
    """Each workload's best images/s over the rungs that ran."""
    if report is None or report.bench is None:
        return {}
    rates = {}
    for work in report.bench.workloads:
        measured = [r.images_per_s for r in work.rungs if r.status == "ok" and r.images_per_s]
        if measured:
            rates[work.name] = round(max(measured), 2)
    return rates


def gpu_name(report: VerifyReport | None, gpus: HostGpuReader | None) -> str | None:
    if report is not None and report.bench is not None:
        device = report.bench.device
        if device.type == "cpu":
            return f"cpu ({device.name})"
        count = f"{device.count}x " if device.count and device.count > 1 else ""
        return count + device.name
    if report is not None and report.probe is not None and report.probe.devices:
        names = [d.name for d in report.probe.devices]
        return f"{len(names)}x {names[0]}" if len(set(names)) == 1 and len(names) > 1 else ", ".join(names)
    if gpus is not None and gpus.csv:
        host = gpu_host.parse_nvidia_smi(gpus.csv)
        return ", ".join(g.name for g in host.gpus) or None
    return None


def _failure(host: EngineHost, exc: BaseException, started: float, transfer: Transfer | None) -> HostResult:
    exc = connection_lost(exc, host.url) or exc
    if isinstance(exc, EnvkitError):
        unreachable = isinstance(exc, EngineUnreachable)
        status: HostStatus = "unreachable" if unreachable else "error"
        if isinstance(exc, GpuHostNotReady):
            status = "host_not_ready"
        elif isinstance(exc, VerificationFailed):
            status = "failed"
        error = HostError(label=exc.label, message=exc.message, hint=exc.hint)
        code = exc.exit_code
    else:  # a bug: said as such, and the other hosts go on
        status, code = "error", 1
        error = HostError(label="internal error", message=f"{type(exc).__name__}: {exc}",
                          hint="run again with --debug and report it")
    return HostResult(
        host=host.name, engine=host.url, status=status, exit_code=code,
        summary=f"{error.label}: {error.message}", transfer=transfer, error=error,
        seconds=round(time.monotonic() - started, 2),
    )


def verify_host(
    host: EngineHost,
    source: Source,
    options: runner.VerifyOptions,
    *,
    client_factory: ClientFactory = host_client,
    show: Show | None = None,
) -> HostResult:
    """Reach the host's engine, bring the image, verify there. Never raises for what happens on
    the host: every outcome, a bug included, is the HostResult."""
    started = time.monotonic()

    def emit(kind: str, message: str) -> None:
        if show is not None:
            show(Event(kind, message, data={"host": host.name}))

    def say(message: str) -> None:
        emit("phase", message)

    transfer: Transfer | None = None
    try:
        say(f"connecting to {host.url}")
        client = client_factory(host)
        say(f"engine answers: Docker {client.version().get('Version', 'unknown')}")
        transfer = bring_image(source, client, say)
        say(f"image: {transfer.method}, {transfer.detail}")
        gpus = HostGpuReader(client, source.image_id, f"gpus-{uuid.uuid4().hex[:8]}")
        say("preflight, probe and benchmark")
        report = runner.verify(
            replace(options, target=source.image_id),
            client_factory=lambda: client,
            readers=host_readers(client, host, gpus),
            show=lambda event: emit(event.kind, event.message),
        )
    except Exception as exc:  # noqa: BLE001 - one host's failure, a bug included, is its result only
        return _failure(host, exc, started, transfer)
    report.target = report.target.model_copy(update={"requested": source.requested, "image": source.ref})
    verdict = report.verdict
    assert verdict is not None  # verify() always ends with one
    result = HostResult(
        host=host.name, engine=host.url, status=verdict.status, exit_code=verdict.exit_code,
        summary=verdict.summary, transfer=transfer, gpu=gpu_name(report, gpus), driver=gpus.driver(),
        images_per_s=best_rates(report), seconds=round(time.monotonic() - started, 2), report=report,
    )
    say(f"{verdict.status}: {verdict.summary}")
    return result


# --------------------------------------------------------------------------- the fleet


def verify_fleet(
    options: runner.VerifyOptions,
    hosts: list[EngineHost],
    *,
    local_factory: Callable[[], Any] | None = None,
    client_factory: ClientFactory | None = None,
    show: Show | None = None,
) -> FleetReport:
    """Verify ``options.target`` on every host in parallel; one result per host, in the order given.

    Raises only before any host is touched: no hosts, --native, an image this machine's engine
    does not hold (exit 2), or no engine here (exit 3)."""
    if not hosts:
        raise UsageError("--host: give at least one engine")
    if options.native:
        raise UsageError("--native runs in this Python environment; it cannot be combined with --host")
    if not options.target:
        raise UsageError("NAME|IMAGE is required with --host")
    source = local_source(options.target, local_factory or get_client)
    connect = client_factory or host_client
    with ThreadPoolExecutor(max_workers=len(hosts), thread_name_prefix="envkit-host") as pool:
        futures = [
            pool.submit(verify_host, host, source, options, client_factory=connect, show=show)
            for host in hosts
        ]
        results = [future.result() for future in futures]
    return FleetReport(
        target=source.requested, image=source.ref, image_id=source.image_id,
        exit_code=worst_exit_code(r.exit_code for r in results), hosts=results,
    )


_ERRORS: dict[int, type[EnvkitError]] = {
    UsageError.exit_code: UsageError,
    EngineUnreachable.exit_code: EngineUnreachable,
    EngineRefused.exit_code: EngineRefused,
    IntegrityError.exit_code: IntegrityError,
    NetworkError.exit_code: NetworkError,
    GpuHostNotReady.exit_code: GpuHostNotReady,
    VerificationFailed.exit_code: VerificationFailed,
    Interrupted.exit_code: Interrupted,
}


def raise_for_fleet(report: FleetReport) -> None:
    """The CLI's last step: the worst host's code as an envkit error naming every failed host."""
    if report.exit_code == 0:
        return
    failed = report.failed
    worst = [h for h in failed if h.exit_code == report.exit_code]
    names = ", ".join(h.host for h in failed)
    message = (
        f"{len(failed)} of {len(report.hosts)} hosts failed ({names}); "
        f"worst: {worst[0].host}, {worst[0].summary}"
    )
    first = worst[0]
    hint = first.error.hint if first.error else None
    if hint is None and first.report is not None and first.report.verdict is not None:
        hint = first.report.verdict.fix
    error_class = _ERRORS.get(report.exit_code, EnvkitError)
    raise error_class(message, hint=hint)
