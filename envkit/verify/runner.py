"""``envkit verify``'s orchestration: preflight, then the probe and the benchmark in a container
(or, with --native, in this Python environment), then the comparison and the verdict.

``verify()`` never raises for an outcome of the verification itself: a host that is not ready, a
timeout, a slow GPU all end in ``report.verdict`` (exit code included) so the caller can write the
report before failing. It raises only for bad input (unknown image) and an unreachable engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from envkit import labels as label_keys
from envkit.engine.tarstream import tar_bytes
from envkit.errors import EngineUnreachable, EnvkitError, GpuHostNotReady, UsageError, VerificationFailed
from envkit.events import Event
from envkit.incontainer.probe import EVENT_PREFIX, PROBE_DIR, SCRIPT_FILES, archs
from envkit.verify import preflight as pf
from envkit.verify.report import (
    BenchResult,
    Check,
    ProbeResult,
    Target,
    Verdict,
    VerifyReport,
    compare,
    reference_for,
    with_peak_share,
)

LABEL_TORCH = label_keys.TORCH
LABEL_CUDA = label_keys.CUDA
LABEL_MIN_DRIVER = label_keys.MIN_DRIVER
LABEL_ARCH_LIST = label_keys.ARCH_LIST
LABEL_VERIFY_RUN = label_keys.VERIFY_RUN  # on every container verify creates, to find leftovers

# Copied in for every run rather than using the image's /opt/envkit/probe: the host parses the
# documents with its own models, so the scripts must be the host's version.
CONTAINER_PROBE_PARENT = "/tmp"
CONTAINER_PROBE_DIR = f"{CONTAINER_PROBE_PARENT}/envkit-probe"
# Run whichever Python the image puts first on PATH (the envkit images' venv), python or python3.
PYTHON_LAUNCHER = (
    'PY="$(command -v python || command -v python3)" || '
    '{ echo "envkit: no python or python3 on the image PATH" >&2; exit 127; }; exec "$PY" "$@"'
)
# Test hooks and knobs passed from the host into the benchmark.
PASS_THROUGH_ENV_PREFIXES = ("ENVKIT_BENCH_",)
DEFAULT_TIMEOUT_S = 1800.0
LOG_TAIL_CHARS = 4000

EventSink = Callable[[Event], None]  # each stderr line of a script, as a log event
ModelT = TypeVar("ModelT")


@dataclass(frozen=True)
class VerifyOptions:
    target: str | None
    gpus: int | None = None  # None: all GPUs
    cpu: bool = False
    workloads: tuple[str, ...] = ("resnet50", "yolo")
    native: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    compile: bool = False
    impl: str = "builtin"
    min_ratio: float = 0.7
    steps: int | None = None


@dataclass
class RunResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    events: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- executors


def _split_events(stderr_lines: Iterable[str]) -> list[dict[str, Any]]:
    events = []
    for line in stderr_lines:
        if line.startswith(EVENT_PREFIX):
            try:
                events.append(json.loads(line[len(EVENT_PREFIX) :]))
            except json.JSONDecodeError:
                continue
    return events


class ScriptExecutor:
    """Runs one probe script with its arguments, alone or under torchrun with ``nproc`` processes;
    each kind of executor says where the scripts are and how a command line is launched."""

    def script_path(self, script: str) -> str:
        raise NotImplementedError

    def launch(
        self, argv: list[str], *, timeout_s: float, distributed: bool, show: EventSink | None
    ) -> RunResult:
        """Run ``python ARGV`` (``argv`` holds what follows the interpreter)."""
        raise NotImplementedError

    def run(
        self,
        script: str,
        args: list[str],
        *,
        timeout_s: float,
        nproc: int = 1,
        show: EventSink | None = None,
    ) -> RunResult:
        argv = [self.script_path(script), *args]
        if nproc > 1:
            argv = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
        return self.launch(argv, timeout_s=timeout_s, distributed=nproc > 1, show=show)


class NativeExecutor(ScriptExecutor):
    """Runs the scripts from the installed package with the current interpreter."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def script_path(self, script: str) -> str:
        return str(PROBE_DIR / script)

    def launch(
        self, argv: list[str], *, timeout_s: float, distributed: bool, show: EventSink | None
    ) -> RunResult:
        argv = [self.python, *argv]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        # A session of its own so a timeout kills torchrun's workers too, not only the launcher.
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        out_chunks: list[str] = []
        err_lines: list[str] = []

        def read_out() -> None:
            assert proc.stdout is not None
            out_chunks.append(proc.stdout.read())

        def read_err() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                err_lines.append(line)
                if show:
                    show(Event("log", line.rstrip("\n")))

        readers = [
            threading.Thread(target=read_out, daemon=True),
            threading.Thread(target=read_err, daemon=True),
        ]
        for thread in readers:
            thread.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for thread in readers:
            thread.join(timeout=10)
        stderr = "".join(err_lines)
        return RunResult(
            "".join(out_chunks),
            stderr,
            None if timed_out else proc.returncode,
            timed_out,
            _split_events(stderr.splitlines()),
        )


