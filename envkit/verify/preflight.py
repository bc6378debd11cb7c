"""Host checks before any container runs: the engine, the NVIDIA runtime, the driver, each GPU
against the image, free disk. Each check is PASS, WARN, FAIL or SKIP with a one-line reason and fix.

Every source of facts is a reader in ``HostReaders`` so tests feed recorded ``nvidia-smi`` CSV and
NVML records instead of touching the host. The driver and GPUs are read and parsed by
``envkit.host.gpu``, the reader `envkit doctor` uses too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.errors import EngineUnreachable
from envkit.host import gpu as gpu_host
from envkit.host.gpu import Gpu, HostGpus
from envkit.verify.report import Check

NVIDIA_TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit, run `sudo nvidia-ctk runtime configure --runtime=docker` "
    "and restart dockerd"
)
CDI_DEFAULT_DIRS = ("/etc/cdi", "/var/run/cdi")
# Docker 19.03 (API 1.40) introduced device requests, which `--gpus` and envkit rely on.
MIN_DEVICE_REQUEST_API = (1, 40)
# A verify run itself writes little (the container layer, the report): below this it cannot work.
DISK_MIN_BYTES = 256 * 2**20
# torch.compile's caches, a user's checkpoints and the next image want more: below this, a warning.
DISK_COMFORT_BYTES = 4 * 2**30


@dataclass(frozen=True)
class ImageRequirements:
    """What the image needs from the host, from its labels (or the current environment)."""

    cuda: str | None = None
    min_driver: str | None = None
    arch_list: tuple[str, ...] = ()
    size_bytes: int | None = None
    present_locally: bool = True


@dataclass
class HostReaders:
    docker_version: Callable[[], dict[str, Any]]
    docker_info: Callable[[], dict[str, Any]]
    nvml: Callable[[], dict[str, Any] | None]
    nvidia_smi: Callable[[], str | None]
    which: Callable[[str], str | None] = shutil.which
    disk_free: Callable[[str], int] = field(default=lambda path: shutil.disk_usage(path).free)
    list_dir: Callable[[str], list[str]] = field(default=lambda path: _list_dir(path))


def _list_dir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


# --------------------------------------------------------------------------- readers


def host_gpus(readers: HostReaders) -> HostGpus:
    """The host's driver and GPUs from the readers, by the rule `envkit doctor` uses too."""
    return gpu_host.read_recorded(readers.nvml(), readers.nvidia_smi())


def docker_readers(get_client: Callable[[], Any]) -> HostReaders:
    """Readers backed by a Docker client, created on first use (so --native never needs one)."""
    cache: dict[str, Any] = {}

    def client() -> Any:
        if "client" not in cache:
            cache["client"] = get_client()
        return cache["client"]

    return HostReaders(
        docker_version=lambda: client().version(),
        docker_info=lambda: client().info(),
        nvml=gpu_host.nvml_record,
        nvidia_smi=gpu_host.nvidia_smi_csv,
    )


# --------------------------------------------------------------------------- checks


version_tuple = gpu_host.version_tuple


def check_engine(readers: HostReaders) -> tuple[Check, dict[str, Any] | None]:
    try:
        version = readers.docker_version()
        info = readers.docker_info()
    except EngineUnreachable as exc:
        return Check(name="docker engine", status="FAIL", reason=exc.message, fix=exc.hint), None
    server = version.get("Version", "unknown")
    api = version.get("ApiVersion", "unknown")
    if api != "unknown" and version_tuple(api)[:2] < MIN_DEVICE_REQUEST_API:
        return (
            Check(
                name="docker engine",
                status="FAIL",
                reason=f"Docker {server} (API {api}) predates GPU device requests (API 1.40, Docker 19.03)",
                fix="upgrade Docker to 19.03 or newer",
            ),
            info,
        )
    return Check(name="docker engine", status="PASS", reason=f"Docker {server}, API {api}"), info


def check_runtime(info: dict[str, Any], readers: HostReaders) -> Check:
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    nvidia = [name for name in runtimes if "nvidia" in name.lower()]
    if nvidia:
        return Check(name="nvidia runtime", status="PASS", reason=f"runtime {', '.join(nvidia)} registered")
    cdi_dirs = list(info.get("CDISpecDirs") or CDI_DEFAULT_DIRS)
    specs = [f"{d}/{name}" for d in cdi_dirs for name in readers.list_dir(d) if "nvidia" in name.lower()]
    if specs:
        return Check(name="nvidia runtime", status="PASS", reason=f"CDI spec {', '.join(specs)}")
    hook = readers.which("nvidia-container-runtime-hook")
    if hook:
        # dockerd's built-in "gpu" device driver runs this hook; no runtime entry is needed for it.
        return Check(name="nvidia runtime", status="PASS", reason=f"NVIDIA container hook at {hook}")
    listed = ", ".join(runtimes) or "none"
    return Check(
        name="nvidia runtime",
        status="FAIL",
        reason=f"NVIDIA container runtime not found: the engine lists runtimes {listed} "
        "and no NVIDIA CDI spec",
        fix=NVIDIA_TOOLKIT_FIX,
    )


