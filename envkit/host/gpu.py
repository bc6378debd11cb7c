"""The one reader of this host's NVIDIA driver and GPUs, shared by `envkit doctor` and `envkit verify`.

NVML (``nvidia-ml-py``, optional, imported only when asked) is read first, ``nvidia-smi`` second.
Every reading can also be handed in as recorded data (an NVML record, nvidia-smi CSV text), so tests
and the two commands go through the same parsing and the same rules.

Whether an image's kernels run on a GPU is decided by ``envkit.incontainer.probe.archs``, the rule
the in-container probe applies to ``torch.cuda.get_arch_list()``: host and container agree.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from envkit.incontainer.probe import archs

# Drivers older than 510 do not know compute_cap: the query is repeated without it.
SMI_FIELDS = ("index", "name", "driver_version", "memory.total", "compute_cap")
NVIDIA_SMI_QUERY = ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv"]
# The column order of `--format=csv,noheader` output, when a reading comes without its header.
NOHEADER_FIELDS = ("name", "driver_version", "memory.total", "compute_cap")

NO_GPU = "no NVIDIA driver or GPU found (neither NVML nor nvidia-smi answered)"

Run = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_cap: str | None  # "9.0"; None when the driver is too old to report it
    memory_mib: int | None = None

    @property
    def capability(self) -> tuple[int, int] | None:
        return archs.parse_capability(self.compute_cap) if self.compute_cap else None

    @property
    def sm(self) -> str | None:
        capability = self.capability
        return archs.capability_name(*capability) if capability else None


@dataclass(frozen=True)
class HostGpus:
    """What the host's driver says: its version, its GPUs, and which tool answered."""

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


# --------------------------------------------------------------------------- NVML


def _import_nvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py: optional (envkit[gpu])
    except ImportError:
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_record(nvml: ModuleType | Any | None = None) -> dict[str, Any] | None:
    """NVML's answers as a plain record; None when NVML is not installed or cannot initialise."""
    nvml = nvml if nvml is not None else _import_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded...: no usable driver
        return None
    try:
        record: dict[str, Any] = {"driver_version": _text(nvml.nvmlSystemGetDriverVersion()), "devices": []}
        if hasattr(nvml, "nvmlSystemGetCudaDriverVersion"):
            record["cuda_driver_version"] = int(nvml.nvmlSystemGetCudaDriverVersion())
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            record["devices"].append(
                {
                    "index": index,
                    "name": _text(nvml.nvmlDeviceGetName(handle)),
                    "memory_total_bytes": int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                    "cuda_compute_capability": list(nvml.nvmlDeviceGetCudaComputeCapability(handle)),
                }
            )
        return record
    finally:
        nvml.nvmlShutdown()


def host_from_nvml(record: dict[str, Any]) -> HostGpus:
    gpus = []
    for position, device in enumerate(record.get("devices", [])):
        cap = device.get("cuda_compute_capability")
        memory = device.get("memory_total_bytes")
        gpus.append(
            Gpu(
                index=int(device.get("index", position)),
                name=str(device["name"]),
                compute_cap=f"{int(cap[0])}.{int(cap[1])}" if cap else None,
                memory_mib=int(memory) // 2**20 if memory else None,
            )
        )
    return HostGpus(str(record["driver_version"]), tuple(gpus), "nvml")


def read_nvml(nvml: ModuleType | Any | None = None) -> HostGpus | None:
    """The host through NVML, or None when NVML is not installed or cannot initialise."""
    record = nvml_record(nvml)
    return host_from_nvml(record) if record is not None else None


# --------------------------------------------------------------------------- nvidia-smi


def _number(text: str) -> int | None:
    digits = text.split()[0] if text.strip() else ""
    return int(digits) if digits.isdigit() else None


def _capability_text(text: str) -> str | None:
    """``"9.0"`` stays; ``[N/A]`` or an empty field (old drivers) is unknown."""
    text = text.strip()
    if not text or not text[0].isdigit():
        return None
    major, minor = archs.parse_capability(text)
    return f"{major}.{minor}"