def probe_archive() -> bytes:
    """The probe scripts as a tar for ``put_archive``: fixed owner and modes so a non-root image
    user can read them."""
    files = [(f"envkit-probe/{name}", (PROBE_DIR / name).read_bytes()) for name in SCRIPT_FILES]
    return tar_bytes([("envkit-probe", None), *files])


def map_start_error(text: str, *, min_driver: str | None = None, cuda: str | None = None) -> EnvkitError:
    """A container start failure, named by cause. The engine's own words stay in ``details``."""
    lowered = text.lower()
    if "could not select device driver" in lowered:
        return GpuHostNotReady(
            "NVIDIA container runtime not found: the engine could not select a device driver for the "
            "GPU request",
            hint=pf.NVIDIA_TOOLKIT_FIX,
            details=text,
        )
    if "unsatisfied condition: cuda>=" in lowered or "cuda driver version is insufficient" in lowered:
        need = f" >= {min_driver}" if min_driver else ""
        what = f"CUDA {cuda}" if cuda else "the image's CUDA"
        return GpuHostNotReady(
            f"the host's NVIDIA driver is too old for {what}",
            hint=f"upgrade the NVIDIA driver{need}, or use an image built for an older CUDA",
            details=text,
        )
    if "nvidia-container-cli" in lowered or "nvml" in lowered:
        return GpuHostNotReady(
            "the NVIDIA container runtime failed to set up the GPU",
            hint="check `nvidia-smi` on the host and the NVIDIA Container Toolkit's logs",
            details=text,
        )
    return VerificationFailed("the verification container did not start", details=text)


