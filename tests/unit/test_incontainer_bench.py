"""The benchmark: model shapes and FLOPs, the detection loss, the ladder's JSON document."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout

import pytest
import torch

from envkit.incontainer import probe as probe_pkg
from envkit.incontainer.probe import bench, models
from envkit.verify.report import BenchResult, RungResult

# REFERENCE.md section 5: ResNet50 at 224 is 8.2 GFLOP forward, about 24.5 GFLOP per training
# image; YOLOv8s at 640 is 28.6 GFLOP forward.
RESNET50_TRAIN_GFLOP = 24.5
YOLOV8S_FORWARD_GFLOP = 28.6


def test_resnet50_flops_match_the_published_figure() -> None:
    forward = bench.count_forward_flops(models.ResNet50, 224)
    assert 3 * forward / 1e9 == pytest.approx(RESNET50_TRAIN_GFLOP, rel=0.01)


def test_yolov8s_matches_the_published_model() -> None:
    forward = bench.count_forward_flops(models.YoloV8s, 640)
    assert forward / 1e9 == pytest.approx(YOLOV8S_FORWARD_GFLOP, rel=0.01)
    # ultralytics reports 11,166,560 parameters for yolov8s.yaml; it counts the DFL layer's 16
    # fixed weights, which the built-in loss keeps outside the model.
    params = sum(p.numel() for p in models.YoloV8s().parameters())
    assert params == 11_166_560 - 16
    with torch.device("meta"):
        outputs = models.YoloV8s()(torch.empty(2, 3, 640, 640))
    assert [tuple(o.shape) for o in outputs] == [(2, 144, 80, 80), (2, 144, 40, 40), (2, 144, 20, 20)]


def test_assignment_picks_anchors_inside_the_box_that_predict_it() -> None:
    loss = models.DetectionLoss(nc=3, topk=2)
    # Four anchors in a row at x = 4, 12, 20, 28 (stride 8), one gt box over the first two.
    anchors = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])
    gt = torch.tensor([[[0.0, 0.0, 16.0, 8.0]]])
    pboxes = torch.tensor(
        [[[0.0, 0.0, 16.0, 8.0], [1.0, 0.0, 15.0, 8.0], [0.0, 0.0, 16.0, 8.0], [16.0, 0.0, 32.0, 8.0]]]
    )
    scores = torch.full((1, 4, 3), 0.5)
    target_boxes, target_scores, fg = loss.assign(
        scores, pboxes, anchors, torch.tensor([[2]]), gt, torch.tensor([[True]])
    )
    # Anchor 2 predicts the box perfectly but its centre lies outside it: never assigned.
    assert fg.tolist() == [[True, True, False, False]]
    assert torch.equal(target_boxes[0, 0], gt[0, 0])
    assert target_scores[0, 0].argmax().item() == 2
    assert target_scores[0, 0, 2].item() == pytest.approx(1.0, abs=1e-6)  # best anchor: its IoU, 1.0
    assert target_scores[0, 2].sum().item() == 0.0


def test_detection_loss_trains_the_whole_head() -> None:
    torch.manual_seed(0)
    model = models.YoloV8s(nc=80).train()
    criterion = models.DetectionLoss(nc=80)
    images, boxes, labels, mask = models.synthetic_detection_batch(2, 128, "cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for step in range(6):
        optimizer.zero_grad()
        loss = criterion(model(images), boxes, labels, mask)
        loss.backward()
        if step == 0:
            # Box (DFL bins) and class branches both receive gradient: all three loss terms are live.
            assert model.detect.cv2[0][-1].weight.grad.abs().sum() > 0
            assert model.detect.cv3[0][-1].weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_percentile_interpolates() -> None:
    assert bench.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert bench.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 10) == pytest.approx(1.4)
    assert bench.percentile([7.0], 90) == 7.0


def test_workload_names_agree_with_the_package() -> None:
    assert bench.WORKLOADS == probe_pkg.WORKLOADS
    assert bench.EVENT_PREFIX == probe_pkg.EVENT_PREFIX
    assert bench.SCHEMA == probe_pkg.BENCH_SCHEMA


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--workload", "bert"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--rungs", "fp8"])


def test_cpu_ladder_document(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--cpu", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--image-size", "64"]
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = bench.main(argv)
    assert code == 0
    result = BenchResult.model_validate(json.loads(buffer.getvalue()))
    assert result.ok and result.cpu_mode and result.world_size == 1
    assert [w.name for w in result.workloads] == ["resnet50", "yolo"]
    for work in result.workloads:
        assert [r.name for r in work.rungs] == list(bench.RUNG_NAMES)
        by_name = {r.name: r for r in work.rungs}
        assert by_name["tf32"].status == "skipped" and "CPU" in (by_name["tf32"].reason or "")
        assert by_name["compile"].status == "skipped" and "--compile" in (by_name["compile"].reason or "")
        measured = [r for r in work.rungs if r.status == "ok"]
        assert [r.name for r in measured] == ["fp32", "amp_bf16", "channels_last"]
        assert work.flops_per_image == 3 * (work.flops_forward_per_image or 0) > 0
        for rung in measured:
            assert rung.images_per_s and rung.images_per_s > 0
            assert rung.step_ms_p10 <= rung.step_ms_median <= rung.step_ms_p90
            assert rung.images_per_s == pytest.approx(2 / (rung.step_ms_median / 1000))
            assert rung.tflops == pytest.approx(work.flops_per_image * rung.images_per_s / 1e12)
            assert rung.loss_last is not None and rung.loss_last == rung.loss_last
        assert measured[0].speedup == 1.0
    # One progress event per rung, parseable, on stderr.
    events = [line for line in capsys.readouterr().err.splitlines() if line.startswith(bench.EVENT_PREFIX)]
    assert len(events) == 2 * len(bench.RUNG_NAMES)
    assert json.loads(events[0][len(bench.EVENT_PREFIX) :])["rung"]["name"] == "fp32"


def test_ultralytics_impl_says_when_it_is_missing() -> None:
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="ultralytics is not importable"):
            bench._yolo_workload("ultralytics")
    else:
        assert bench._yolo_workload("ultralytics").impl == "ultralytics"


def test_a_failing_rung_is_reported_and_the_ladder_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.run_rung

    def flaky(work: bench.Workload, rung: bench.Rung, **kwargs: object) -> dict[str, object]:
        if rung.name == "amp_bf16":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore text")
        return real(work, rung, **kwargs)

    monkeypatch.setattr(bench, "run_rung", flaky)
    work = bench._resnet_workload()
    results = _ladder(work, [r.name for r in bench.LADDER], batch=2, size=32, warmup=0, compile_requested=False)
    status = {r["name"]: r["status"] for r in results}
    assert status == {
        "fp32": "ok",
        "tf32": "skipped",
        "amp_bf16": "error",
        "amp_fp16": "skipped",
        "channels_last": "ok",
        "compile": "skipped",
    }
    failed = next(r for r in results if r["name"] == "amp_bf16")
    assert failed["reason"] == "RuntimeError: CUDA error: an illegal memory access was encountered"


# --------------------------------------------------------------------------- issue: healthy GPUs


class _Tiny(torch.nn.Module):
    """A model small enough to compile in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _tiny_workload() -> bench.Workload:
    def make_batch(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        return torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)

    def loss(output: torch.Tensor, data: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output.float(), data[1])

    return bench.Workload("tiny", "builtin", _Tiny, make_batch, loss)


