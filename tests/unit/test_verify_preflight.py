"""Host preflight against recorded nvidia-smi / NVML outputs (tests/fixtures/gpu)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from envkit.errors import EngineUnreachable
from envkit.host.gpu import Gpu, host_from_nvml, parse_nvidia_smi
from envkit.verify import preflight as pf
from envkit.verify.report import Check

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gpu"

# An image like pytorch-cuda:2.8 (torch 2.8, CUDA 12.8) and one like pytorch-cuda:2.6 (CUDA 12.4),
# as their labels describe them.
CUDA_128 = pf.ImageRequirements(
    cuda="12.8", min_driver="570.26", arch_list=("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
)
CUDA_124 = pf.ImageRequirements(
    cuda="12.4",
    min_driver="550.54.14",
    arch_list=("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
)
ENGINE_WITH_NVIDIA = {
    "Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}},
    "DockerRootDir": "/nonexistent-docker-root",
}
ENGINE_WITHOUT_NVIDIA = {
    "Runtimes": {"io.containerd.runc.v2": {}, "runc": {}},
    "DockerRootDir": "/nonexistent-docker-root",
}


def smi(name: str) -> str:
    return (FIXTURES / f"{name}.nvidia-smi.csv").read_text()


def nvml(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.nvml.json").read_text())


def readers(
    *,
    info: dict[str, Any] | None = None,
    smi_text: str | None = None,
    nvml_record: dict[str, Any] | None = None,
    free: int = 100 * 2**30,
    files: dict[str, list[str]] | None = None,
    hook: str | None = None,
    engine_down: bool = False,
) -> pf.HostReaders:
    def version() -> dict[str, Any]:
        if engine_down:
            raise EngineUnreachable(
                "no Docker engine answers at unix:///var/run/docker.sock", hint="start one"
            )
        return {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41"}

    return pf.HostReaders(
        docker_version=version,
        docker_info=lambda: info if info is not None else ENGINE_WITH_NVIDIA,
        nvml=lambda: nvml_record,
        nvidia_smi=lambda: smi_text,
        which=lambda name: hook if name == "nvidia-container-runtime-hook" else None,
        disk_free=lambda path: free,
        list_dir=lambda path: (files or {}).get(path, []),
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_parse_nvidia_smi_csv() -> None:
    host = parse_nvidia_smi(smi("h100-old-driver"))
    assert len(host.gpus) == 2 and host.driver == "535.104.05"
    assert host.gpus[1] == Gpu(index=1, name="NVIDIA H100 80GB HBM3", compute_cap="9.0", memory_mib=81559)
    assert host.gpus[1].capability == (9, 0)
    # Old drivers answer without compute_cap; memory can be [N/A] on some boards.
    old = "index, name, driver_version, memory.total [MiB]\n0, Tesla T4, 470.82.01, [N/A]\n"
    host = parse_nvidia_smi(old)
    assert host.driver == "470.82.01"
    assert host.gpus == (Gpu(index=0, name="Tesla T4", compute_cap=None, memory_mib=None),)
    assert host.gpus[0].sm is None


def test_nvml_record_matches_nvidia_smi() -> None:
    from_nvml = host_from_nvml(nvml("h100-old-driver"))
    from_smi = parse_nvidia_smi(smi("h100-old-driver"))
    assert from_nvml.gpus[0] == from_smi.gpus[0]
    assert from_nvml.driver == from_smi.driver


def test_h100_with_old_driver_fails_on_the_driver_only() -> None:
    checks = by_name(pf.run_preflight(CUDA_128, readers(smi_text=smi("h100-old-driver"))))
    assert checks["docker engine"].status == "PASS"
    assert checks["nvidia runtime"].status == "PASS"
    driver = checks["nvidia driver"]
    assert driver.status == "FAIL"
    assert "535.104.05 is older than 570.26" in driver.reason and "CUDA 12.8" in driver.reason
    assert driver.fix and ">= 570.26" in driver.fix
    assert checks["gpu 0"].status == "PASS" and "sm_90" in checks["gpu 0"].reason
    # The same host is fine for a CUDA 12.1 image (minimum 530.30.02) but not for 12.4 (550.54.14).
    cuda_121 = pf.ImageRequirements(cuda="12.1", min_driver="530.30.02", arch_list=CUDA_124.arch_list)
    host = readers(smi_text=smi("h100-old-driver"))
    assert by_name(pf.run_preflight(cuda_121, host))["nvidia driver"].status == "PASS"
    assert by_name(pf.run_preflight(CUDA_124, host))["nvidia driver"].status == "FAIL"


def test_nvml_is_preferred_over_nvidia_smi() -> None:
    checks = by_name(
        pf.run_preflight(CUDA_128, readers(nvml_record=nvml("h100-old-driver"), smi_text=smi("a100")))
    )
    assert "(nvml)" not in checks["nvidia driver"].reason  # FAIL text names the driver instead
    assert "535.104.05" in checks["nvidia driver"].reason
    assert "gpu 1" not in checks  # the NVML record has one GPU, the A100 CSV four


def test_a100_host_passes() -> None:
    checks = pf.run_preflight(CUDA_128, readers(smi_text=smi("a100")))
    assert [c.status for c in checks] == ["PASS"] * len(checks)
    names = [c.name for c in checks]
    assert names == [
        "docker engine",
        "nvidia runtime",
        "nvidia driver",
        "gpu 0",
        "gpu 1",
        "gpu 2",
        "gpu 3",
        "disk",
    ]
    assert "NVIDIA A100-SXM4-80GB, 81920 MiB, sm_80" in by_name(checks)["gpu 0"].reason


@pytest.mark.parametrize("source", ["smi", "nvml"])
def test_blackwell_with_a_cuda_124_image_has_no_kernel_image(source: str) -> None:
    host = (
        readers(smi_text=smi("blackwell-rtx5090"))
        if source == "smi"
        else readers(nvml_record=nvml("blackwell-rtx5090"))
    )
    checks = by_name(pf.run_preflight(CUDA_124, host))
    gpu = checks["gpu 0"]
    assert gpu.status == "FAIL"
    assert "sm_120" in gpu.reason and "no kernel image" in gpu.reason
    assert gpu.fix and "sm_120" in gpu.fix
    assert checks["nvidia driver"].status == "PASS"
    assert by_name(pf.run_preflight(CUDA_128, host))["gpu 0"].status == "PASS"


def test_missing_nvidia_runtime_names_it_and_the_fix() -> None:
    checks = by_name(pf.run_preflight(CUDA_128, readers(info=ENGINE_WITHOUT_NVIDIA, smi_text=smi("a100"))))
    runtime = checks["nvidia runtime"]
    assert runtime.status == "FAIL"
    assert "NVIDIA container runtime not found" in runtime.reason
    assert "io.containerd.runc.v2, runc" in runtime.reason
    assert runtime.fix and "NVIDIA Container Toolkit" in runtime.fix and "restart dockerd" in runtime.fix


def test_runtime_found_through_cdi_or_the_hook() -> None:
    cdi = readers(info=ENGINE_WITHOUT_NVIDIA, smi_text=smi("a100"), files={"/etc/cdi": ["nvidia.yaml"]})
    check = by_name(pf.run_preflight(CUDA_128, cdi))["nvidia runtime"]
    assert check.status == "PASS" and "/etc/cdi/nvidia.yaml" in check.reason
    info = dict(ENGINE_WITHOUT_NVIDIA, CDISpecDirs=["/opt/cdi"])
    custom = readers(info=info, smi_text=smi("a100"), files={"/opt/cdi": ["nvidia-gpus.json"]})
    assert by_name(pf.run_preflight(CUDA_128, custom))["nvidia runtime"].status == "PASS"
    hook = readers(
        info=ENGINE_WITHOUT_NVIDIA, smi_text=smi("a100"), hook="/usr/bin/nvidia-container-runtime-hook"
    )
    assert by_name(pf.run_preflight(CUDA_128, hook))["nvidia runtime"].status == "PASS"


def test_no_driver_at_all() -> None:
    driver = by_name(pf.run_preflight(CUDA_128, readers()))["nvidia driver"]
    assert driver.status == "FAIL" and "no NVIDIA GPU or driver" in driver.reason
    assert driver.fix and "--cpu" in driver.fix


def test_cpu_mode_skips_gpu_checks() -> None:
    checks = pf.run_preflight(CUDA_128, readers(info=ENGINE_WITHOUT_NVIDIA), cpu=True)
    assert [(c.name, c.status) for c in checks] == [
        ("docker engine", "PASS"),
        ("gpu", "SKIP"),
        ("disk", "PASS"),
    ]


def test_unreachable_engine_fails_with_its_hint() -> None:
    checks = by_name(pf.run_preflight(CUDA_128, readers(engine_down=True, smi_text=smi("a100"))))
    assert checks["docker engine"].status == "FAIL" and checks["docker engine"].fix == "start one"
    assert checks["nvidia runtime"].status == "SKIP"


def test_native_mode_needs_no_engine() -> None:
    checks = by_name(
        pf.run_preflight(pf.ImageRequirements(), readers(engine_down=True, smi_text=smi("a100")), native=True)
    )
    assert checks["docker engine"].status == "SKIP"
    assert "nvidia runtime" not in checks
    # Without labels the driver and arch cannot be judged: warnings, not failures.
    assert checks["nvidia driver"].status == "WARN" and checks["gpu 0"].status == "WARN"


def test_too_many_gpus_requested() -> None:
    checks = by_name(pf.run_preflight(CUDA_128, readers(smi_text=smi("blackwell-rtx5090")), gpus_wanted=2))
    assert (
        checks["gpu count"].status == "FAIL"
        and "2 GPUs requested, the host has 1" in checks["gpu count"].reason
    )


def test_disk_space() -> None:
    low = by_name(pf.run_preflight(CUDA_128, readers(smi_text=smi("a100"), free=100 * 2**20)))["disk"]
    assert low.status == "FAIL" and "0.1 GiB free" in low.reason
    tight = by_name(pf.run_preflight(CUDA_128, readers(smi_text=smi("a100"), free=2**30)))["disk"]
    assert tight.status == "WARN" and "only 1.0 GiB free" in tight.reason
    # An image that is not on the engine yet must fit as well.
    absent = pf.ImageRequirements(size_bytes=8 * 2**30, present_locally=False)
    assert pf.check_disk(".", absent, readers(free=8 * 2**30)).status == "FAIL"
    assert pf.check_disk(".", absent, readers(free=9 * 2**30)).status == "WARN"
    assert pf.check_disk(".", absent, readers(free=13 * 2**30)).status == "PASS"


def test_version_ordering() -> None:
    assert pf.version_tuple("535.104.05") < pf.version_tuple("570.26")
    assert pf.version_tuple("570.133.20") > pf.version_tuple("570.26")
    assert pf.version_tuple("1.41") >= (1, 40)