class ContainerExecutor(ScriptExecutor):
    """Runs the scripts in a fresh container of ``image`` and removes it afterwards, always."""

    def __init__(
        self,
        client: Any,
        image: str,
        *,
        gpus: int | None,
        cpu: bool,
        run_id: str,
        min_driver: str | None = None,
        cuda: str | None = None,
    ) -> None:
        self.client, self.image, self.gpus, self.cpu, self.run_id = client, image, gpus, cpu, run_id
        self.min_driver, self.cuda = min_driver, cuda

    def _device_requests(self) -> list[Any]:
        if self.cpu:
            return []
        from docker.types import DeviceRequest  # noqa: PLC0415

        return [DeviceRequest(count=-1 if self.gpus is None else self.gpus, capabilities=[["gpu"]])]

    def script_path(self, script: str) -> str:
        return f"{CONTAINER_PROBE_DIR}/{script}"

    def launch(
        self, argv: list[str], *, timeout_s: float, distributed: bool, show: EventSink | None
    ) -> RunResult:
        import docker.errors  # noqa: PLC0415
        import requests.exceptions  # noqa: PLC0415

        env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        env.update({k: v for k, v in os.environ.items() if k.startswith(PASS_THROUGH_ENV_PREFIXES)})
        if distributed:
            # The container has loopback only (network "none"): the processes of one run talk over it.
            env.update({"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"})
        try:
            container = self.client.containers.create(
                self.image,
                entrypoint=["/bin/sh", "-c", PYTHON_LAUNCHER, "envkit-verify"],
                command=argv,
                environment=env,
                device_requests=self._device_requests(),
                # NCCL and DataLoader workers need more than Docker's 64 MiB /dev/shm.
                shm_size="2g",
                network_mode="none",
                # With no network Docker writes no /etc/hosts entry for the container's own name, and
                # torchrun's rendezvous resolves it: a name that /etc/hosts always has keeps DDP working.
                hostname="localhost",
                labels={LABEL_VERIFY_RUN: self.run_id},
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise UsageError(
                f"image {self.image} is not on this engine", hint="build it first (`envkit build NAME`)"
            ) from exc
        except docker.errors.APIError as exc:
            raise map_start_error(str(exc), min_driver=self.min_driver, cuda=self.cuda) from exc
        follower: threading.Thread | None = None
        try:
            container.put_archive(CONTAINER_PROBE_PARENT, probe_archive())
            try:
                container.start()
            except docker.errors.APIError as exc:
                raise map_start_error(str(exc), min_driver=self.min_driver, cuda=self.cuda) from exc
            if show:
                follower = threading.Thread(target=self._follow, args=(container, show), daemon=True)
                follower.start()
            timed_out = False
            exit_code: int | None = None
            try:
                status = container.wait(timeout=timeout_s)
                exit_code = int(status.get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out = True
                try:
                    container.kill()
                except docker.errors.APIError:
                    pass
            stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
            stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
        finally:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            if follower:
                follower.join(timeout=5)
        return RunResult(stdout, stderr, exit_code, timed_out, _split_events(stderr.splitlines()))

    @staticmethod
    def _follow(container: Any, show: EventSink) -> None:
        pending = ""
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=False, stderr=True):
                pending += chunk.decode(errors="replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    show(Event("log", line))
        except Exception:  # noqa: BLE001 - progress only; the container going away ends the stream
            return


# --------------------------------------------------------------------------- target


def requirements_from_labels(labels: dict[str, str] | None) -> pf.ImageRequirements:
    labels = labels or {}
    return pf.ImageRequirements(
        cuda=labels.get(LABEL_CUDA) or None,
        min_driver=labels.get(LABEL_MIN_DRIVER) or None,
        arch_list=tuple(archs.parse_arch_list(labels.get(LABEL_ARCH_LIST, ""))),
    )


def resolve_image_ref(name: str) -> str:
    """A catalog name (``pytorch-cuda:2.8``) becomes its Docker tag; anything else is used as given."""
    try:
        from envkit.spec.catalog import image_ref_for  # noqa: PLC0415 - the catalog is optional here
    except ImportError:
        return name
    try:
        return image_ref_for(name)
    except (UsageError, FileNotFoundError):
        return name  # not in the catalog: a plain image reference such as debian:bookworm


def default_client() -> Any:
    try:
        from envkit.engine.client import get_client  # noqa: PLC0415
    except ImportError:
        import docker  # noqa: PLC0415

        try:
            client = docker.from_env()
            client.ping()
        except Exception as exc:  # noqa: BLE001
            raise EngineUnreachable(f"no Docker engine answers: {exc}") from exc
        return client
    return get_client()


# --------------------------------------------------------------------------- diagnosis


def _failed_checks(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "FAIL"]


def diagnose_probe(probe: ProbeResult, *, cpu: bool) -> Verdict | None:
    """Exit 7 for a host/image mismatch the probe reveals, exit 8 for broken numerics."""
    if probe.fatal:
        return Verdict(
            status="failed",
            exit_code=VerificationFailed.exit_code,
            summary=f"the probe could not run: {probe.fatal}",
            fix="the image needs a working torch on its PATH python",
        )
    if not cpu:
        if not probe.torch_cuda:
            return Verdict(
                status="host_not_ready",
                exit_code=GpuHostNotReady.exit_code,
                summary=f"torch {probe.torch} in the image is built without CUDA "
                "(torch.version.cuda is None)",
                fix="use an image with a CUDA build of torch, or verify with --cpu",
            )
        if not probe.cuda_available:
            error = probe.cuda_error or "torch.cuda.is_available() is False"
            lowered = error.lower()
            if "too old" in lowered or "insufficient" in lowered:
                summary = f"the host's NVIDIA driver is too old for CUDA {probe.torch_cuda}: {error}"
                fix = "upgrade the NVIDIA driver to the minimum for the image's CUDA"
            elif "no nvidia driver" in lowered or "found no nvidia driver" in lowered:
                summary = f"the container sees no NVIDIA driver: {error}"
                fix = pf.NVIDIA_TOOLKIT_FIX
            else:
                summary = (
                    f"CUDA is not usable in the container (torch {probe.torch}, "
                    f"CUDA {probe.torch_cuda}): {error}"
                )
                fix = "check `nvidia-smi` on the host (Xid errors in `dmesg` point at the GPU, not the image)"
            return Verdict(
                status="host_not_ready", exit_code=GpuHostNotReady.exit_code, summary=summary, fix=fix
            )
        missing = [d for d in probe.devices if not d.arch_supported]
        kernel_errors = [n for n in probe.numerics if n.error and "no kernel image" in n.error.lower()]
        if missing or kernel_errors:
            names = ", ".join(f"{d.name} ({d.capability})" for d in missing) or "the GPU"
            return Verdict(
                status="host_not_ready",
                exit_code=GpuHostNotReady.exit_code,
                summary=f"no kernel image for {names}: the image's torch is built for "
                f"{' '.join(probe.arch_list) or 'other architectures'}",
                reasons=[n.error for n in kernel_errors if n.error],
                fix="use an image whose torch build includes this GPU's architecture",
            )
    bad = [n for n in probe.numerics if not n.ok]
    if bad:
        reasons = [
            f"{n.op} {n.precision} on {n.device}: "
            + (n.error or f"relative error {n.rel_error} > {n.tolerance} (finite: {n.finite})")
            for n in bad
        ]
        return Verdict(
            status="failed",
            exit_code=VerificationFailed.exit_code,
            summary="numerics check failed",
            reasons=reasons,
        )
    return None


def diagnose_bench(bench: BenchResult, workloads: tuple[str, ...]) -> list[str]:
    problems = list(bench.errors)
    for work in bench.workloads:
        for rung in work.rungs:
            if rung.status == "error":
                problems.append(f"{work.name} {rung.name}: {rung.reason}")
        if not any(r.status == "ok" and (r.images_per_s or 0) > 0 for r in work.rungs):
            problems.append(f"{work.name}: no rung measured a throughput")
    seen = {w.name for w in bench.workloads}
    problems += [f"{name}: not run" for name in workloads if name not in seen]
    return problems


def rank_errors(events: list[dict[str, Any]]) -> list[str]:
    """The causes the ranks of a multi-process run reported before they exited."""
    return [
        f"rank {e.get('rank')} failed in {e.get('workload')} {e.get('rung')}: {e.get('reason')}"
        for e in events
        if e.get("event") == "rank_error"
    ]


def diagnose_ddp(
    run: RunResult, ddp: BenchResult | None, workloads: tuple[str, ...], parse_error: str | None = None
) -> list[str]:
    """The multi-process run, judged as the single-process one is (errors, failed rungs, missing
    throughput), plus its own section: every workload needs a DDP throughput."""
    prefix = "multi-process benchmark: "
    problems = rank_errors(run.events)
    if ddp is None:
        if not problems:
            problems.append(parse_error or f"no report (exit code {run.exit_code})")
        return [prefix + p for p in problems]
    problems += diagnose_bench(ddp, workloads)
    if ddp.distributed is None:
        problems.append("the report has no DDP section")
    else:
        for item in ddp.distributed.workloads:
            if not item.ddp_images_per_s:
                problems.append(f"{item.workload}: no DDP throughput measured")
    if not ddp.ok and not problems:
        problems.append("the benchmark reported a failure (ok: false)")
    return [prefix + p for p in problems]


# --------------------------------------------------------------------------- verify


def _tail(text: str) -> str:
    return text[-LOG_TAIL_CHARS:]


def _parse(model: type[Any], text: str) -> Any:
    """The last JSON document on stdout (torchrun and libraries may print before it)."""
    for line in reversed([line for line in text.splitlines() if line.strip()]):
        if line.lstrip().startswith("{"):
            try:
                return model.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError):
                continue
    try:
        return model.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(f"no valid {model.__name__} document in the output ({exc})") from exc


def dist_timeout_s(stage_timeout_s: float) -> float:
    """How long a rank may wait in one collective. A third of the stage's time: long enough for
    rank 0's single-process baseline (the other ranks wait for it, compile included), short enough
    that a stuck collective fails with a cause before the stage is killed without one."""
    return max(120.0, stage_timeout_s / 3)


def bench_args(options: VerifyOptions, *, ddp: bool = False) -> list[str]:
    args = ["--workload", ",".join(options.workloads), "--impl", options.impl]
    if options.cpu:
        args.append("--cpu")
    if options.compile:
        args.append("--compile")
    if options.steps:
        args += ["--steps", str(options.steps)]
    if ddp:
        args += ["--dist-timeout", f"{dist_timeout_s(options.timeout_s):g}"]
    return args


@dataclass
class _Setup:
    """What a verification needs before it starts: the report so far and how to reach the target."""

    report: VerifyReport
    requirements: pf.ImageRequirements
    readers: pf.HostReaders
    executor: Any
    image_error: EnvkitError | None = None


def _native_setup(
    options: VerifyOptions, opts: dict[str, Any], client_factory: Callable[[], Any],
    readers: pf.HostReaders | None, executor: Any | None,
) -> _Setup:
    report = VerifyReport(
        mode="native",
        options=opts,
        target=Target(requested=options.target or "current environment", source="native"),
    )
    return _Setup(
        report,
        pf.ImageRequirements(),
        readers or pf.docker_readers(client_factory),
        executor or NativeExecutor(),
    )


def _container_setup(
    options: VerifyOptions, opts: dict[str, Any], client_factory: Callable[[], Any],
    readers: pf.HostReaders | None, executor: Any | None,
) -> _Setup:
    if not options.target:
        raise UsageError("NAME|IMAGE is required unless --native is given")
    client = client_factory()
    image_ref = resolve_image_ref(options.target)
    image_error = None
    labels: dict[str, str] = {}
    image_id = None
    import docker.errors  # noqa: PLC0415 - only the container path needs the SDK

    try:
        image = client.images.get(image_ref)
        labels = dict(image.labels or {})
        image_id = image.id
    except docker.errors.ImageNotFound:
        # Reported after the preflight: a host that cannot run any GPU image is the bigger news.
        image_error = UsageError(
            f"image {image_ref} is not on this engine",
            hint=f"build it first (`envkit build {options.target}`)",
        )
    requirements = requirements_from_labels(labels)
    report = VerifyReport(
        mode="container",
        options=opts,
        target=Target(
            requested=options.target,
            image=image_ref,
            image_id=image_id,
            torch=labels.get(LABEL_TORCH),
            cuda=requirements.cuda,
            min_driver=requirements.min_driver,
            arch_list=list(requirements.arch_list),
            source="labels" if labels else "none",
        ),
    )
    executor = executor or ContainerExecutor(
        client,
        image_ref,
        gpus=options.gpus,
        cpu=options.cpu,
        run_id=opts["run_id"],
        min_driver=requirements.min_driver,
        cuda=requirements.cuda,
    )
    return _Setup(report, requirements, readers or pf.docker_readers(lambda: client), executor, image_error)


def _preflight_failed(setup: _Setup, options: VerifyOptions) -> bool:
    """Run the host checks; a failed one sets the verdict (exit 7) and ends the verification."""
    report = setup.report
    report.preflight = pf.run_preflight(
        setup.requirements, setup.readers, gpus_wanted=options.gpus, cpu=options.cpu, native=options.native
    )
    failed = _failed_checks(report.preflight)
    if not failed:
        return False
    report.verdict = Verdict(
        status="host_not_ready",
        exit_code=GpuHostNotReady.exit_code,
        summary=f"{failed[0].name}: {failed[0].reason}",
        reasons=[f"{c.name}: {c.reason}" for c in failed[1:]],
        fix=failed[0].fix,
    )
    return True


def _error_verdict(exc: GpuHostNotReady | VerificationFailed) -> Verdict:
    return Verdict(
        status="host_not_ready" if isinstance(exc, GpuHostNotReady) else "failed",
        exit_code=exc.exit_code,
        summary=exc.message,
        reasons=[exc.details] if exc.details else [],
        fix=exc.hint,
    )


@dataclass
class _Stages:
    """Runs the scripts one after another; each failure becomes the report's verdict."""

    report: VerifyReport
    options: VerifyOptions
    executor: Any
    show: EventSink | None

    def run(self, script: str, args: list[str], nproc: int = 1) -> RunResult | None:
        try:
            return self.executor.run(
                script, args, timeout_s=self.options.timeout_s, nproc=nproc, show=self.show
            )
        except (GpuHostNotReady, VerificationFailed) as exc:
            self.report.verdict = _error_verdict(exc)
        return None

    def parsed(self, what: str, model: type[ModelT], result: RunResult) -> ModelT | None:
        """The script's report, or None with the verdict set (it timed out or printed none)."""
        if result.timed_out:
            self.timed_out(what, result)
            return None
        try:
            return _parse(model, result.stdout)
        except ValueError as exc:
            self.no_report(what, result, exc)
            return None

    def no_report(self, what: str, result: RunResult, exc: ValueError) -> None:
        self.report.log_tail = _tail(result.stderr)
        self.report.verdict = Verdict(
            status="failed",
            exit_code=VerificationFailed.exit_code,
            summary=f"the {what} printed no report (exit code {result.exit_code})",
            reasons=[str(exc)],
            fix="see log_tail in the JSON report",
        )

    def timed_out(self, what: str, result: RunResult) -> None:
        report = self.report
        report.timed_out = True
        report.log_tail = _tail(result.stderr)
        where = "its container removed" if report.mode == "container" else "its processes killed"
        report.verdict = Verdict(
            status="failed",
            exit_code=VerificationFailed.exit_code,
            summary=f"the {what} did not finish within {self.options.timeout_s:g} s: killed, {where}",
            fix="raise --timeout, or look at the last output in the report (log_tail)",
        )


def _run_probe(stages: _Stages) -> bool:
    """The probe; False when the verification ends here (the verdict says why)."""
    report, options = stages.report, stages.options
    probe_run = stages.run("probe.py", ["--cpu"] if options.cpu else [])
    if probe_run is None:
        return False
    report.probe = stages.parsed("probe", ProbeResult, probe_run)
    if report.probe is None:
        return False
    verdict = diagnose_probe(report.probe, cpu=options.cpu)
    if verdict is not None:
        report.verdict = verdict
        return False
    return True


def _run_bench(stages: _Stages) -> list[str] | None:
    """The benchmark ladder in one process: its problems, or None when the verification ends here."""
    report, options = stages.report, stages.options
    bench_run = stages.run("bench.py", bench_args(options))
    if bench_run is None:
        return None
    report.bench_partial = bench_run.events
    bench = stages.parsed("benchmark", BenchResult, bench_run)
    if bench is None:
        return None
    reference = reference_for(bench.device.name) if bench.device.type == "cuda" else None
    report.bench = with_peak_share(bench, reference)
    return diagnose_bench(report.bench, options.workloads)


def _ddp_processes(options: VerifyOptions, probe: ProbeResult) -> int:
    nproc = options.gpus if options.gpus and options.gpus > 1 else 0
    if options.gpus is None and not options.cpu and probe.device_count > 1:
        nproc = probe.device_count
    return nproc


def _run_ddp(stages: _Stages, nproc: int) -> list[str] | None:
    """The benchmark under DDP over ``nproc`` processes: its problems, or None when the
    verification ends here."""
    report, options = stages.report, stages.options
    ddp_run = stages.run("bench.py", bench_args(options, ddp=True), nproc=nproc)
    if ddp_run is None:
        return None
    if ddp_run.timed_out:
        stages.timed_out("multi-process benchmark", ddp_run)
        # What the ranks said before they hung is the cause: keep it.
        if report.verdict is not None:
            report.verdict = report.verdict.model_copy(update={"reasons": rank_errors(ddp_run.events)})
        return None
    parse_error = None
    try:
        report.bench_ddp = _parse(BenchResult, ddp_run.stdout)
    except ValueError as exc:
        report.log_tail = _tail(ddp_run.stderr)
        parse_error = str(exc)
    if report.bench_ddp is None or not report.bench_ddp.ok:
        report.log_tail = _tail(ddp_run.stderr)
    return diagnose_ddp(ddp_run, report.bench_ddp, options.workloads, parse_error)


def _final_verdict(report: VerifyReport, options: VerifyOptions, problems: list[str]) -> Verdict:
    """Pass, or failed with every problem found and every comparison below the reference."""
    assert report.bench is not None
    report.comparisons = compare(report.bench, min_ratio=options.min_ratio)
    problems = problems + [
        f"{c.workload}: {c.measured_images_per_s or 0:.0f} images/s is below {c.min_ratio:.0%} of "
        f"{c.reference_images_per_s:.0f} ({c.gpu_model}, {c.source})"
        for c in report.comparisons
        if c.status == "FAIL"
    ]
    if problems:
        return Verdict(
            status="failed",
            exit_code=VerificationFailed.exit_code,
            summary="the benchmark found problems",
            reasons=problems,
        )
    rates = ", ".join(
        f"{w.name} {max((r.images_per_s or 0) for r in w.rungs):.1f} images/s" for w in report.bench.workloads
    )
    return Verdict(
        status="pass",
        exit_code=0,
        summary=f"probe and benchmark passed on {report.bench.device.name}: {rates}",
    )


def verify(
    options: VerifyOptions,
    *,
    client_factory: Callable[[], Any] = default_client,
    readers: pf.HostReaders | None = None,
    executor: Any | None = None,
    show: EventSink | None = None,
) -> VerifyReport:
    opts = asdict(options) | {"run_id": uuid.uuid4().hex[:12]}
    setup_for = _native_setup if options.native else _container_setup
    setup = setup_for(options, opts, client_factory, readers, executor)
    report = setup.report
    if _preflight_failed(setup, options):
        return report
    if setup.image_error is not None:
        raise setup.image_error
    stages = _Stages(report, options, setup.executor, show)
    if not _run_probe(stages):
        return report
    problems = _run_bench(stages)
    if problems is None:
        return report
    assert report.probe is not None
    nproc = _ddp_processes(options, report.probe)
    if nproc > 1:
        ddp_problems = _run_ddp(stages, nproc)
        if ddp_problems is None:
            return report
        problems += ddp_problems
    report.verdict = _final_verdict(report, options, problems)
    return report


def raise_for_verdict(report: VerifyReport) -> None:
    """The CLI's last step: a failed verdict becomes the matching envkit error (exit 7 or 8)."""
    verdict = report.verdict
    if verdict is None or verdict.exit_code == 0:
        return
    details = "\n".join(verdict.reasons) or None
    if verdict.exit_code == GpuHostNotReady.exit_code:
        raise GpuHostNotReady(verdict.summary, hint=verdict.fix, details=details)
    raise VerificationFailed(verdict.summary, hint=verdict.fix, details=details)
