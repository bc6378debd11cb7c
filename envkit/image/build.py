"""Spec -> plan -> build context -> image on a real Docker engine (classic builder).

``plan_build`` gathers every input (spec, resolved versions, lock, base, CA bundle) into one value.
``build_image`` yields events as the engine reports them; the caller decides how to show them.
The target tag moves only after the build (and seal) succeeded.
"""

from __future__ import annotations

import hashlib
import queue
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import requests.exceptions

from envkit.engine.client import image_exists, tag_image
from envkit.errors import (
    BuildFailed,
    CompatError,
    EngineUnreachable,
    IntegrityError,
    Interrupted,
    NetworkError,
)
from envkit.events import Event, follow
from envkit.image.base import BasePlan, ensure_base
from envkit.image.context import BuildContext, detect_ca_bundle, proxy_build_args
from envkit.image.render import RenderInput, render_dockerfile
from envkit.image.wheelcache import CachedWheels, ensure_wheels, is_large
from envkit.lock.python import parse_locked
from envkit.resources import PACKAGE_DIR, probe_dir, templates_dir
from envkit.spec import compat
from envkit.spec.catalog import SpecRef, load

TOOLS_LOCK = PACKAGE_DIR / "data" / "tools.txt"
VENV = "/opt/venv"
LOG_TAIL = 25

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_RUNNING_RE = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})")
_BUILT_RE = re.compile(r"^Successfully built ([0-9a-f]{12,64})")
_DOWNLOAD_RE = re.compile(
    r"(Downloading|Downloaded|Get:\d+|Fetched|Installed \d+ packages|Prepared \d+ packages)"
)
_HASH_PKG_RE = re.compile(r"Hash mismatch for `([^`]+)`")
_HASH_EXPECTED_RE = re.compile(r"Expected:\s*((?:\s*sha256:[0-9a-f]{64})+)")
_HASH_COMPUTED_RE = re.compile(r"Computed:\s*(sha256:[0-9a-f]{64})")
_NETWORK_PATTERNS = (
    "Temporary failure resolving",
    "Could not resolve host",
    "dns error",
    "Failed to fetch",
    "Connection refused",
    "Network is unreachable",
    "error sending request",
    "CERTIFICATE_VERIFY_FAILED",
    "invalid peer certificate",
)


# The old name of envkit.events.Event, kept for modules that still import it from here.
BuildEvent = Event


@dataclass
class BuildPlan:
    ref: SpecRef
    resolved: compat.Resolved
    base_plan: BasePlan | None
    base_ref: str
    render_input: RenderInput
    dockerfile: str
    requirements: str | None = None
    lock_digest: str | None = None
    lock_source: str = "none"  # "file", "resolved now", "none" (render only)
    ca_bundle: Path | None = None
    # Where the host fetches wheels the cache lacks (pip's index arguments: a mirror, the PyTorch
    # index, or an offline restore's local server). Never in the Dockerfile, a label or a layer.
    index_args: list[str] = field(default_factory=list)

    @property
    def spec(self) -> Any:
        return self.ref.spec

    @property
    def tag(self) -> str:
        return self.ref.spec.image_tag


def resolve_spec(ref: SpecRef) -> compat.Resolved:
    spec = ref.spec
    if spec.base.bootstrap is not None:
        compat.check_suite_python(spec.base.bootstrap.suite, spec.python, source=ref.display)
    resolved = compat.resolve(spec.torch.version, spec.torch.cuda, spec.python, source=ref.display)
    if spec.torchvision and resolved.torchvision and spec.torchvision != resolved.torchvision:
        raise CompatError(
            f"{ref.display}: torchvision: {spec.torchvision} is not paired with torch {resolved.torch} "
            f"(use {resolved.torchvision})"
        )
    return resolved


def top_level_requirements(ref: SpecRef, resolved: compat.Resolved) -> list[str]:
    spec = ref.spec
    reqs = [f"torch=={resolved.torch}"]
    if spec.torchvision:
        reqs.append(f"torchvision=={spec.torchvision}")
    reqs.extend(spec.pip)
    return reqs


def _base_for(ref: SpecRef) -> tuple[BasePlan | None, str]:
    spec = ref.spec
    if spec.base.bootstrap is not None:
        plan = BasePlan(bootstrap=spec.base.bootstrap, source_date_epoch=spec.source_date_epoch,
                        platform=spec.platform)
        return plan, plan.tag
    assert spec.base.image is not None
    return None, spec.base.image