def parse_nvidia_smi(text: str) -> HostGpus:
    """Parse ``nvidia-smi --query-gpu=... --format=csv`` output, with its header or without it.

    With a header (``memory.total [MiB]``) the columns are taken from it; without one they are
    ``name, driver_version, memory.total, compute_cap``. Units and ``[N/A]`` are tolerated.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    rows: list[dict[str, str]] = []
    first = lines[0].split(",")[0].strip().lower() if lines else ""
    if first in SMI_FIELDS:
        parsed = list(csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=True))
        header = [column.split(" [")[0].strip() for column in parsed[0]]
        rows = [
            dict(zip(header, (cell.strip() for cell in row), strict=True))
            for row in parsed[1:]
            if row and len(row) == len(header)
        ]
    else:
        for line in lines:
            # From the right: a GPU name may hold a comma, the other fields never do.
            parts = [part.strip() for part in line.rsplit(",", len(NOHEADER_FIELDS) - 1)]
            if len(parts) == len(NOHEADER_FIELDS):
                rows.append(dict(zip(NOHEADER_FIELDS, parts, strict=True)))
    gpus = []
    driver = None
    for position, values in enumerate(rows):
        driver = driver or values.get("driver_version") or None
        index = values.get("index", "")
        gpus.append(
            Gpu(
                index=int(index) if index.isdigit() else position,
                name=values.get("name", "unknown"),
                compute_cap=_capability_text(values.get("compute_cap", "")),
                memory_mib=_number(values.get("memory.total", "")),
            )
        )
    return HostGpus(driver, tuple(gpus), "nvidia-smi")


def query_nvidia_smi(run: Run = subprocess.run) -> tuple[str | None, str | None]:
    """(CSV text, None) from nvidia-smi, or (None, why it failed; None when it is not installed)."""
    if run is subprocess.run and shutil.which("nvidia-smi") is None:
        return None, None
    problem = None
    for query in (NVIDIA_SMI_QUERY, [NVIDIA_SMI_QUERY[0], f"--query-gpu={','.join(SMI_FIELDS[:-1])}",
                                     NVIDIA_SMI_QUERY[2]]):
        try:
            result = run(query, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None, None
        if result.returncode == 0:
            return result.stdout, None
        problem = (result.stderr or result.stdout).strip() or None
        if "compute_cap" not in (result.stderr or "") + (result.stdout or ""):
            break  # a failure that asking without compute_cap will not cure
    return None, problem


def nvidia_smi_csv(run: Run = subprocess.run) -> str | None:
    """nvidia-smi's CSV text, or None when it is missing or fails."""
    return query_nvidia_smi(run)[0]


def read_nvidia_smi(run: Run = subprocess.run) -> HostGpus | None:
    """The host through nvidia-smi; None when it is absent, a GPU-less reading saying why when it fails."""
    text, problem = query_nvidia_smi(run)
    if text is None:
        return HostGpus(None, (), "nvidia-smi", problem=problem) if problem else None
    return parse_nvidia_smi(text)


# --------------------------------------------------------------------------- the host


def read_host(
    nvml_reader: Callable[[], HostGpus | None] = read_nvml,
    smi_reader: Callable[[], HostGpus | None] = read_nvidia_smi,
) -> HostGpus:
    """NVML first, nvidia-smi second; a host where neither sees a GPU says so."""
    problem = None
    for reader in (nvml_reader, smi_reader):
        host = reader()
        if host is not None and host.gpus:
            return host
        if host is not None and host.problem:
            problem = host.problem
    return HostGpus(None, (), "none", problem=problem or NO_GPU)


def read_recorded(nvml: dict[str, Any] | None, smi_text: str | None) -> HostGpus:
    """``read_host`` over recorded readings: an NVML record and nvidia-smi CSV text, either None."""
    return read_host(
        lambda: host_from_nvml(nvml) if nvml is not None else None,
        lambda: parse_nvidia_smi(smi_text) if smi_text is not None else None,
    )


# --------------------------------------------------------------------------- rules


def version_tuple(text: str) -> tuple[int, ...]:
    """``"570.133.20"`` -> (570, 133, 20); non-digits inside a part are ignored."""
    parts = []
    for piece in text.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def driver_at_least(driver: str | None, minimum: str) -> bool:
    return driver is not None and version_tuple(driver) >= version_tuple(minimum)


def kernel_support(capability: tuple[int, int], arch_list: Iterable[str]) -> tuple[bool, str]:
    """Whether code for ``arch_list`` runs on a GPU of ``capability``, and how (the probe's rule)."""
    return archs.kernel_support(list(arch_list), *capability)


def arch_support(sm: str, arch_list: Iterable[str]) -> tuple[bool, str | None]:
    """``kernel_support`` for a GPU named by ``sm`` (``sm_90``), told as doctor tells it.

    The note is None when the image has a cubin for exactly this GPU, otherwise it names what runs.
    """
    capability = archs.parse_capability(sm)
    arch_list = list(arch_list)
    ok, how = kernel_support(capability, arch_list)
    if not ok:
        return False, None
    parsed = [(arch, _capability_of(arch)) for arch in arch_list]
    cubins = [(cap, arch) for arch, cap in parsed if cap and arch.startswith("sm_")]
    if any(cap == capability for cap, _ in cubins):
        return True, None
    # Name the newest code that runs: a same-major cubin first, then PTX (as archs decides).
    major, minor = capability
    same_major = [(cap, arch) for cap, arch in cubins if arch[-1].isdigit() and cap[0] == major
                  and cap[1] <= minor]
    if same_major:
        return True, f"{sm} runs {max(same_major)[1]} code (same major architecture)"
    ptx = [(cap, arch) for arch, cap in parsed if cap and arch.startswith("compute_") and arch[-1].isdigit()
           and cap <= capability]
    if ptx:
        return True, f"{sm} runs {max(ptx)[1]} PTX compiled by the driver at first use (slow start)"
    return True, how


def _capability_of(arch: str) -> tuple[int, int] | None:
    try:
        return archs.parse_capability(arch)
    except ValueError:
        return None
