"""verify() end to end with a fake Docker client, a fake executor, and the real native executor."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from envkit.cli.verify import parse_gpus, parse_workloads
from envkit.cli.verify import verify_cmd as verify_command
from envkit.errors import GpuHostNotReady, UsageError, VerificationFailed
from envkit.incontainer.probe import EVENT_PREFIX, SCRIPT_FILES
from envkit.verify import preflight as pf
from envkit.verify import runner
from envkit.verify.report import VerifyReport, render
from tests.fakes import FakeClient, FakeImage

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gpu"
LABELS = {
    "io.envkit.torch": "2.8.0",
    "io.envkit.cuda": "12.8",
    "io.envkit.min-driver": "570.26",
    "io.envkit.arch-list": "sm_75,sm_80,sm_86,sm_90,sm_100,sm_120",
}


def gpu_host(nvidia_runtime: bool = True, smi_name: str = "a100") -> pf.HostReaders:
    runtimes = {"runc": {}, **({"nvidia": {}} if nvidia_runtime else {})}
    return pf.HostReaders(
        docker_version=lambda: {"Version": "24.0.7", "ApiVersion": "1.43"},
        docker_info=lambda: {"Runtimes": runtimes},
        nvml=lambda: None,
        nvidia_smi=lambda: (FIXTURES / f"{smi_name}.nvidia-smi.csv").read_text(),
        which=lambda name: None,
        disk_free=lambda path: 500 * 2**30,
        list_dir=lambda path: [],
    )


# --------------------------------------------------------------------------- fake docker


def verify_client(
    outputs: dict[str, tuple[str, str]] | None = None,
    *,
    start_error: str | None = None,
    hang: tuple[str, ...] = (),
    ddp_outputs: dict[str, tuple[str, str]] | None = None,
) -> FakeClient:
    """An engine holding one labelled image, whose containers print `outputs` per script
    (`ddp_outputs` for the torchrun container)."""
    image = FakeImage("sha256:" + "ab" * 32, labels=LABELS)
    return FakeClient({"envkit/pytorch-cuda:2.8": image}, outputs=outputs, ddp_outputs=ddp_outputs,
                      start_error=start_error, hang=hang)


# --------------------------------------------------------------------------- canned documents


def probe_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "envkit.probe/1",
        "ok": True,
        "torch": "2.8.0+cu128",
        "torch_cuda": "12.8",
        "torch_git": "x",
        "cudnn": 91002,
        "nccl": "2.27.3",
        "torchvision": "0.23.0",
        "python": "3.11.2",
        "platform": "Linux",
        "cuda_available": True,
        "cuda_error": None,
        "device_count": 1,
        "devices": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "capability": "sm_90",
                "total_memory_bytes": 85520809984,
                "multi_processor_count": 132,
                "arch_supported": True,
                "arch_reason": "sm_90 cubin",
            }
        ],
        "arch_list": ["sm_80", "sm_90"],
        "numerics": [
            {
                "op": "matmul",
                "precision": "fp32",
                "device": "cuda:0",
                "tolerance": 1e-4,
                "rel_error": 2e-7,
                "finite": True,
                "ok": True,
                "error": None,
            }
        ],
        "numerics_ok": True,
        "elapsed_s": 1.0,
    }
    doc.update(overrides)
    return doc


def rung(name: str, rate: float, *, amp: bool = True, status: str = "ok") -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "reason": None,
        "settings": {
            "tf32": True,
            "amp_bf16": amp,
            "channels_last": name == "channels_last",
            "compile": False,
        },
        "images_per_s": rate,
        "step_ms_median": 256_000 / rate,
        "step_ms_p10": 1.0,
        "step_ms_p90": 2.0,
        "peak_memory_bytes": 10,
        "tflops": 24.5e9 * rate / 1e12,
        "speedup": 1.0,
        "loss_first": 7.0,
        "loss_last": 6.9,
        "compile_s": None,
    }


def bench_doc(resnet_rate: float, device: str = "NVIDIA H100 80GB HBM3") -> dict[str, Any]:
    def work(name: str, rate: float, size: int) -> dict[str, Any]:
        return {
            "name": name,
            "impl": "builtin",
            "batch_size": 256,
            "image_size": size,
            "steps": 30,
            "warmup_steps": 10,
            "flops_forward_per_image": int(8.17e9),
            "flops_per_image": int(24.5e9),
            "rungs": [rung("fp32", rate / 4, amp=False), rung("amp_bf16", rate)],
            "error": None,
        }

    return {
        "schema": "envkit.bench/1",
        "ok": True,
        "torch": "2.8.0",
        "torch_cuda": "12.8",
        "cudnn": 91002,
        "python": "3.11.2",
        "device": {
            "type": "cuda",
            "name": device,
            "capability": "sm_90",
            "total_memory_bytes": 85520809984,
            "count": 1,
        },
        "threads": 16,
        "seed": 0,
        "world_size": 1,
        "cpu_mode": False,
        "workloads": [work("resnet50", resnet_rate, 224), work("yolo", 900.0, 640)],
        "distributed": None,
        "errors": [],
    }


def outputs(
    probe: dict[str, Any] | None = None, bench: dict[str, Any] | None = None, bench_err: str = ""
) -> dict[str, tuple[str, str]]:
    return {
        "probe.py": (json.dumps(probe or probe_doc()), ""),
        "bench.py": (json.dumps(bench or bench_doc(3000.0)), bench_err),
    }


def run_fake(
    client: FakeClient, *, cpu: bool = False, host: pf.HostReaders | None = None, **opts: Any
) -> VerifyReport:
    options = runner.VerifyOptions(target="envkit/pytorch-cuda:2.8", cpu=cpu, **opts)
    return runner.verify(options, client_factory=lambda: client, readers=host or gpu_host())


# --------------------------------------------------------------------------- container path


def test_healthy_gpu_host_passes_and_reports_everything() -> None:
    client = verify_client(outputs())
    report = run_fake(client)
    assert report.verdict and report.verdict.exit_code == 0, report.verdict
    assert report.target.cuda == "12.8" and report.target.source == "labels"
    assert report.probe and report.probe.nccl == "2.27.3"
    # Peak share comes from the H100 reference data: 3000 img/s x 24.5 GFLOP = 73.5 TFLOP/s of 989.4.
    amp = report.bench.workloads[0].rungs[1]
    assert amp.peak_share == pytest.approx(73.5 / 989.4, rel=1e-3)
    gating = [c for c in report.comparisons if c.gating]
    assert [c.status for c in gating] == ["PASS"] and gating[0].reference_images_per_s == 2616
    # Every container: GPU request, probe scripts copied in, removed afterwards.
    assert len(client.created) == 2
    for container in client.created:
        assert container.removed
        request = container.kwargs["device_requests"][0]
        assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
        assert container.kwargs["network_mode"] == "none"
        # No network means no /etc/hosts line for a random container name; torchrun resolves it.
        assert container.kwargs["hostname"] == "localhost"
        assert container.archives and container.archives[0][0] == runner.CONTAINER_PROBE_PARENT
    assert render(report)  # the tables build without error
    assert json.loads(report.to_json())["schema_version"] == 1


def test_slow_gpu_fails_against_the_reference() -> None:
    client = verify_client(outputs(bench=bench_doc(1000.0)))
    report = run_fake(client)
    assert report.verdict and report.verdict.exit_code == VerificationFailed.exit_code
    assert any("1000 images/s is below 70% of 2616" in r for r in report.verdict.reasons)


def test_a_failed_rung_fails_the_run() -> None:
    doc = bench_doc(3000.0)
    doc["ok"] = False
    doc["workloads"][1]["rungs"][1] = dict(
        rung("amp_bf16", 1.0), status="error", reason="the loss is not finite (nan): numerics are broken"
    )
    report = run_fake(verify_client(outputs(bench=doc)))
    assert report.verdict and report.verdict.exit_code == 8
    assert "yolo amp_bf16: the loss is not finite (nan): numerics are broken" in report.verdict.reasons


def test_no_reference_for_an_unknown_gpu_means_no_comparison() -> None:
    report = run_fake(verify_client(outputs(bench=bench_doc(10.0, device="NVIDIA L4"))))
    assert report.comparisons == [] and report.verdict and report.verdict.exit_code == 0


def test_could_not_select_device_driver_is_exit_7_with_the_fix() -> None:
    client = verify_client(start_error='could not select device driver "" with capabilities: [[gpu]]')
    report = run_fake(client)
    verdict = report.verdict
    assert verdict and verdict.exit_code == GpuHostNotReady.exit_code
    assert "NVIDIA container runtime not found" in verdict.summary
    assert verdict.fix and "NVIDIA Container Toolkit" in verdict.fix and "restart dockerd" in verdict.fix
    assert client.created and all(c.removed for c in client.created)


def test_unsatisfied_cuda_condition_is_a_driver_too_old() -> None:
    message = (
        "failed to create shim: OCI runtime create failed: nvidia-container-cli: requirement error: "
        "unsatisfied condition: cuda>=12.8, please update your driver to a newer version"
    )
    report = run_fake(verify_client(start_error=message))
    assert report.verdict and report.verdict.exit_code == 7
    assert "too old for CUDA 12.8" in report.verdict.summary
    assert report.verdict.fix and ">= 570.26" in report.verdict.fix


def test_preflight_failure_stops_before_any_container() -> None:
    client = verify_client(outputs())
    report = run_fake(client, host=gpu_host(nvidia_runtime=False))
    assert report.verdict and report.verdict.exit_code == 7
    assert "NVIDIA container runtime not found" in report.verdict.summary
    assert client.created == []


def test_old_driver_fixture_is_exit_7() -> None:
    report = run_fake(verify_client(outputs()), host=gpu_host(smi_name="h100-old-driver"))
    assert report.verdict and report.verdict.exit_code == 7
    assert "535.104.05 is older than 570.26" in report.verdict.summary


def test_missing_architecture_fixture_is_exit_7_before_any_container() -> None:
    """A Blackwell card (sm_120) and an image built like torch 2.6 + CUDA 12.4 (up to sm_90)."""
    client = verify_client(outputs())
    client.images.images["envkit/pytorch-cuda:2.8"] = FakeImage(
        "sha256:" + "ab" * 32,
        labels=dict(
            LABELS,
            **{
                "io.envkit.cuda": "12.4",
                "io.envkit.min-driver": "550.54.14",
                "io.envkit.arch-list": "sm_50,sm_60,sm_70,sm_75,sm_80,sm_86,sm_90",
            },
        )
    )
    report = run_fake(client, host=gpu_host(smi_name="blackwell-rtx5090"))
    assert report.verdict and report.verdict.exit_code == 7
    assert "NVIDIA GeForce RTX 5090 is sm_120" in report.verdict.summary
    assert "no kernel image" in report.verdict.summary
    assert client.created == []


def test_torch_without_cuda_is_exit_7() -> None:
    doc = probe_doc(
        torch="2.8.0+cpu",
        torch_cuda=None,
        cuda_available=False,
        device_count=0,
        devices=[],
        cuda_error="torch was built without CUDA (a CPU-only wheel)",
        ok=False,
    )
    report = run_fake(verify_client(outputs(probe=doc)))
    assert report.verdict and report.verdict.exit_code == 7
    assert "built without CUDA" in report.verdict.summary


def test_driver_too_old_seen_by_torch_is_exit_7() -> None:
    doc = probe_doc(
        cuda_available=False,
        device_count=0,
        devices=[],
        ok=False,
        cuda_error="The NVIDIA driver on your system is too old (found version 12020).",
    )
    report = run_fake(verify_client(outputs(probe=doc)))
    assert report.verdict and report.verdict.exit_code == 7 and "driver is too old" in report.verdict.summary


def test_missing_architecture_is_exit_7() -> None:
    device = dict(
        probe_doc()["devices"][0],
        name="NVIDIA GeForce RTX 5090",
        capability="sm_120",
        arch_supported=False,
        arch_reason="no cubin or PTX in the image runs on sm_120",
    )
    numerics = [
        dict(
            probe_doc()["numerics"][0],
            ok=False,
            rel_error=None,
            finite=None,
            error="RuntimeError: CUDA error: no kernel image is available for execution on the device",
        )
    ]
    report = run_fake(verify_client(outputs(probe=probe_doc(devices=[device], numerics=numerics, ok=False))))
    assert report.verdict and report.verdict.exit_code == 7
    assert "no kernel image for NVIDIA GeForce RTX 5090 (sm_120)" in report.verdict.summary


def test_nan_numerics_is_exit_8() -> None:
    numerics = [dict(probe_doc()["numerics"][0], ok=False, rel_error=None, finite=False)]
    report = run_fake(verify_client(outputs(probe=probe_doc(numerics=numerics, ok=False, numerics_ok=False))))
    assert (
        report.verdict and report.verdict.exit_code == 8 and report.verdict.summary == "numerics check failed"
    )


def test_hung_benchmark_is_killed_removed_and_the_partial_report_kept() -> None:
    partial = EVENT_PREFIX + json.dumps({"event": "rung", "workload": "resnet50", "rung": rung("fp32", 5.0)})
    client = verify_client(outputs(bench_err=f"[bench] starting\n{partial}\n"), hang=("bench.py",))
    report = run_fake(client, cpu=True, timeout_s=5)
    assert report.timed_out
    assert report.verdict and report.verdict.exit_code == 8 and "container removed" in report.verdict.summary
    assert report.probe is not None  # what came before the hang is kept
    assert report.bench_partial and report.bench_partial[0]["rung"]["name"] == "fp32"
    assert client.killed == ["bench.py"] and all(c.removed for c in client.created)
    assert client.created[-1].kwargs["device_requests"] == []  # --cpu asks for no GPU


def test_unknown_image_is_a_usage_error_after_preflight() -> None:
    options = runner.VerifyOptions(target="envkit/nope:1", cpu=True)
    with pytest.raises(UsageError, match="not on this engine"):
        runner.verify(options, client_factory=lambda: verify_client(), readers=gpu_host())


def test_probe_archive_holds_the_scripts_readable_by_anyone() -> None:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(runner.probe_archive())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"envkit-probe"} | {f"envkit-probe/{name}" for name in SCRIPT_FILES}
    assert all(m.mode & 0o004 for m in members.values())


def test_raise_for_verdict_maps_exit_codes() -> None:
    report = run_fake(verify_client(outputs()), host=gpu_host(nvidia_runtime=False))
    with pytest.raises(GpuHostNotReady) as caught:
        runner.raise_for_verdict(report)
    assert caught.value.exit_code == 7
    report = run_fake(verify_client(outputs(bench=bench_doc(100.0))))
    with pytest.raises(VerificationFailed):
        runner.raise_for_verdict(report)


# --------------------------------------------------------------------------- native path (real processes)


def test_native_hang_hook_is_killed_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVKIT_BENCH_HANG", "start")
    started = time.monotonic()
    result = runner.NativeExecutor().run("bench.py", ["--cpu"], timeout_s=20)
    assert result.timed_out and result.exit_code is None
    assert "hanging on purpose" in result.stderr
    assert time.monotonic() - started < 60


def test_native_cpu_only_torch_with_a_gpu_expected_is_exit_7() -> None:
    if torch.version.cuda is not None:
        pytest.skip("needs a CPU-only torch in this environment")
    options = runner.VerifyOptions(target=None, native=True, workloads=("resnet50",), timeout_s=300)
    report = runner.verify(options, readers=gpu_host())
    assert report.verdict and report.verdict.exit_code == 7
    assert "built without CUDA" in report.verdict.summary
    assert report.bench is None  # no benchmark once the probe says the GPU cannot be used


def test_native_ddp_over_gloo_reports_scaling() -> None:
    args = [
        "--cpu",
        "--workload",
        "resnet50",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch-size",
        "2",
        "--image-size",
        "32",
    ]
    result = runner.NativeExecutor().run("bench.py", args, timeout_s=300, nproc=2)
    if result.exit_code != 0 and "exitcode: -6" in result.stderr:
        # Seen once in a full suite run on a 2-core machine: gloo aborted rank 0 (SIGABRT) during
        # start-up and passed on every rerun. One retry keeps that known intermittent abort from
        # failing the suite; a second failure, or any other failure, still fails the test.
        result = runner.NativeExecutor().run("bench.py", args, timeout_s=300, nproc=2)
    assert result.exit_code == 0, result.stderr[-2000:]
    bench = runner._parse(runner.BenchResult, result.stdout)
    dist = bench.distributed
    assert dist and dist.backend == "gloo" and dist.world_size == 2
    item = dist.workloads[0]
    assert item.single_images_per_s and item.ddp_images_per_s and item.scaling_efficiency
    assert item.scaling_efficiency == pytest.approx(item.ddp_images_per_s / (2 * item.single_images_per_s))
    assert dist.allreduce.busbw_gb_s > 0


# --------------------------------------------------------------------------- CLI


def test_cli_option_parsing() -> None:
    assert parse_gpus("all") is None and parse_gpus("2") == 2
    with pytest.raises(UsageError):
        parse_gpus("0")
    assert parse_workloads("yolo,resnet50,yolo") == ("yolo", "resnet50")
    with pytest.raises(UsageError):
        parse_workloads("bert")


def test_cli_writes_the_report_then_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    failing = run_fake(verify_client(outputs()), host=gpu_host(nvidia_runtime=False))
    seen: list[runner.VerifyOptions] = []

    def fake_verify(options: runner.VerifyOptions, **_: Any) -> VerifyReport:
        seen.append(options)
        return failing

    monkeypatch.setattr("envkit.cli.verify.run_verify", fake_verify)
    target = tmp_path / "r.json"
    result = CliRunner().invoke(
        verify_command,
        ["pytorch-cuda:2.8", "--gpus", "2", "--workload", "yolo", "--json", str(target), "--timeout", "30"],
    )
    assert isinstance(result.exception, GpuHostNotReady)
    assert json.loads(target.read_text())["verdict"]["exit_code"] == 7
    assert seen[0].gpus == 2 and seen[0].workloads == ("yolo",) and seen[0].timeout_s == 30


# --------------------------------------------------------------------------- healthy GPUs of every kind


def _two_gpu_probe() -> dict[str, Any]:
    device = probe_doc()["devices"][0]
    return probe_doc(device_count=2, devices=[device, dict(device, index=1)])


def _ddp_doc(
    *, ok: bool = True, rate: float | None = 5000.0, errors: list[str] | None = None
) -> dict[str, Any]:
    doc = bench_doc(3000.0)
    doc.update(ok=ok, world_size=2, errors=errors or [])
    doc["workloads"] = [dict(doc["workloads"][0], rungs=[rung("amp_bf16", rate or 1.0)])]
    doc["distributed"] = {
        "backend": "nccl",
        "world_size": 2,
        "workloads": [
            {
                "workload": "resnet50",
                "rung": "amp_bf16",
                "batch_per_process": 256,
                "single_images_per_s": 3000.0,
                "ddp_images_per_s": rate,
                "scaling_efficiency": rate / 6000.0 if rate else None,
            }
        ],
        "allreduce": {"bytes": 2**28, "time_ms": 5.0, "algbw_gb_s": 50.0, "busbw_gb_s": 50.0},
    }
    return doc


def _run_ddp(ddp_stdout: str, ddp_stderr: str = "") -> VerifyReport:
    client = verify_client(
        outputs(probe=_two_gpu_probe()),
        ddp_outputs={"bench.py": (ddp_stdout, ddp_stderr)},
    )
    return run_fake(client, workloads=("resnet50",))


def test_healthy_ddp_run_passes_and_gets_a_collective_timeout() -> None:
    client = verify_client(
        outputs(probe=_two_gpu_probe()), ddp_outputs={"bench.py": (json.dumps(_ddp_doc()), "")}
    )
    report = run_fake(client, workloads=("resnet50",), timeout_s=1800)
    assert report.verdict and report.verdict.exit_code == 0, report.verdict
    ddp_command = client.created[-1].command
    assert "--nproc_per_node=2" in ddp_command
    assert ddp_command[ddp_command.index("--dist-timeout") + 1] == "600"


def test_failed_ddp_run_fails_the_verdict() -> None:
    doc = _ddp_doc(ok=False, errors=["resnet50: RuntimeError: NCCL error: unhandled system error"])
    doc["workloads"][0]["rungs"] = [dict(rung("amp_bf16", 1.0), status="error", reason="rank 1: loss is nan")]
    report = _run_ddp(json.dumps(doc))
    assert report.verdict and report.verdict.exit_code == VerificationFailed.exit_code
    reasons = report.verdict.reasons
    assert "multi-process benchmark: resnet50: RuntimeError: NCCL error: unhandled system error" in reasons
    assert "multi-process benchmark: resnet50 amp_bf16: rank 1: loss is nan" in reasons


def test_ddp_run_without_throughput_fails() -> None:
    report = _run_ddp(json.dumps(_ddp_doc(rate=None)))
    assert report.verdict and report.verdict.exit_code == 8
    assert any("resnet50: no DDP throughput measured" in r for r in report.verdict.reasons)


def test_ddp_rank_error_is_the_reason_when_no_report_comes() -> None:
    event = {
        "event": "rank_error",
        "rank": 1,
        "workload": "resnet50",
        "rung": "amp_bf16",
        "reason": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    }
    report = _run_ddp("", f"[bench] starting\n{EVENT_PREFIX}{json.dumps(event)}\n")
    assert report.verdict and report.verdict.exit_code == 8
    assert report.verdict.reasons == [
        "multi-process benchmark: rank 1 failed in resnet50 amp_bf16: "
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    ]


def test_mig_slice_is_measured_against_its_share() -> None:
    """A 1g.10gb slice of an H100 has 16 of 132 SMs: a fraction of the whole card's images/s is
    healthy, and its share of peak is taken against the slice's share of the peak."""
    doc = bench_doc(300.0, device="NVIDIA H100 80GB HBM3 MIG 1g.10gb")
    doc["device"]["multi_processor_count"] = 16
    doc["device"]["total_memory_bytes"] = 10_200_547_328
    device = dict(probe_doc()["devices"][0], name="NVIDIA H100 80GB HBM3 MIG 1g.10gb")
    report = run_fake(verify_client(outputs(probe=probe_doc(devices=[device]), bench=doc)))
    assert report.verdict and report.verdict.exit_code == 0, report.verdict
    amp = report.bench.workloads[0].rungs[1]
    assert amp.peak_share == pytest.approx((300 * 24.5e9 / 1e12) / (989.4 * 16 / 132), rel=1e-3)
    (gating,) = [c for c in report.comparisons if c.source.startswith("Lambda")]
    assert gating.gating is False and gating.status == "SKIP"
    assert gating.reference_images_per_s == pytest.approx(2616 * 16 / 132)
    assert gating.note and "MIG slice 1g.10gb" in gating.note
    assert render(report)