def plan_build(
    name: str,
    *,
    ca_bundle: str | None = None,
    with_requirements: bool = True,
    environ: dict[str, str] | None = None,
    use_lock: bool = True,
    offline_index: str | None = None,
    source: str | None = None,
    index_url: str | None = None,
) -> BuildPlan:
    """Everything a build needs, decided up front; raises before any engine work starts.

    ``offline_index`` points the host's wheel download at a local package index (an offline
    restore); it changes where the wheels come from, never what the image holds. ``source`` names the
    spec in the Dockerfile's header instead of its path (a restore names the catalog file the
    manifest came from, so its build inputs equal the original build's).
    """
    ref = load(name)
    lock = read_fresh_lock(ref) if use_lock else None
    return plan_for_spec(
        ref, lock, ca_bundle=ca_bundle, with_requirements=with_requirements, environ=environ,
        offline_index=offline_index, source=source, index_url=index_url,
    )


def plan_for_spec(
    ref: SpecRef,
    lock: Any,
    *,
    ca_bundle: str | None = None,
    with_requirements: bool = True,
    environ: dict[str, str] | None = None,
    offline_index: str | None = None,
    source: str | None = None,
    index_url: str | None = None,
) -> BuildPlan:
    """``plan_build`` for a spec and lock already in memory (a manifest's); nothing is read from
    ``ref.path``. A lock made for another spec is refused, as a stale lock file is."""
    if lock is not None:
        check_lock_fresh(ref, lock)
    resolved = resolve_spec(ref)
    base_plan, base_ref = _base_for(ref)
    bundle = detect_ca_bundle(ca_bundle, environ)
    if offline_index is None:
        from envkit.lock import mirror

        index_args = mirror.choose(
            cli_url=index_url, spec_url=ref.spec.index_url, spec_extra=ref.spec.extra_index_url,
            torch_index=resolved.index_url, environ=environ,
        ).pip_args()
    else:
        index_args = ["--index-url", offline_index, "--trusted-host", urlsplit(offline_index).hostname or ""]
    if bundle is not None:
        index_args += ["--cert", str(bundle)]

    requirements, lock_digest, lock_source = None, None, "none"
    if lock is not None:
        from envkit.lock import python as locks

        requirements, lock_digest, lock_source = lock.python_requirements, locks.lock_digest(lock), "file"
    elif with_requirements:
        requirements, lock_source = resolve_requirements(ref, resolved), "resolved now"
    render_input = RenderInput(
        spec=ref.spec,
        source=source or ref.display,
        base_ref=base_ref,
        torch=resolved.torch,
        torchvision=ref.spec.torchvision,
        cuda=resolved.cuda,
        cudnn=resolved.cudnn,
        nccl=resolved.nccl,
        arch_list=resolved.arch_list,
        min_driver=resolved.min_driver,
        lock_digest=lock_digest,
        system_pins=dict(lock.apt) if lock else {},
        builder_pins=dict(lock.builder_apt) if lock else {},
        python_names=_python_names(requirements),
    )
    return BuildPlan(
        ref=ref,
        resolved=resolved,
        base_plan=base_plan,
        base_ref=base_ref,
        render_input=render_input,
        dockerfile=render_dockerfile(render_input),
        requirements=requirements,
        lock_digest=lock_digest,
        lock_source=lock_source,
        ca_bundle=bundle,
        index_args=index_args,
    )


def _python_names(requirements: str | None) -> tuple[str, ...]:
    if not requirements:
        return ()
    from envkit.lock.python import parse_locked

    return tuple(sorted(parse_locked(requirements)))


def read_fresh_lock(ref: SpecRef) -> Any:
    """The lock beside the spec, or None; a lock that no longer matches its spec is an error."""
    from envkit.lock import python as locks  # imported here: rendering alone needs no resolver

    if not ref.lock_path.is_file():
        return None
    return check_lock_fresh(ref, locks.read_lock(ref.lock_path))


def check_lock_fresh(ref: SpecRef, lock: Any) -> Any:
    """``lock``, unless it no longer matches the spec (a CompatError naming the lock file)."""
    from envkit.lock import python as locks

    if locks.is_stale(lock, ref.spec.digest()):
        raise CompatError(
            f"{ref.lock_path.name} is stale against {ref.display}",
            hint=f"run `envkit lock {ref.spec.ref}` and commit the new lock",
        )
    return lock