def _ladder(work: bench.Workload, names: list[str], **overrides: object) -> list[dict[str, object]]:
    kwargs: dict[str, object] = dict(
        device=torch.device("cpu"),
        batch=4,
        size=16,
        steps=1,
        warmup=1,
        seed=0,
        compile_requested=True,
        flops_per_image=None,
    )
    kwargs.update(overrides)
    rungs = [r for r in bench.LADDER if r.name in names]
    return bench.run_ladder(work, rungs, **kwargs)  # type: ignore[arg-type]


def test_compile_rung_is_skipped_with_the_reason_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    results = _ladder(_tiny_workload(), ["fp32", "compile"])
    compile_rung = results[-1]
    assert compile_rung["status"] == "skipped"
    assert "C++ compiler" in str(compile_rung["reason"]) and "torch.compile" in str(compile_rung["reason"])
    assert results[0]["status"] == "ok"


def test_compile_rung_is_skipped_without_python_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setattr(bench.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    reason = bench.missing_compile_toolchain(torch.device("cuda", 0))
    assert reason and "Python.h" in reason
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    reason = bench.missing_compile_toolchain(torch.device("cuda", 0))
    assert reason and "C compiler (cc, gcc or clang" in reason


def test_compile_rung_runs_where_a_compiler_exists() -> None:
    if bench.missing_compile_toolchain(torch.device("cpu")):
        pytest.skip("needs g++ and the Python headers in this environment")
    results = _ladder(_tiny_workload(), ["fp32", "compile"])
    compile_rung = results[-1]
    assert compile_rung["status"] == "ok", compile_rung
    assert compile_rung["settings"]["compile"] is True and compile_rung["compile_s"] > 0


def test_a_failed_rung_keeps_the_full_exception_and_stderr_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile's message starts with "backend='inductor' raised:"; the cause is further down,
    and Triton's gcc writes its error straight to stderr."""

    def failing(work: bench.Workload, rung: bench.Rung, **kwargs: object) -> dict[str, object]:
        os.write(2, b"/tmp/x/main.c:5:10: fatal error: Python.h: No such file or directory\n")
        raise RuntimeError(
            "backend='inductor' raised:\nCalledProcessError: Command '['/usr/bin/gcc', 'main.c']' "
            'returned non-zero exit status 1.\n\nSet TORCH_LOGS="+dynamo" for more information\n'
            + "x"
            * 10_000
        )

    monkeypatch.setattr(bench, "run_rung", failing)
    (result,) = _ladder(_tiny_workload(), ["fp32"])
    assert result["status"] == "error"
    assert result["reason"] == (
        "RuntimeError: backend='inductor' raised: CalledProcessError: Command '['/usr/bin/gcc', "
        "'main.c']' returned non-zero exit status 1."
    )
    detail = str(result["detail"])
    assert "Traceback" in detail and "non-zero exit status 1" in detail
    assert len(detail) < bench.DETAIL_CHARS + 100 and "characters cut" in detail
    assert "Python.h: No such file or directory" in str(result["stderr_tail"])
    assert RungResult.model_validate(result).stderr_tail  # the host's model keeps both


def test_out_of_memory_halves_the_batch_frees_memory_outside_the_except(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    tried: list[tuple[str, int]] = []
    handling_while_freeing: list[object] = []

    def tight(work: bench.Workload, rung: bench.Rung, **kwargs: object) -> dict[str, object]:
        batch = int(kwargs["batch"])  # type: ignore[arg-type]
        tried.append((rung.name, batch))
        if batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {
            "name": rung.name,
            "status": "ok",
            "reason": None,
            "images_per_s": 10.0 * batch,
            "step_ms_median": 1.0,
            "batch_size": batch,
        }

    monkeypatch.setattr(bench, "run_rung", tight)
    monkeypatch.setattr(bench, "free_memory", lambda device: handling_while_freeing.append(sys.exc_info()[0]))
    results = _ladder(_tiny_workload(), ["fp32", "amp_bf16"], batch=8)
    assert tried == [("fp32", 8), ("fp32", 4), ("fp32", 2), ("amp_bf16", 2)]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert results[0]["batch_size"] == 2 and results[0]["oom_retries"] == 2
    assert results[1]["batch_size"] == 2 and results[1]["oom_retries"] == 0
    # Memory is released after the except block, when the traceback no longer pins the tensors.
    assert handling_while_freeing == [None, None]


def test_out_of_memory_at_batch_one_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(work: bench.Workload, rung: bench.Rung, **kwargs: object) -> dict[str, object]:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(bench, "run_rung", never)
    (result,) = _ladder(_tiny_workload(), ["fp32"], batch=2)
    assert result["status"] == "error" and result["batch_size"] == 1 and result["oom_retries"] == 1
    assert "out of memory" in str(result["reason"])


GIB = 2**30


@pytest.mark.parametrize(
    ("total_memory", "resnet", "yolo"),
    [
        (42_505_273_344, 256, 32),  # A100 40 GB reports 39.6 GiB
        (85_520_809_984, 256, 64),  # H100 80 GB
        (150_754_820_096, 256, 128),  # H200 141 GB
        (23_580_639_232, 128, 16),  # L4
        (15_655_829_504, 64, 8),  # T4
        (8_361_017_344, 32, 4),  # an 8 GB card
        (10_200_547_328, 32, 4),  # MIG 1g.10gb
        (5_100_273_664, 16, 2),  # MIG 1g.5gb
    ],
)
def test_batch_tiers_fit_the_card(
    monkeypatch: pytest.MonkeyPatch, total_memory: int, resnet: int, yolo: int
) -> None:
    from types import SimpleNamespace

    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total_memory)
    )
    device = torch.device("cuda", 0)
    assert bench.default_sizes("resnet50", device, False) == (resnet, 224)
    assert bench.default_sizes("yolo", device, False) == (yolo, 640)