def test_newer_gpus_get_a_share_of_peak() -> None:
    for name, peak in [("NVIDIA H200", 989.5), ("NVIDIA GH200 480GB", 989.5), ("NVIDIA H100 NVL", 835.5)]:
        report = run_fake(verify_client(outputs(bench=bench_doc(3000.0, device=name))))
        assert report.verdict and report.verdict.exit_code == 0, (name, report.verdict)
        amp = report.bench.workloads[0].rungs[1]
        assert amp.peak_share == pytest.approx(73.5 / peak, rel=1e-3), name


def test_fp16_rung_is_measured_against_the_fp16_peak() -> None:
    doc = bench_doc(400.0, device="Tesla T4")
    doc["workloads"][0]["rungs"][1]["settings"].update(amp_bf16=False, amp_fp16=True)
    report = run_fake(verify_client(outputs(bench=doc)))
    amp = report.bench.workloads[0].rungs[1]
    assert amp.peak_share == pytest.approx((400 * 24.5e9 / 1e12) / 65, rel=1e-3)


def test_native_ddp_rank_failure_ends_fast_with_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 raises in its rung: it reports why and exits; torchrun stops rank 0, which would
    otherwise wait in a collective. No stage timeout, and the cause reaches the verdict."""
    monkeypatch.setenv("ENVKIT_BENCH_FAIL_RANK", "1")
    args = ["--cpu", "--workload", "resnet50", "--steps", "1", "--warmup", "0", "--batch-size", "2"]
    args += ["--image-size", "32", "--dist-timeout", "120"]
    result = runner.NativeExecutor().run("bench.py", args, timeout_s=240, nproc=2)
    assert not result.timed_out and result.exit_code != 0
    problems = runner.diagnose_ddp(result, None, ("resnet50",))
    assert any("rank 1 failed in resnet50" in p and "injected failure on rank 1" in p for p in problems), (
        problems
    )


def test_script_progress_reaches_the_cli_as_log_events(tmp_path: Path) -> None:
    """The probe's and benchmark's stderr lines reach ``show`` as the one progress Event type."""
    from envkit.events import Event

    script = tmp_path / "talk.py"
    script.write_text("import sys\nprint('[bench] resnet50 fp32 step 1', file=sys.stderr)\nprint('{}')\n")
    seen: list[Event] = []
    executor = runner.NativeExecutor()
    result = executor.launch([str(script)], timeout_s=60, distributed=False, show=seen.append)
    assert result.exit_code == 0
    assert seen == [Event("log", "[bench] resnet50 fp32 step 1")]