def resolve_requirements(ref: SpecRef, resolved: compat.Resolved) -> str:
    """Resolve the hashed Python set now, with uv (needs the network)."""
    from envkit.lock import python as locks

    return locks.lock_requirements(
        top_level_requirements(ref, resolved), python=ref.spec.python, index_url=resolved.index_url
    )


def ensure_requirements(plan: BuildPlan) -> BuildPlan:
    """Fill in the requirements of a plan made without them (resolving needs the network)."""
    if plan.requirements is None:
        plan.requirements = resolve_requirements(plan.ref, plan.resolved)
        plan.lock_source = "resolved now"
    return plan


def make_context(plan: BuildPlan) -> BuildContext:
    if plan.requirements is None:
        raise ValueError("a build context needs the locked requirements")
    context = BuildContext()
    context.add("Dockerfile", plan.dockerfile.encode())
    # Not used by the engine build: here so that the inputs digest changes with the lock.
    context.add("build/requirements.txt", plan.requirements.encode())
    context.add_tree("probe", probe_dir())
    files = templates_dir() / "files"
    if files.is_dir():
        context.add_tree("files", files)
    return context


@dataclass
class BuildResult:
    image_id: str
    tag: str
    size: int
    durations: dict[str, float]
    spec_digest: str
    lock_source: str
    base_ref: str
    cached_steps: int = 0
    unsealed_id: str = ""
    sealed: bool = False
    reused: bool = False
    wheels_downloaded: int = 0
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "tag": self.tag,
            "size": self.size,
            "durations": {key: round(value, 2) for key, value in self.durations.items()},
            "spec_digest": self.spec_digest,
            "lock": self.lock_source,
            "base": self.base_ref,
            "cached_steps": self.cached_steps,
            "unsealed_id": self.unsealed_id,
            "sealed": self.sealed,
            "reused": self.reused,
            "wheels_downloaded": self.wheels_downloaded,
            "layers": self.layers,
        }


def _classify_failure(error: str, log: list[str], step_line: str) -> Exception:
    text = "\n".join(log)
    pkg = _HASH_PKG_RE.search(text)
    if pkg:
        expected = _HASH_EXPECTED_RE.search(text)
        computed = _HASH_COMPUTED_RE.search(text)
        expected_text = " ".join(expected.group(1).split()) if expected else "unknown"
        computed_text = computed.group(1) if computed else "unknown"
        return IntegrityError(
            f"hash mismatch for {pkg.group(1)}: expected {expected_text}, computed {computed_text}",
            hint="the wheel on the index is not the one the lock pinned; check the lock and the index",
            details=text,
        )
    if any(pattern in text or pattern in error for pattern in _NETWORK_PATTERNS):
        return NetworkError(
            f"the build could not reach the network at {step_line or 'an unknown step'}",
            hint="check the mirror/PyPI reachability, proxy variables and --ca-bundle",
            details=text,
        )
    return BuildFailed(f"{step_line or 'build'}: {error.strip()}", details=text)


def _remove_containers(client: docker.DockerClient, ids: list[str]) -> None:
    for container_id in ids:
        try:
            client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError:
            continue


def _stream_build(
    client: docker.DockerClient,
    plan: BuildPlan,
    *,
    nocache: bool,
    network_mode: str | None = None,
    buildargs: dict[str, str] | None = None,
) -> Iterator[Event]:
    """Run the classic build of ``plan`` and yield events; the last one carries the image ID."""
    context = make_context(plan)
    yield from stream_context_build(
        client, context.to_tar(plan.spec.source_date_epoch), platform=plan.spec.platform, nocache=nocache,
        network_mode=network_mode,
        buildargs=proxy_build_args() if buildargs is None else buildargs,
    )