def test_batch_tiers_are_data_with_a_source() -> None:
    tiers = bench.load_batch_tiers()
    assert "source" in tiers and "not a measured result" in tiers["source"]
    edges = [t["min_gib"] for t in tiers["tiers"]]
    assert edges == sorted(edges, reverse=True) and edges[-1] == 0 and len(set(edges)) == len(edges)
    assert "batch_tiers.json" in probe_pkg.SCRIPT_FILES  # copied into the container with bench.py


def _fake_capabilities(monkeypatch: pytest.MonkeyPatch, by_index: dict[int, tuple[int, int]]) -> None:
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device: by_index[torch.device(device).index]
    )
    # What torch answers for a T4: True, because it counts emulation.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_bf16_needs_sm80_on_each_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_capabilities(monkeypatch, {0: (9, 0), 1: (7, 5)})
    rungs = {r.name: r for r in bench.LADDER}
    h100, t4 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert bench.skip_reason(rungs["amp_bf16"], h100, False) is None
    assert "fp16 is the fallback" in (bench.skip_reason(rungs["amp_fp16"], h100, False) or "")
    reason = bench.skip_reason(rungs["amp_bf16"], t4, False)
    assert reason and "8.0" in reason and "sm_75" in reason
    assert bench.skip_reason(rungs["amp_fp16"], t4, False) is None
    # The rungs after AMP run fp16 on the T4, not emulated bf16.
    assert bench.autocast_dtype(rungs["channels_last"], t4) == torch.float16
    assert bench.autocast_dtype(rungs["channels_last"], h100) == torch.bfloat16


