"""envkit verify against the real engine (which has no NVIDIA runtime here) and a real image.

The image is the session's shared build of pytorch-cuda:2.8 (tests/conftest.py), or
ENVKIT_TEST_IMAGE when set (an image already on the engine; a missing one fails these tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from envkit.errors import GpuHostNotReady
from envkit.verify import runner

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def engine_without_nvidia(docker_client: docker.DockerClient) -> None:
    runtimes = docker_client.info().get("Runtimes") or {}
    if any("nvidia" in name for name in runtimes):
        pytest.fail("these tests expect an engine without the NVIDIA runtime (the CI engine)")


def leftovers(client: docker.DockerClient, run_id: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"{runner.LABEL_VERIFY_RUN}={run_id}"})
    return [c.id for c in found]


def envkit(
    *args: str, env: dict[str, str] | None = None, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "envkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def verify_json(
    image: str, tmp_path: Path, *flags: str, timeout: int = 900
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``envkit verify IMAGE FLAGS --json FILE``: the process and the report it wrote."""
    report_path = tmp_path / "r.json"
    proc = envkit("verify", image, *flags, "--json", str(report_path), timeout=timeout)
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return proc, report


def test_gpu_device_request_names_the_missing_runtime(
    docker_client: docker.DockerClient, image: str, engine_without_nvidia: None
) -> None:
    executor = runner.ContainerExecutor(docker_client, image, gpus=None, cpu=False, run_id="gpu-request-test")
    with pytest.raises(GpuHostNotReady) as caught:
        executor.run("probe.py", [], timeout_s=120)
    assert caught.value.exit_code == 7
    assert "NVIDIA container runtime not found" in caught.value.message
    assert caught.value.hint and "NVIDIA Container Toolkit" in caught.value.hint
    assert "could not select device driver" in (caught.value.details or "")
    assert leftovers(docker_client, "gpu-request-test") == []


def test_cli_without_cpu_exits_7(image: str, engine_without_nvidia: None, tmp_path: Path) -> None:
    proc, report = verify_json(image, tmp_path, timeout=300)
    assert proc.returncode == 7, proc.stderr
    assert "NVIDIA container runtime not found" in proc.stderr
    assert report["verdict"]["exit_code"] == 7 and report["bench"] is None


def test_hung_benchmark_is_killed_and_its_container_removed(
    docker_client: docker.DockerClient, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVKIT_BENCH_HANG", "start")
    options = runner.VerifyOptions(target=image, cpu=True, timeout_s=90)
    report = runner.verify(options)
    assert report.timed_out
    assert report.verdict and report.verdict.exit_code == 8
    assert report.probe is not None and report.probe.numerics_ok  # the partial report is kept
    assert "hanging on purpose" in (report.log_tail or "")
    assert leftovers(docker_client, report.options["run_id"]) == []


def test_cpu_verify_passes_with_both_workloads(image: str, tmp_path: Path) -> None:
    proc, report = verify_json(image, tmp_path, "--cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["verdict"]["status"] == "pass"
    assert report["probe"]["numerics_ok"] is True
    assert report["mode"] == "container"
    workloads = {w["name"]: w for w in report["bench"]["workloads"]}
    assert set(workloads) == {"resnet50", "yolo"}
    for work in workloads.values():
        rates = [r["images_per_s"] for r in work["rungs"] if r["status"] == "ok"]
        assert rates and min(rates) > 0


def test_cpu_ddp_over_gloo_in_the_container(image: str, tmp_path: Path) -> None:
    """--gpus 2 with --cpu: torchrun with two gloo processes inside one container (no network)."""
    proc, report = verify_json(image, tmp_path, "--cpu", "--gpus", "2", "--workload", "resnet50", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist = report["bench_ddp"]["distributed"]
    assert dist["backend"] == "gloo" and dist["world_size"] == 2
    item = dist["workloads"][0]
    assert item["scaling_efficiency"] > 0 and item["ddp_images_per_s"] > 0
    assert dist["allreduce"]["busbw_gb_s"] > 0


def test_cpu_verify_with_compile_runs_the_compile_rung(image: str, tmp_path: Path) -> None:
    """Every image carries g++, gcc and the Python headers, so Inductor builds its CPU kernels and
    the compile rung really runs (it was skipped, with the reason, before the images had them)."""
    proc, report = verify_json(image, tmp_path, "--cpu", "--compile", "--workload", "resnet50", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["verdict"]["status"] == "pass"
    (work,) = report["bench"]["workloads"]
    rungs = {r["name"]: r for r in work["rungs"]}
    assert rungs["compile"]["status"] == "ok", rungs["compile"]
    assert rungs["compile"]["images_per_s"] > 0
