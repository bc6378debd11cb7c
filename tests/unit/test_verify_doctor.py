"""doctor's decisions on recorded host readings (nvidia-smi CSV and NVML-shaped values)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from envkit.host.gpu import (
    NVIDIA_SMI_QUERY,
    arch_support,
    parse_nvidia_smi,
    read_host,
    read_nvidia_smi,
    read_nvml,
)
from envkit.host.gpu import HostGpus as HostInfo
from envkit.spec import compat
from envkit.verify.doctor import assess, doctor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "doctor"

IMAGES = [
    ("pytorch-cuda:2.6", compat.resolve("2.6", "12.4", "3.11")),
    ("pytorch-cuda:2.7", compat.resolve("2.7", "12.6", "3.11")),
    ("pytorch-cuda:2.8", compat.resolve("2.8", "12.8", "3.11")),
    ("pytorch-cuda:2.15", compat.resolve("2.15", "13.2", "3.11")),
    ("cpu:2.8", compat.resolve("2.8", "cpu", "3.11")),
]


class FakeNvml:
    """Stands in for the pynvml module, answering from a recorded dict."""

    def __init__(self, recorded: dict) -> None:
        self.recorded = recorded
        self.shut_down = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.recorded["driver_version"]

    def nvmlDeviceGetCount(self) -> int:
        return len(self.recorded["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.recorded["devices"][index]

    def nvmlDeviceGetName(self, handle: dict) -> bytes:
        return handle["name"].encode()  # older nvidia-ml-py releases return bytes

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(total=handle["memory_total"])

    def nvmlDeviceGetCudaComputeCapability(self, handle: dict) -> tuple[int, int]:
        return tuple(handle["cuda_compute_capability"])


def smi_host(name: str) -> HostInfo:
    return parse_nvidia_smi((FIXTURES / name).read_text())


def nvml_host(name: str) -> HostInfo:
    fake = FakeNvml(json.loads((FIXTURES / name).read_text()))
    host = read_nvml(fake)
    assert fake.shut_down
    return host


def verdicts(host: HostInfo) -> dict[str, bool | None]:
    return {fit.image: fit.runs for fit in assess(host, IMAGES)}


def runnable(host: HostInfo) -> set[str]:
    """The images the host runs; every image gets a verdict (none is left undecided)."""
    result = verdicts(host)
    assert set(result) == {"pytorch-cuda:2.6", "pytorch-cuda:2.7", "pytorch-cuda:2.8", "pytorch-cuda:2.15", "cpu:2.8"}
    assert None not in result.values()
    return {image for image, runs in result.items() if runs}


def fit_of(host: HostInfo, image: str):
    return next(f for f in assess(host, IMAGES) if f.image == image)


def test_nvidia_smi_csv_is_parsed():
    host = smi_host("h100_driver535.nvidia-smi.csv")
    assert host.driver == "535.183.01" and host.source == "nvidia-smi"
    (gpu,) = host.gpus
    assert (gpu.name, gpu.compute_cap, gpu.sm, gpu.memory_mib) == ("NVIDIA H100 80GB HBM3", "9.0", "sm_90", 81559)
    assert len(smi_host("a100x2.nvidia-smi.csv").gpus) == 2


def test_nvml_values_are_read():
    host = nvml_host("a100.nvml.json")
    assert host.source == "nvml" and host.driver == "570.124.06"
    (gpu,) = host.gpus
    assert (gpu.name, gpu.sm, gpu.memory_mib) == ("NVIDIA A100-SXM4-80GB", "sm_80", 81920)


def test_h100_with_a_535_driver_runs_no_cuda_12_image():
    host = smi_host("h100_driver535.nvidia-smi.csv")
    assert runnable(host) == {"cpu:2.8"}
    reasons = fit_of(host, "pytorch-cuda:2.8").reasons
    assert reasons == ("driver 535.183.01 is older than 570.26, the minimum for CUDA 12.8",)


def test_a100_on_r570_runs_cuda_12_8_but_not_13():
    for host in (nvml_host("a100.nvml.json"), smi_host("a100x2.nvidia-smi.csv")):
        assert runnable(host) == {"pytorch-cuda:2.6", "pytorch-cuda:2.7", "pytorch-cuda:2.8", "cpu:2.8"}
        assert "older than 580.65.06" in fit_of(host, "pytorch-cuda:2.15").reasons[0]


def test_rtx_5090_needs_an_image_built_for_sm_120():
    host = smi_host("rtx5090.nvidia-smi.csv")
    result = verdicts(host)
    assert result["pytorch-cuda:2.6"] is False and result["pytorch-cuda:2.7"] is False
    assert result["pytorch-cuda:2.8"] is True
    reason = fit_of(host, "pytorch-cuda:2.6").reasons[0]
    assert "sm_120" in reason and "no kernel image" in reason
    assert "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90" in reason


def test_b200_runs_only_blackwell_builds():
    host = nvml_host("b200.nvml.json")
    assert runnable(host) == {"pytorch-cuda:2.8", "pytorch-cuda:2.15", "cpu:2.8"}
    assert "sm_100" in fit_of(host, "pytorch-cuda:2.6").reasons[0]


@pytest.mark.parametrize(
    ("sm", "archs", "runs", "how"),
    [
        ("sm_90", ["sm_80", "sm_90"], True, None),
        ("sm_89", ["sm_80", "sm_86", "sm_90"], True, "sm_86"),
        ("sm_120", ["sm_90", "sm_100"], False, None),
        ("sm_121", ["sm_90", "compute_120"], True, "compute_120 PTX"),
        ("sm_75", ["sm_80", "compute_80"], False, None),
    ],
)
def test_arch_support_follows_cuda_binary_compatibility(sm, archs, runs, how):
    ok, note = arch_support(sm, archs)
    assert ok is runs
    if how:
        assert how in note
    else:
        assert note is None


def test_a_host_without_gpu_says_so_plainly():
    host = read_host(nvml_reader=lambda: None, smi_reader=lambda: None)
    assert not host.has_gpu and host.source == "none"
    assert "no NVIDIA driver or GPU" in host.problem
    report = doctor(host, IMAGES)
    by_name = {f.image: f for f in report.fits}
    assert by_name["pytorch-cuda:2.8"].runs is False
    assert by_name["pytorch-cuda:2.8"].reasons == ("no NVIDIA GPU on this host",)
    assert by_name["cpu:2.8"].runs is True
    assert report.to_json()["host"]["gpus"] == []


def test_nvidia_smi_reader_runs_the_documented_query_and_reports_failures():
    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 0, (FIXTURES / "rtx5090.nvidia-smi.csv").read_text(), "")

    host = read_nvidia_smi(run=fake_run)
    assert seen == [NVIDIA_SMI_QUERY] and host.gpus[0].sm == "sm_120"

    def failing(command, **kwargs):
        message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
        return subprocess.CompletedProcess(command, 9, "", message)

    host = read_host(nvml_reader=lambda: None, smi_reader=lambda: read_nvidia_smi(run=failing))
    assert not host.has_gpu and "couldn't communicate" in host.problem


def test_nvml_is_tried_before_nvidia_smi():
    from_nvml = nvml_host("a100.nvml.json")
    host = read_host(nvml_reader=lambda: from_nvml, smi_reader=lambda: pytest.fail("nvidia-smi was asked"))
    assert host.source == "nvml"


def test_catalog_images_resolve_when_the_catalog_is_there():
    from envkit.verify.doctor import catalog_images

    images = dict(catalog_images())
    assert images, "the catalog has images"
    for resolved in images.values():
        assert resolved.torch and resolved.python