def stream_context_build(
    client: docker.DockerClient,
    fileobj: bytes,
    *,
    platform: str,
    nocache: bool,
    network_mode: str | None = None,
    buildargs: dict[str, str] | None = None,
) -> Iterator[Event]:
    """Build a context tar on the classic builder and yield events; the last carries the image ID.

    Steps, logs and downloads become events; a failure is classified (hash mismatch, network,
    engine refusal) and the build's containers are removed; Ctrl-C cancels the build.
    """
    started_containers: list[str] = []
    log: deque[str] = deque(maxlen=LOG_TAIL)
    step_line = ""
    image_id: str | None = None
    cached = 0
    pending = ""  # the engine splits lines across chunks; join them before parsing
    stream = client.api.build(
        fileobj=fileobj,
        custom_context=True,
        encoding=None,
        rm=True,
        forcerm=True,
        nocache=nocache,
        pull=False,
        decode=True,
        buildargs=buildargs or {},
        network_mode=network_mode,
        platform=platform,
    )
    try:
        for chunk in stream:
            if "error" in chunk:
                raise _classify_failure(str(chunk["error"]), list(log), step_line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = str(aux["ID"])
            text = chunk.get("stream")
            if not isinstance(text, str):
                continue
            pending += _ANSI_RE.sub("", text).replace("\r", "\n")
            *lines, pending = pending.split("\n")
            for line in lines:
                if not line.strip():
                    continue
                log.append(line)
                step = _STEP_RE.match(line)
                if step:
                    step_line = line
                    yield Event("step", step.group(3), int(step.group(1)), int(step.group(2)))
                    continue
                running = _RUNNING_RE.match(line)
                if running:
                    started_containers.append(running.group(1))
                    continue
                if line.strip() == "---> Using cache":
                    cached += 1
                    continue
                built = _BUILT_RE.match(line)
                if built and image_id is None:
                    image_id = built.group(1)
                kind = "download" if _DOWNLOAD_RE.search(line) else "log"
                yield Event(kind, line.rstrip())
    except KeyboardInterrupt:
        # Closing the response cancels the build on the engine side.
        _close(stream)
        _remove_containers(client, started_containers)
        raise Interrupted("build interrupted; the tag was not moved") from None
    except (requests.exceptions.ConnectionError, docker.errors.APIError) as exc:
        _remove_containers(client, started_containers)
        if isinstance(exc, docker.errors.APIError):
            raise BuildFailed(f"the engine refused the build: {exc.explanation or exc}") from exc
        raise EngineUnreachable(f"lost the Docker engine during the build: {exc}") from exc
    except (BuildFailed, IntegrityError, NetworkError):
        _remove_containers(client, started_containers)
        raise
    if image_id is None:
        raise BuildFailed("the engine finished without reporting an image", details="\n".join(log))
    yield Event("done", "built", data={"image_id": image_id, "cached_steps": cached})


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if callable(close):
        close()


def build_image(
    client: docker.DockerClient,
    plan: BuildPlan,
    *,
    tag: str | None = None,
    nocache: bool = False,
    network_mode: str | None = None,
    buildargs: dict[str, str] | None = None,
) -> Iterator[Event]:
    """Build ``plan``, seal it, and move ``tag`` (default: the spec's tag) to it; yields events.

    ``network_mode`` and ``buildargs`` replace the engine's default network and the proxy
    variables taken from the environment (an offline build passes its own).

    The final event is ``done`` with ``data["result"]`` a BuildResult.
    """
    target = tag or plan.tag
    durations: dict[str, float] = {}
    started = time.monotonic()
    if plan.base_plan is not None:
        yield Event("phase", f"base {plan.base_ref}")
        t0 = time.monotonic()
        ensure_base(client, plan.base_plan)
        durations["base"] = time.monotonic() - t0
    else:
        if not image_exists(client, plan.base_ref):
            raise NetworkError(
                f"base image {plan.base_ref} is not present and no registry pull is attempted",
                hint="docker load the base image, or use a bootstrap base",
            )
    inputs = build_input_digest(client, plan)
    if not nocache:
        from envkit.image import sealcache

        known = sealcache.lookup(client, inputs)
        if known:
            yield Event("phase", f"inputs unchanged since {known[7:19]} was built: reusing it")
            tag_image(client, known, target)
            durations["total"] = time.monotonic() - started
            image = client.images.get(known)
            result = BuildResult(
                image_id=image.id, tag=target, size=int(image.attrs.get("Size", 0)), durations=durations,
                spec_digest=plan.spec.digest(), lock_source=plan.lock_source, base_ref=plan.base_ref,
                reused=True, sealed=True,
            )
            yield Event("done", f"reused {target}", data={"result": result})
            return
    if plan.requirements is None:
        raise ValueError("a build needs the locked requirements")
    from envkit.image.compose import SystemMemo, SystemNotHeld, forget

    systems = SystemMemo()
    key = system_key(client, plan)
    remembered = None if nocache else systems.get(key)
    # The host fetches the wheels and loads the CUDA and torch layers while the engine builds the
    # system part (unless an earlier build made the same one); then the two are composed into the
    # image (envkit.image.compose).
    workdir = Path(tempfile.mkdtemp(prefix="envkit-build-"))
    system_id = ""
    cached = 0
    made: list[str] = []  # helper images a failure leaves behind
    try:
        python = _Background(_python_side(client, plan, workdir, fresh=nocache, made=made),
                             "envkit-python-layers")
        sealing = None
        if remembered is None:
            yield Event("phase", f"build the system part of {target}; the Python layers are written "
                        "meanwhile")
            t0 = time.monotonic()
            system_id, cached = yield from _system_build(client, plan, python, nocache=nocache,
                                                         network_mode=network_mode, buildargs=buildargs)
            durations["build"] = time.monotonic() - t0
            # Sealed while the Python layers are still being written.
            sealing = _Background(_seal_side(client, plan, system_id, workdir), "envkit-seal")
        else:
            yield Event("phase", f"system part unchanged since an earlier build ({len(remembered.layers)} "
                        "sealed layers remembered): the engine builds nothing")
            durations["build"] = 0.0
        t0 = time.monotonic()
        wheels, plans, preloaded = yield from python.finish()
        durations["python_wait"] = time.monotonic() - t0
        t0 = time.monotonic()
        system = remembered if sealing is None else (yield from sealing.finish())
        yield Event("phase", "compose: the sealed system layers with the Python layers")
        try:
            composed = yield from _Background(
                _compose_side(client, plan, system, wheels, plans), "envkit-compose").finish()
        except SystemNotHeld as exc:
            yield Event("phase", f"the engine no longer holds the remembered system layers ({exc}): "
                        "building the system part")
            system_id, cached = yield from _system_build(client, plan, None, nocache=nocache,
                                                         network_mode=network_mode, buildargs=buildargs)
            sealed = _Background(_seal_side(client, plan, system_id, workdir), "envkit-seal")
            system = yield from sealed.finish()
            composed = yield from _Background(
                _compose_side(client, plan, system, wheels, plans), "envkit-compose").finish()
        durations["compose"] = time.monotonic() - t0
        if system_id:
            systems.put(key, system)
    except BaseException:
        forget(client, [*made, *([system_id] if system_id else [])], keep="")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # The engine's build of the system part and the helper images are not kept: the image holds
    # the sealed layers, and the memo above stands in for the engine's build cache.
    forget(client, [*preloaded, *([system_id] if system_id else [])], keep=composed.image_id)
    sent = sum(1 for layer in composed.layers if layer["sent"])
    yield Event("phase", f"composed {composed.image_id[7:19]}: {sent} of {len(composed.layers)} layers sent "
                f"({composed.sent_bytes / 1e9:.2f} GB)")
    final_id = composed.image_id
    image = client.images.get(final_id)
    tag_image(client, image.id, target)
    from envkit.image import sealcache

    sealcache.remember(client, inputs, image.id)
    durations["total"] = time.monotonic() - started
    result = BuildResult(
        image_id=image.id,
        tag=target,
        size=int(image.attrs.get("Size", 0)),
        durations=durations,
        spec_digest=plan.spec.digest(),
        lock_source=plan.lock_source,
        base_ref=plan.base_ref,
        cached_steps=cached,
        unsealed_id=system_id,
        sealed=True,
        wheels_downloaded=wheels.downloaded,
        layers=composed.layers,
    )
    yield Event("done", f"built {target}", data={"result": result})


class _Background:
    """``work(put)`` run in a thread; the events it puts are picked up between the caller's own."""

    def __init__(self, work: Callable[[Callable[[Event], None]], Any], name: str) -> None:
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[Callable[[Event], None]], Any]) -> None:
        try:
            self._outcome["result"] = work(self._events.put)
        except BaseException as exc:  # handed to the caller's thread in finish()
            self._outcome["error"] = exc
        finally:
            self._events.put(None)

    def pending(self) -> Iterator[Event]:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event is None:
                self._events.put(None)  # finish() still needs to see the end
                return
            yield event

    def finish(self) -> Generator[Event, None, Any]:
        try:
            while (event := self._events.get()) is not None:
                yield event
        except KeyboardInterrupt:
            raise Interrupted("build interrupted; the tag was not moved") from None
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]


