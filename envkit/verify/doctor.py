"""Can this host run each catalog image? Driver and GPU architecture against the compat data.

The host is read through NVML (``nvidia-ml-py``, optional, imported only when asked) or, failing
that, ``nvidia-smi``. Both readers are plain functions so tests can hand in recorded outputs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from envkit.spec.compat import CPU, Resolved

NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=name,driver_version,memory.total,compute_cap",
    "--format=csv,noheader",
]


NO_GPU = "no NVIDIA driver or GPU found (neither NVML nor nvidia-smi answered)"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_cap: str  # "9.0"
    memory_mib: int | None = None

    @property
    def sm(self) -> str:
        major, minor = self.compute_cap.split(".")
        return f"sm_{major}{minor}"


@dataclass(frozen=True)
class HostInfo:
    driver: str | None
    gpus: tuple[Gpu, ...]
    source: str  # "nvml", "nvidia-smi" or "none"
    problem: str | None = None  # why no GPU could be read, in words

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "gpus": [{**asdict(g), "sm": g.sm} for g in self.gpus],
            "source": self.source,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Fit:
    image: str
    torch: str
    cuda: str
    min_driver: str | None
    arch_list: tuple[str, ...]
    runs: bool | None  # None: the data cannot tell (no recorded arch list or minimum driver)
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["arch_list"] = list(self.arch_list)
        data["reasons"] = list(self.reasons)
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class DoctorReport:
    host: HostInfo
    fits: list[Fit] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host.to_json(), "images": [f.to_json() for f in self.fits]}


# --------------------------------------------------------------------------- reading the host


def _import_nvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py: optional, only for hosts that have it
    except ImportError:
        return None
    return pynvml


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_nvml(nvml: ModuleType | Any | None = None) -> HostInfo | None:
    """The host through NVML, or None when NVML is not installed or cannot initialise."""
    nvml = nvml if nvml is not None else _import_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable driver
        return None
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            total = nvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(Gpu(index, _text(nvml.nvmlDeviceGetName(handle)), f"{major}.{minor}", total // 2**20))
        return HostInfo(driver, tuple(gpus), "nvml")
    finally:
        nvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> HostInfo:
    """Parse ``nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader``."""
    gpus = []
    driver = None
    for index, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        name, driver_version, memory, compute_cap = (part.strip() for part in line.rsplit(",", 3))
        driver = driver or driver_version
        mib = memory.split()[0]
        gpus.append(Gpu(index, name, compute_cap, int(mib) if mib.isdigit() else None))
    return HostInfo(driver, tuple(gpus), "nvidia-smi")


def read_nvidia_smi(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> HostInfo | None:
    """The host through nvidia-smi, or None when it is absent or fails."""
    if run is subprocess.run and shutil.which("nvidia-smi") is None:
        return None
    try:
        result = run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return HostInfo(None, (), "nvidia-smi", problem=(result.stderr or result.stdout).strip() or None)
    return parse_nvidia_smi(result.stdout)


def read_host(
    nvml_reader: Callable[[], HostInfo | None] = read_nvml,
    smi_reader: Callable[[], HostInfo | None] = read_nvidia_smi,
) -> HostInfo:
    """NVML first, nvidia-smi second; a host where neither sees a GPU says so."""
    problem = None
    for reader in (nvml_reader, smi_reader):
        host = reader()
        if host is not None and host.gpus:
            return host
        if host is not None and host.problem:
            problem = host.problem
    return HostInfo(None, (), "none", problem=problem or NO_GPU)


# --------------------------------------------------------------------------- deciding


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _sm_number(arch: str) -> int:
    return int(arch.split("_", 1)[1].rstrip("af"))


def arch_support(sm: str, arch_list: Iterable[str]) -> tuple[bool, str | None]:
    """Whether a GPU of ``sm`` can run code built for ``arch_list``, and how if not natively.

    CUDA's binary compatibility: a cubin for sm_XY runs on sm_XZ with Z >= Y (same major), and PTX
    for compute_XY is compiled by the driver for any sm >= XY.
    """
    gpu = _sm_number(sm)
    major, minor = divmod(gpu, 10)
    cubins = [_sm_number(a) for a in arch_list if a.startswith("sm_")]
    ptx = [_sm_number(a) for a in arch_list if a.startswith("compute_")]
    if gpu in cubins:
        return True, None
    same_major = [c for c in cubins if c // 10 == major and c % 10 <= minor]
    if same_major:
        return True, f"{sm} runs sm_{max(same_major)} code (same major architecture)"
    jit = [p for p in ptx if p <= gpu]
    if jit:
        return True, f"{sm} runs compute_{max(jit)} PTX compiled by the driver at first use (slow start)"
    return False, None


def assess(host: HostInfo, images: Iterable[tuple[str, Resolved]]) -> list[Fit]:
    fits = []
    for name, resolved in images:
        reasons: list[str] = []
        notes: list[str] = []
        unknown = False
        if resolved.cuda == CPU:
            fits.append(Fit(name, resolved.torch, resolved.cuda, None, (), True, (), ("CPU-only image",)))
            continue
        if not host.has_gpu:
            reasons.append("no NVIDIA GPU on this host")
        else:
            if resolved.min_driver is None:
                unknown = True
                notes.append(f"no minimum driver recorded for CUDA {resolved.cuda}")
            elif host.driver is None or _version_key(host.driver) < _version_key(resolved.min_driver):
                reasons.append(
                    f"driver {host.driver or 'unknown'} is older than {resolved.min_driver}, "
                    f"the minimum for CUDA {resolved.cuda}"
                )
            if not resolved.arch_list:
                unknown = True
                notes.append(
                    f"no GPU architecture list recorded for torch {resolved.torch}, CUDA {resolved.cuda}"
                )
            else:
                for gpu in host.gpus:
                    ok, how = arch_support(gpu.sm, resolved.arch_list)
                    if not ok:
                        reasons.append(
                            f"GPU {gpu.index} {gpu.name} is {gpu.sm}, not in the image's architectures "
                            f"({' '.join(resolved.arch_list)}): 'no kernel image is available'"
                        )
                    elif how:
                        notes.append(f"GPU {gpu.index}: {how}")
        runs = False if reasons else (None if unknown else True)
        fits.append(
            Fit(
                name,
                resolved.torch,
                resolved.cuda,
                resolved.min_driver,
                resolved.arch_list,
                runs,
                tuple(reasons),
                tuple(dict.fromkeys(notes)),
            )
        )
    return fits


def catalog_images() -> list[tuple[str, Resolved]]:
    """Every catalog image with its resolved versions."""
    from envkit.spec import compat
    from envkit.spec.catalog import list_catalog_paths, load

    images = []
    for name, _ in list_catalog_paths():
        ref = load(name)
        spec = ref.spec
        resolved = compat.resolve(spec.torch.version, spec.torch.cuda, spec.python, source=ref.display)
        images.append((name, resolved))
    return images


def doctor(
    host: HostInfo | None = None, images: Iterable[tuple[str, Resolved]] | None = None
) -> DoctorReport:
    host = host if host is not None else read_host()
    return DoctorReport(host, assess(host, images if images is not None else catalog_images()))
