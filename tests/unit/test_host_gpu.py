"""`envkit doctor` and `envkit verify`'s preflight read the host the same way.

Every recorded reading under tests/fixtures/gpu and tests/fixtures/doctor goes through doctor's path
(envkit.verify.doctor over envkit.host.gpu's readers) and preflight's path (HostReaders fed the
recorded NVML record or nvidia-smi text); both must see the same driver, GPUs and compute
capabilities, and give the same verdict on each GPU for the same image.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from envkit.host import gpu as host_gpu
from envkit.spec import compat
from envkit.verify import doctor as doc
from envkit.verify import preflight as pf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SMI_FILES = sorted(FIXTURES.glob("*/*.nvidia-smi.csv"))
NVML_FILES = sorted(FIXTURES.glob("*/*.nvml.json"))
IMAGES = [
    ("pytorch-cuda:2.6", compat.resolve("2.6", "12.4", "3.11")),
    ("pytorch-cuda:2.8", compat.resolve("2.8", "12.8", "3.11")),
    ("pytorch-cuda:2.15", compat.resolve("2.15", "13.2", "3.11")),
]


class RecordedNvml:
    """Stands in for the pynvml module, answering from a recorded file (either fixture layout)."""

    def __init__(self, recorded: dict[str, Any]) -> None:
        self.recorded = recorded

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return self.recorded["driver_version"].encode()

    def nvmlDeviceGetCount(self) -> int:
        return len(self.recorded["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.recorded["devices"][index]

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str:
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(total=handle.get("memory_total_bytes", handle.get("memory_total")))

    def nvmlDeviceGetCudaComputeCapability(self, handle: dict[str, Any]) -> tuple[int, int]:
        return tuple(handle["cuda_compute_capability"])


def _readers(*, nvml: dict[str, Any] | None = None, smi_text: str | None = None) -> pf.HostReaders:
    return pf.HostReaders(
        docker_version=lambda: {"Version": "27.0.0", "ApiVersion": "1.46"},
        docker_info=lambda: {"Runtimes": {"nvidia": {}}, "DockerRootDir": "/nonexistent"},
        nvml=lambda: nvml,
        nvidia_smi=lambda: smi_text,
        which=lambda name: None,
        disk_free=lambda path: 100 * 2**30,
        list_dir=lambda path: [],
    )


def _requirements(resolved: compat.Resolved) -> pf.ImageRequirements:
    return pf.ImageRequirements(cuda=resolved.cuda, min_driver=resolved.min_driver,
                                arch_list=tuple(resolved.arch_list))


def _doctor_host_from_smi(path: Path) -> host_gpu.HostGpus:
    def recorded_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 0, path.read_text(), "")

    return host_gpu.read_host(nvml_reader=lambda: None, smi_reader=lambda: host_gpu.read_nvidia_smi(recorded_run))


def _doctor_host_from_nvml(path: Path) -> host_gpu.HostGpus:
    fake = RecordedNvml(json.loads(path.read_text()))
    return host_gpu.read_host(nvml_reader=lambda: host_gpu.read_nvml(fake), smi_reader=lambda: None)


def _assert_same_answers(doctor_host: host_gpu.HostGpus, readers: pf.HostReaders) -> None:
    preflight_host = pf.host_gpus(readers)
    assert preflight_host == doctor_host
    assert doctor_host.gpus and doctor_host.driver
    facts = [(g.index, g.name, g.compute_cap, g.sm, g.memory_mib) for g in preflight_host.gpus]
    assert facts == [(g.index, g.name, g.compute_cap, g.sm, g.memory_mib) for g in doctor_host.gpus]
    for image, resolved in IMAGES:
        fit = next(f for f in doc.assess(doctor_host, [(image, resolved)]))
        checks = {c.name: c for c in pf.run_preflight(_requirements(resolved), readers)}
        driver_ok = checks["nvidia driver"].status == "PASS"
        assert doctor_host.driver in checks["nvidia driver"].reason
        for gpu in doctor_host.gpus:
            check = checks[f"gpu {gpu.index}"]
            assert gpu.name in check.reason and str(gpu.sm) in check.reason
            doctor_refuses_arch = any(f"GPU {gpu.index} " in reason for reason in fit.reasons)
            assert doctor_refuses_arch == (check.status == "FAIL"), (image, gpu, fit, check)
        doctor_refuses_driver = any(reason.startswith("driver ") for reason in fit.reasons)
        assert doctor_refuses_driver == (not driver_ok), (image, fit, checks["nvidia driver"])


@pytest.mark.parametrize("path", SMI_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_doctor_and_preflight_read_nvidia_smi_alike(path: Path) -> None:
    _assert_same_answers(_doctor_host_from_smi(path), _readers(smi_text=path.read_text()))


@pytest.mark.parametrize("path", NVML_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_doctor_and_preflight_read_nvml_alike(path: Path) -> None:
    record = host_gpu.nvml_record(RecordedNvml(json.loads(path.read_text())))
    _assert_same_answers(_doctor_host_from_nvml(path), _readers(nvml=record))


@pytest.mark.parametrize("host", ["h100-old-driver", "blackwell-rtx5090"])
def test_nvml_and_nvidia_smi_readings_of_one_host_agree(host: str) -> None:
    from_smi = _doctor_host_from_smi(FIXTURES / "gpu" / f"{host}.nvidia-smi.csv")
    from_nvml = _doctor_host_from_nvml(FIXTURES / "gpu" / f"{host}.nvml.json")
    assert from_smi.driver == from_nvml.driver
    assert from_smi.gpus[: len(from_nvml.gpus)] == from_nvml.gpus


def test_noheader_and_header_csv_parse_alike() -> None:
    header = "index, name, driver_version, memory.total [MiB], compute_cap\n0, NVIDIA A100, 570.1, 81920 MiB, 8.0\n"
    noheader = "NVIDIA A100, 570.1, 81920 MiB, 8.0\n"
    assert host_gpu.parse_nvidia_smi(header) == host_gpu.parse_nvidia_smi(noheader)


def test_nvidia_smi_is_asked_again_without_compute_cap_on_old_drivers() -> None:
    seen: list[list[str]] = []

    def old_driver(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        if "compute_cap" in command[1]:
            return subprocess.CompletedProcess(command, 2, "", 'Field "compute_cap" is not a valid field to query.')
        return subprocess.CompletedProcess(command, 0, "index, name, driver_version, memory.total [MiB]\n"
                                           "0, Tesla T4, 470.82.01, 15109 MiB\n", "")

    host = host_gpu.read_nvidia_smi(old_driver)
    assert len(seen) == 2 and host is not None and host.driver == "470.82.01"
    assert host.gpus[0].sm is None
    fit = doc.assess(host, IMAGES[1:2])[0]
    assert fit.runs is False  # driver 470 is too old for CUDA 12.8 anyway
    assert "GPU 0: compute capability unknown" in " ".join(fit.notes)


@pytest.mark.parametrize(
    ("sm", "archs", "runs"),
    [("sm_90", ["sm_90a"], True), ("sm_89", ["sm_80a"], False), ("sm_90", ["compute_90a"], False)],
)
def test_arch_suffixes_follow_the_probe_rule(sm: str, archs: list[str], runs: bool) -> None:
    from envkit.incontainer.probe.archs import kernel_support, parse_capability

    assert host_gpu.arch_support(sm, archs)[0] is runs
    assert kernel_support(archs, *parse_capability(sm))[0] is runs