def test_fp16_rung_trains_with_a_grad_scaler() -> None:
    rung = next(r for r in bench.LADDER if r.name == "amp_fp16")
    result = bench.run_rung(
        _tiny_workload(), rung, device=torch.device("cpu"), batch=2, size=16, steps=1, warmup=1, seed=0
    )
    assert result["status"] == "ok"
    assert result["settings"]["amp_fp16"] is True and result["settings"]["amp_bf16"] is False


def test_flops_of_a_model_the_meta_device_cannot_build() -> None:
    """ultralytics' DetectionModel runs a real forward pass in its constructor: count on a small CPU
    copy and scale by the area."""

    def meta_hostile() -> torch.nn.Module:
        if torch.empty(0).device.type == "meta":
            raise NotImplementedError("Cannot copy out of meta tensor; no data!")
        return models.YoloV8s()

    forward = bench.count_forward_flops(meta_hostile, 640)
    assert forward / 1e9 == pytest.approx(YOLOV8S_FORWARD_GFLOP, rel=0.01)


def test_init_process_group_gets_a_timeout_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: seen.append(kwargs))
    bench.init_distributed(torch.device("cuda", 3), 120)
    bench.init_distributed(torch.device("cpu"), 60)
    assert seen[0] == {
        "backend": "nccl",
        "timeout": timedelta(seconds=120),
        "device_id": torch.device("cuda", 3),
    }
    assert seen[1] == {"backend": "gloo", "timeout": timedelta(seconds=60)}