def _system_build(
    client: docker.DockerClient, plan: BuildPlan, python: _Background | None, *, nocache: bool,
    network_mode: str | None, buildargs: dict[str, str] | None,
) -> Generator[Event, None, tuple[str, int]]:
    """The engine's build of the system part, with the Python side's events in between; its image
    ID and how many steps came from the engine's cache."""
    system_id, cached = "", 0
    for event in _stream_build(client, plan, nocache=nocache, network_mode=network_mode, buildargs=buildargs):
        if event.kind == "done":
            system_id = client.images.get(event.data["image_id"]).id
            cached = event.data["cached_steps"]
        else:
            yield event
        if python is not None:
            yield from python.pending()
    return system_id, cached


def system_key(client: docker.DockerClient, plan: BuildPlan) -> str:
    """A digest of what the sealed system part is made of: the base by its local image ID, the
    platform, the Dockerfile's instructions without the labels, and its files. Not the Python lock
    nor the image's name: those reach only the labels, which are set when the image is composed."""
    from envkit.image.render import system_recipe
    from envkit.image.seal_policy import POLICY_VERSION

    context = make_context(plan)
    files = BuildContext({name: data for name, data in context.files.items()
                          if name not in ("Dockerfile", "build/requirements.txt")})
    base_id = client.images.get(plan.base_ref).id
    text = "\n".join([
        "envkit-system/1", f"seal-policy/{POLICY_VERSION}", base_id, plan.spec.platform,
        f"epoch/{plan.spec.source_date_epoch}", files.digest(), system_recipe(plan.render_input),
    ])
    return hashlib.sha256(text.encode()).hexdigest()