def check_driver(host: HostGpus, req: ImageRequirements) -> Check:
    if not host.gpus:
        need = f" >= {req.min_driver}" if req.min_driver else ""
        return Check(
            name="nvidia driver",
            status="FAIL",
            reason="no NVIDIA GPU or driver found (NVML not loadable, nvidia-smi missing or failing)",
            fix=f"install the NVIDIA driver{need}, or verify with --cpu",
        )
    driver, source = host.driver or "unknown", host.source
    if not req.min_driver:
        return Check(
            name="nvidia driver",
            status="WARN",
            reason=f"driver {driver} ({source}); the image declares no minimum driver "
            "(label io.envkit.min-driver)",
        )
    cuda = f"CUDA {req.cuda}" if req.cuda else "its CUDA"
    if not gpu_host.driver_at_least(host.driver, req.min_driver):
        return Check(
            name="nvidia driver",
            status="FAIL",
            reason=f"driver {driver} is older than {req.min_driver}, the minimum for the image's {cuda}",
            fix=f"upgrade the NVIDIA driver to >= {req.min_driver}, or use an image built for an older CUDA",
        )
    return Check(
        name="nvidia driver",
        status="PASS",
        reason=f"driver {driver} ({source}) >= {req.min_driver} for {cuda}",
    )


def check_gpu(gpu: Gpu, req: ImageRequirements) -> Check:
    memory = f"{gpu.memory_mib} MiB" if gpu.memory_mib else "memory unknown"
    label = f"gpu {gpu.index}"
    if gpu.capability is None:
        return Check(
            name=label,
            status="WARN",
            reason=f"{gpu.name}, {memory}: compute capability unknown (driver too old to report it)",
        )
    sm = gpu.sm
    if not req.arch_list:
        return Check(
            name=label,
            status="WARN",
            reason=f"{gpu.name}, {memory}, {sm}: the image declares no arch list (label io.envkit.arch-list)",
        )
    supported, how = gpu_host.kernel_support(gpu.capability, req.arch_list)
    if not supported:
        return Check(
            name=label,
            status="FAIL",
            reason=f"{gpu.name} is {sm}; the image is built for {','.join(req.arch_list)}: "
            'CUDA kernels would fail with "no kernel image is available for execution on the device"',
            fix=f"use an image whose torch build includes {sm}",
        )
    return Check(name=label, status="PASS", reason=f"{gpu.name}, {memory}, {sm}: {how}")


def check_disk(path: str, req: ImageRequirements, readers: HostReaders) -> Check:
    try:
        free = readers.disk_free(path)
    except OSError as exc:
        return Check(name="disk", status="WARN", reason=f"free space of {path} unknown: {exc}")
    pull = 0 if req.present_locally or not req.size_bytes else req.size_bytes
    need = DISK_MIN_BYTES + pull
    gib = free / 2**30
    fix = "free disk space (`docker system prune` removes unused images and containers)"
    if free < need:
        return Check(
            name="disk",
            status="FAIL",
            reason=f"{gib:.1f} GiB free at {path}, {need / 2**30:.1f} GiB needed",
            fix=fix,
        )
    if free < need + DISK_COMFORT_BYTES:
        return Check(name="disk", status="WARN", reason=f"only {gib:.1f} GiB free at {path}", fix=fix)
    return Check(name="disk", status="PASS", reason=f"{gib:.1f} GiB free at {path}")


def run_preflight(
    req: ImageRequirements,
    readers: HostReaders,
    *,
    gpus_wanted: int | None = None,
    cpu: bool = False,
    native: bool = False,
) -> list[Check]:
    """All host checks in order. ``gpus_wanted`` None means all GPUs."""
    checks: list[Check] = []
    info: dict[str, Any] | None = None
    if native:
        checks.append(Check(name="docker engine", status="SKIP", reason="--native runs without Docker"))
    else:
        engine, info = check_engine(readers)
        checks.append(engine)
    if cpu:
        checks.append(Check(name="gpu", status="SKIP", reason="--cpu: no GPU checks"))
    else:
        if not native:
            if info is None:
                checks.append(Check(name="nvidia runtime", status="SKIP", reason="engine unreachable"))
            else:
                checks.append(check_runtime(info, readers))
        host = host_gpus(readers)
        gpus = list(host.gpus)
        checks.append(check_driver(host, req))
        if gpus_wanted is not None and gpus and gpus_wanted > len(gpus):
            checks.append(
                Check(
                    name="gpu count",
                    status="FAIL",
                    reason=f"{gpus_wanted} GPUs requested, the host has {len(gpus)}",
                    fix=f"use --gpus {len(gpus)} or fewer",
                )
            )
        chosen = gpus if gpus_wanted is None else gpus[:gpus_wanted]
        checks.extend(check_gpu(gpu, req) for gpu in chosen)
    disk_path = "."
    if info and info.get("DockerRootDir") and Path(info["DockerRootDir"]).exists():
        disk_path = str(info["DockerRootDir"])
    checks.append(check_disk(disk_path, req, readers))
    return checks
