"""The benchmark: model shapes and FLOPs, the detection loss, the ladder's JSON document."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from envkit.incontainer import probe as probe_pkg
from envkit.incontainer.probe import bench, models
from envkit.verify.report import BenchResult

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
    results = bench.run_ladder(
        work,
        list(bench.LADDER),
        device=torch.device("cpu"),
        batch=2,
        size=32,
        steps=1,
        warmup=0,
        seed=0,
        compile_requested=False,
        flops_per_image=None,
    )
    status = {r["name"]: r["status"] for r in results}
    assert status == {
        "fp32": "ok",
        "tf32": "skipped",
        "amp_bf16": "error",
        "channels_last": "ok",
        "compile": "skipped",
    }
    failed = next(r for r in results if r["name"] == "amp_bf16")
    assert failed["reason"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