def _suite(plan: BuildPlan) -> str:
    bootstrap = plan.spec.base.bootstrap
    return bootstrap.suite if bootstrap is not None else "bookworm"


def _python_side(
    client: docker.DockerClient, plan: BuildPlan, workdir: Path, *, fresh: bool, made: list[str]
) -> Callable[..., Any]:
    """The host's half of a build, all while the engine builds the system part: fetch the wheels
    into the cache and load the layers below the system part (envkit.image.compose): torch's wheel
    first, which says which NVIDIA wheels make the CUDA layer; those next, whose layer is imported
    as soon as they are in; then triton and torchvision, whose layer streams with the sealed base
    into `docker load` while the rest of the wheels download. A helper image left by a failure is
    added to `made`, for the caller to remove."""
    from envkit.image.compose import preload, seal_base, start_import
    from envkit.image.pylayers import CUDA, REST, TORCH, group_wheels, plan_layer, torch_cuda_names
    from envkit.incontainer.wheelinstall import Scheme

    spec = plan.spec

    def work(put: Callable[[Event], None]) -> tuple[CachedWheels, list[Any], list[str]]:
        assert plan.requirements is not None
        requirements = plan.requirements
        epoch = spec.source_date_epoch

        def fetch(names: set[str], label: str) -> CachedWheels:
            return follow(ensure_wheels(requirements, python=spec.python, platform=spec.platform,
                                        suite=_suite(plan), index_args=plan.index_args, only=names,
                                        label=label), put)

        scheme = Scheme(prefix=VENV, python=f"{VENV}/bin/python", version=spec.python)

        def layer(group: str, wheels: CachedWheels) -> Any:
            """The plan of `group` from the wheels fetched so far, or None if it has none of them."""
            paths = group_wheels(list(wheels.paths.values()))[group]
            return plan_layer(group, paths, scheme, owner=spec.user.uid, epoch=epoch) if paths else None

        def in_background(job: Callable[[], Any], name: str) -> Callable[[], Any]:
            box: dict[str, Any] = {}

            def run() -> None:
                try:
                    box["result"] = job()
                except BaseException as exc:  # handed over by the waiter below
                    box["error"] = exc

            thread = threading.Thread(target=run, name=name, daemon=True)
            thread.start()

            def wait() -> Any:
                thread.join()
                if "error" in box:
                    raise box["error"]
                return box["result"]

            return wait

        # Each layer is planned once, as soon as its wheels are in: CUDA after torch's wheel named
        # them, torch after triton and torchvision, the rest last.
        names = set(parse_locked(requirements))
        large = {name for name in names if is_large(name)}
        sealed_base = in_background(  # the base's sealed layer, made while the wheels download
            lambda: seal_base(client, plan.base_ref, epoch=epoch, workdir=workdir / "base", show=put),
            "envkit-base")
        first = {"torch"} & names
        wheels = fetch(first, "torch's wheel") if first else CachedWheels({}, 0, 0)
        cuda = {name for name in names if name in torch_cuda_names(list(wheels.paths.values()))}
        wheels = wheels | fetch(cuda, "CUDA wheels") if cuda else wheels
        cuda_plan = layer(CUDA, wheels)
        importing = None
        if cuda_plan is not None:
            importing = start_import(client, cuda_plan, wheels.digests, show=put, progress=_bytes_to(put),
                                     fresh=fresh)
        try:
            wheels = wheels | fetch(large - first - cuda, "wheels for torch's layer")
            others = in_background(lambda: fetch(names - large, "the other wheels"), "envkit-wheels")
            below = [p for p in (cuda_plan, layer(TORCH, wheels)) if p is not None]
            try:
                preloaded = preload(client, below, wheels.digests, sealed_base(), epoch=epoch,
                                    importing=importing, show=put, progress=_bytes_to(put), fresh=fresh)
            except BaseException:
                try:
                    others()
                except BaseException:  # noqa: BLE001 - the first failure is the one reported
                    pass
                raise
            wheels = wheels | others()
        except BaseException:
            if importing is not None:  # never left running behind a failed build, nor its image
                try:
                    made.append(importing.join())
                except BaseException:  # noqa: BLE001 - the first failure is the one reported
                    pass
            raise
        rest = layer(REST, wheels)
        return wheels, below + ([rest] if rest is not None else []), preloaded

    return work


def _bytes_to(put: Callable[[Event], None]) -> Callable[[str, int, int], None]:
    """A layer writer's progress (name, bytes done, bytes in all) as ``bytes`` events."""
    return lambda name, done, total: put(Event("bytes", name, step=done, total=total))


def _seal_side(client: docker.DockerClient, plan: BuildPlan, system_id: str,
               workdir: Path) -> Callable[..., Any]:
    """Seal the engine's build of the system part (envkit.image.compose.seal_system)."""
    from envkit.image.compose import seal_system

    def work(put: Callable[[Event], None]) -> Any:
        sealdir = tempfile.mkdtemp(prefix="seal-", dir=workdir)
        return seal_system(client, system_id, base_ref=plan.base_ref, epoch=plan.spec.source_date_epoch,
                           workdir=sealdir, show=put)

    return work


def _compose_side(client: docker.DockerClient, plan: BuildPlan, system: Any, wheels: CachedWheels,
                  plans: list[Any]) -> Callable[..., Any]:
    """Compose the image from the sealed system part and the Python layers."""
    from envkit.image.compose import compose_image
    from envkit.image.render import labels_for

    def work(put: Callable[[Event], None]) -> Any:
        return compose_image(
            client, system, plans, wheels.digests, labels=labels_for(plan.render_input),
            base_ref=plan.base_ref, show=put, progress=_bytes_to(put),
        )

    return work


def build_input_digest(client: docker.DockerClient, plan: BuildPlan) -> str:
    """A digest of everything the image is made from; the base by its local image ID."""
    context = make_context(plan)
    base_id = client.images.get(plan.base_ref).id
    text = "\n".join(["envkit-build-inputs/2", context.digest(), base_id, plan.spec.platform])
    return "inputs:sha256:" + hashlib.sha256(text.encode()).hexdigest()


def seal_events(
    client: docker.DockerClient, unsealed_id: str, epoch: int, *, nocache: bool
) -> Iterator[Event]:
    """Seal the fresh build (untagged, so a failure leaves every tag where it was)."""
    from envkit.image import sealcache
    from envkit.image.seal import seal_image

    known = None if nocache else sealcache.lookup(client, unsealed_id)
    if known:
        yield Event("phase", f"seal: unchanged build, sealed image {known[7:19]} reused")
        return known
    yield Event("phase", "seal: rewriting layers deterministically")
    seal_events: list[Event] = []
    result = seal_image(client, unsealed_id, source_date_epoch=epoch, tag=None, show=seal_events.append)
    for event in seal_events:
        yield Event("log", event.message)
    sealcache.remember(client, unsealed_id, result.image_id)
    return result.image_id


def render_only(name: str, *, ca_bundle: str | None = None) -> str:
    return plan_build(name, ca_bundle=ca_bundle, with_requirements=False).dockerfile

