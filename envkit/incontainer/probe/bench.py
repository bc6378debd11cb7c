"""Training-step benchmark: a ladder of settings in one run, one JSON document on stdout.

    python bench.py [--workload resnet50,yolo] [--cpu] [--compile] [--impl builtin|ultralytics]
                    [--batch-size N] [--image-size N] [--steps N] [--warmup N] [--rungs a,b]
    python -m torch.distributed.run --standalone --nproc_per_node=N bench.py ...   (DDP)

Rungs, each adding to the one before: fp32 with TF32 off -> TF32 -> AMP bf16 -> channels_last ->
torch.compile (only with --compile). GPUs before sm_80 (T4, V100) have no native bf16: they run
AMP fp16 with a GradScaler instead (the amp_fp16 rung, and fp16 in the rungs after it). Per rung:
images/s from the median step time, p10/p90 step times, peak memory, achieved TFLOP/s, the batch
actually used and the speedup over the first rung. Warm-up steps are excluded, each step is timed
between synchronisation points, seeds are fixed.

Batches come from ``batch_tiers.json`` (by the device's memory); a rung that runs out of memory
halves its batch and retries. A failed rung keeps its full exception (truncated) and the tail of
what was written to stderr while it ran.

Standard library and torch only (torchvision and ultralytics when present). Progress goes to stderr;
lines starting with ``ENVKIT_EVENT`` there carry a JSON record per finished rung so that a run
killed at its timeout still leaves a partial result.

Under torchrun, a rank whose rung raises cannot leave the others waiting in a collective: it
reports the cause (an ``ENVKIT_EVENT`` line with ``"event": "rank_error"``, from any rank) and
exits, and torchrun stops the other ranks. Ranks that finish a rung agree on its outcome.

Test hooks: ENVKIT_BENCH_HANG=1 (or ``start``) hangs before the first workload,
ENVKIT_BENCH_HANG=after-rung hangs after the first finished rung; ENVKIT_BENCH_FAIL_RANK=N makes
rank N's DDP rung raise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

if __package__:
    from . import models
else:  # run as a plain script: this directory is sys.path[0]
    import models  # type: ignore[no-redef]

SCHEMA = "envkit.bench/1"
EVENT_PREFIX = "ENVKIT_EVENT "
WORKLOADS = ("resnet50", "yolo")
HANG_ENV = "ENVKIT_BENCH_HANG"
FAIL_RANK_ENV = "ENVKIT_BENCH_FAIL_RANK"
BATCH_TIERS_FILE = Path(__file__).resolve().with_name("batch_tiers.json")
DETAIL_CHARS = 4000  # a failed rung's exception text, head and tail kept
STDERR_TAIL_CHARS = 2000
RANK_FAILED_EXIT = 3
DEFAULT_DIST_TIMEOUT_S = 900


@dataclass(frozen=True)
class Rung:
    name: str
    tf32: bool
    amp_bf16: bool
    channels_last: bool
    compile: bool
    amp_fp16: bool = False


LADDER: tuple[Rung, ...] = (
    Rung("fp32", tf32=False, amp_bf16=False, channels_last=False, compile=False),
    Rung("tf32", tf32=True, amp_bf16=False, channels_last=False, compile=False),
    Rung("amp_bf16", tf32=True, amp_bf16=True, channels_last=False, compile=False),
    Rung("amp_fp16", tf32=True, amp_bf16=False, channels_last=False, compile=False, amp_fp16=True),
    Rung("channels_last", tf32=True, amp_bf16=True, channels_last=True, compile=False),
    Rung("compile", tf32=True, amp_bf16=True, channels_last=True, compile=True),
)
RUNG_NAMES = tuple(r.name for r in LADDER)


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    if _rank() == 0:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


def emit(event: dict[str, Any], *, all_ranks: bool = False) -> None:
    if all_ranks or _rank() == 0:
        print(EVENT_PREFIX + json.dumps(event, sort_keys=True), file=sys.stderr, flush=True)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def maybe_hang(point: str) -> None:
    """The timeout test's hook: never returns when ENVKIT_BENCH_HANG names this point."""
    wanted = os.environ.get(HANG_ENV, "")
    if (wanted in ("1", "start") and point == "start") or wanted == point:
        log(f"{HANG_ENV}={wanted}: hanging on purpose at {point}")
        while True:
            time.sleep(3600)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


FLOPS_CPU_IMAGE_SIZE = 128  # a multiple of 32, so every stride-32 feature map divides evenly


def count_forward_flops(build: Callable[[], torch.nn.Module], image_size: int) -> int:
    """FLOPs of one forward pass for one image. FlopCounterMode counts matmuls and convolutions,
    2 FLOPs per multiply-add.

    Counted on the meta device (no memory, no compute) when the model can be built there. Models
    whose constructor computes with real values (ultralytics runs a forward pass to find its
    strides) cannot: those are counted on a small real CPU copy at FLOPS_CPU_IMAGE_SIZE and scaled
    by the area ratio, which is exact for convolutional networks (their FLOPs grow with H x W)."""
    try:
        return _count_flops_on("meta", build, image_size)
    except Exception as exc:  # noqa: BLE001 - fall back to a real, small copy
        small = min(image_size, FLOPS_CPU_IMAGE_SIZE)
        log(f"FLOPs: the meta device cannot build this model ({type(exc).__name__}); counting at {small}px")
        with torch.no_grad():
            flops = _count_flops_on("cpu", build, small)
        return round(flops * (image_size / small) ** 2)


def _count_flops_on(device: str, build: Callable[[], torch.nn.Module], image_size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    with torch.device(device):
        model = build()
        # Two images: BatchNorm in training mode refuses a single value per channel.
        x = torch.zeros(2, 3, image_size, image_size)
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def load_batch_tiers(path: Path = BATCH_TIERS_FILE) -> dict[str, Any]:
    return json.loads(path.read_text())


def sizes_for_memory(
    workload: str, total_memory_bytes: int, tiers: dict[str, Any] | None = None
) -> tuple[int, int]:
    """(batch, image size) of the first tier whose ``min_gib`` the device's memory reaches."""
    table = tiers or load_batch_tiers()
    gib = total_memory_bytes / 2**30
    for tier in sorted(table["tiers"], key=lambda t: t["min_gib"], reverse=True):
        if gib >= tier["min_gib"]:
            return int(tier[workload]), int(table["gpu_image_size"][workload])
    raise ValueError(f"no batch tier for {gib:.1f} GiB")  # the table ends with min_gib 0


def default_sizes(workload: str, device: torch.device, cpu_mode: bool) -> tuple[int, int]:
    """(batch, image size). GPU batches scale with memory so the fp32 rung still fits."""
    if cpu_mode or device.type == "cpu":
        cpu = load_batch_tiers()["cpu"][workload]
        return int(cpu["batch"]), int(cpu["image_size"])
    return sizes_for_memory(workload, torch.cuda.get_device_properties(device).total_memory)


# --------------------------------------------------------------------------- failures


def summarize_exception(exc: BaseException) -> str:
    """One line for the table. The first line of the message, joined with the next when it only
    introduces it (torch.compile's ``backend='inductor' raised:``)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return f"{type(exc).__name__}: {text}"


def truncate(text: str, limit: int) -> str:
    """Head and tail of ``text``: the exception type is at the start, the cause often at the end."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[-tail:]}"


def exception_detail(exc: BaseException) -> str:
    return truncate("".join(traceback.format_exception(exc)).strip(), DETAIL_CHARS)


class StderrTail:
    """Tees file descriptor 2 while a rung runs: everything still reaches stderr as it is written,
    and the last bytes are kept, including what compilers and other child processes print (Triton
    runs gcc with its output on our stderr)."""

    def __init__(self, limit: int = STDERR_TAIL_CHARS) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._restore: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StderrTail:
        try:
            sys.stderr.flush()
            restore = os.dup(2)
            forward = os.dup(2)
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, 2)
            os.close(write_fd)
        except (OSError, ValueError):  # no usable fd 2: run without a tail
            return self
        self._restore = restore
        self._thread = threading.Thread(target=self._pump, args=(read_fd, forward), daemon=True)
        self._thread.start()
        return self

    def _pump(self, read_fd: int, forward: int) -> None:
        try:
            while chunk := os.read(read_fd, 65536):
                with self._lock:
                    self._buffer += chunk
                    del self._buffer[: max(0, len(self._buffer) - 4 * self.limit)]
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(forward, view) :]
                    except OSError:
                        break
        finally:
            os.close(read_fd)
            os.close(forward)

    def __exit__(self, *exc_info: object) -> None:
        if self._restore is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._restore, 2)
        os.close(self._restore)
        self._restore = None
        # A child that inherited the pipe (a compile worker pool) may keep it open: do not wait on it.
        if self._thread is not None:
            self._thread.join(timeout=2)

    def tail(self) -> str:
        with self._lock:
            data = bytes(self._buffer)
        return data.decode(errors="replace")[-self.limit :]


def is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, oom_type) or "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    """Called once the exception is gone: its traceback pins the failed rung's tensors until then."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- toolchain


def missing_compile_toolchain(device: torch.device) -> str | None:
    """Why torch.compile cannot work here, or None. Inductor builds C++ kernels for the CPU with
    $CXX or g++; Triton builds a small C launcher for the GPU with $CC, cc, gcc or clang; both
    include Python.h. Without them the compile rung would only fail on its first step."""
    missing: list[str] = []
    if device.type == "cuda":
        candidates = [os.environ.get("CC") or "", "cc", "gcc", "clang"]
        what = "a C compiler (cc, gcc or clang, or $CC)"
    else:
        candidates = [os.environ.get("CXX") or "g++"]
        what = "a C++ compiler (g++, or $CXX)"
    if not any(c and shutil.which(c) for c in candidates):
        missing.append(f"no {what} on PATH")
    include = sysconfig.get_paths().get("include") or ""
    if not (include and Path(include, "Python.h").is_file()):
        missing.append(f"no Python headers (Python.h in {include or 'the include path'})")
    if not missing:
        return None
    return (
        "torch.compile needs a compiler and the Python headers (Inductor and Triton build C modules "
        "on first use): " + "; ".join(missing)
    )


# --------------------------------------------------------------------------- precision


def native_bf16(device: torch.device) -> bool:
    """bf16 that runs on tensor cores: sm_80 or newer, asked of this device, not of device 0.
    torch.cuda.is_bf16_supported() also says yes for older GPUs, where bf16 is emulated (slow)."""
    if device.type != "cuda":
        return True
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def autocast_dtype(rung: Rung, device: torch.device) -> torch.dtype | None:
    if rung.amp_fp16:
        return torch.float16
    if rung.amp_bf16:
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return None


# --------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    name: str
    impl: str
    build: Callable[[], torch.nn.Module]
    make_batch: Callable[[int, int, torch.device], tuple[Any, ...]]
    loss: Callable[[Any, tuple[Any, ...]], torch.Tensor]


def _resnet_workload() -> Workload:
    _, impl = models.resnet50()

    def build() -> torch.nn.Module:
        return models.resnet50(prefer_torchvision=impl == "torchvision")[0]

    def make_batch(batch: int, size: int, device: torch.device) -> tuple[Any, ...]:
        return (
            torch.randn(batch, 3, size, size, device=device),
            torch.randint(0, 1000, (batch,), device=device),
        )

    def loss(output: torch.Tensor, data: tuple[Any, ...]) -> torch.Tensor:
        return F.cross_entropy(output.float(), data[1])

    return Workload("resnet50", impl, build, make_batch, loss)


def _yolo_workload(impl: str) -> Workload:
    if impl == "ultralytics":
        return _ultralytics_workload()
    criterion = models.DetectionLoss(nc=80)

    def make_batch(batch: int, size: int, device: torch.device) -> tuple[Any, ...]:
        return models.synthetic_detection_batch(batch, size, device)

    def loss(output: list[torch.Tensor], data: tuple[Any, ...]) -> torch.Tensor:
        _, boxes, labels, mask = data
        return criterion(output, boxes, labels, mask)

    return Workload("yolo", "builtin", lambda: models.YoloV8s(nc=80), make_batch, loss)


def _ultralytics_workload() -> Workload:
    try:
        from ultralytics.cfg import get_cfg  # noqa: PLC0415 - optional
        from ultralytics.nn.tasks import DetectionModel  # noqa: PLC0415 - optional
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(
            f"--impl ultralytics: ultralytics is not importable in this environment ({exc}); "
            "use --impl builtin or an image with ultralytics installed"
        ) from exc
    criteria: dict[int, Any] = {}

    def build() -> torch.nn.Module:
        model = DetectionModel("yolov8s.yaml", nc=80, verbose=False)
        model.args = get_cfg()  # the loss reads its box/cls/dfl gains from here
        return model

    def make_batch(batch: int, size: int, device: torch.device) -> tuple[Any, ...]:
        images, boxes, labels, _ = models.synthetic_detection_batch(batch, size, device)
        xywh = torch.cat(((boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]), -1) / size
        per_image = boxes.shape[1]
        targets = {
            "batch_idx": torch.arange(batch, device=device).repeat_interleave(per_image).float(),
            "cls": labels.reshape(-1, 1).float(),
            "bboxes": xywh.reshape(-1, 4),
        }
        return images, targets

    def loss(output: Any, data: tuple[Any, ...]) -> torch.Tensor:
        model = current_model[0]
        key = id(model)
        if key not in criteria:
            criteria[key] = model.init_criterion()
        total = criteria[key](output, {"img": data[0], **data[1]})[0]
        return total.sum()

    current_model: list[Any] = [None]

    def tracked_build() -> torch.nn.Module:
        model = build()
        current_model[0] = model
        return model

    return Workload("yolo", "ultralytics", tracked_build, make_batch, loss)


# --------------------------------------------------------------------------- one rung


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rung(
    work: Workload,
    rung: Rung,
    *,
    device: torch.device,
    batch: int,
    size: int,
    steps: int,
    warmup: int,
    seed: int,
    ddp: bool = False,
) -> dict[str, Any]:
    if ddp and os.environ.get(FAIL_RANK_ENV) == str(_rank()):
        raise RuntimeError(f"injected failure on rank {_rank()} ({FAIL_RANK_ENV})")
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = rung.tf32
        torch.backends.cudnn.allow_tf32 = rung.tf32
        torch.backends.cudnn.benchmark = True
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    memory_format = torch.channels_last if rung.channels_last else torch.contiguous_format
    model = work.build().to(device).to(memory_format=memory_format).train()
    if ddp:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Fused SGD keeps the optimizer from dominating small-batch GPU steps; CPU has no fused kernel.
    optimizer = torch.optim.SGD(
        model.parameters(), lr=1e-3, momentum=0.9, **({"fused": True} if device.type == "cuda" else {})
    )
    data = work.make_batch(batch, size, device)
    images = data[0].contiguous(memory_format=memory_format)
    data = (images, *data[1:])
    forward = torch.compile(model) if rung.compile else model
    amp_dtype = autocast_dtype(rung, device)
    # fp16 overflows where bf16 does not: scale the loss, as every fp16 training loop does.
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            output = forward(images)
        loss = work.loss(output, data)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss

    compile_s = None
    started = time.perf_counter()
    first_loss = None
    for i in range(warmup):
        value = step()
        if i == 0:
            _sync(device)
            first_loss = float(value.detach())
            if rung.compile:
                compile_s = time.perf_counter() - started
    _sync(device)
    times: list[float] = []
    last = None
    for _ in range(steps):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            last = step()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            last = step()
            times.append(time.perf_counter() - t0)
    last_loss = float(last.detach()) if last is not None else None
    median = statistics.median(times)
    result: dict[str, Any] = {
        "name": rung.name,
        "status": "ok",
        "reason": None,
        "settings": {
            "tf32": rung.tf32 and device.type == "cuda",
            "amp_bf16": amp_dtype == torch.bfloat16,
            "amp_fp16": amp_dtype == torch.float16,
            "channels_last": rung.channels_last,
            "compile": rung.compile,
        },
        "batch_size": batch,
        "images_per_s": batch * _world_if(ddp) / median,
        "step_ms_median": median * 1000,
        "step_ms_p10": percentile(times, 10) * 1000,
        "step_ms_p90": percentile(times, 90) * 1000,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "loss_first": first_loss,
        "loss_last": last_loss,
        "compile_s": compile_s,
    }
    if last_loss is None or last_loss != last_loss or abs(last_loss) == float("inf"):
        result["status"] = "error"
        result["reason"] = f"the loss is not finite ({last_loss}): numerics are broken in this setting"
    return result


def _world_if(ddp: bool) -> int:
    return _world() if ddp else 1


def skip_reason(rung: Rung, device: torch.device, compile_requested: bool) -> str | None:
    if rung.compile and not compile_requested:
        return "not requested (--compile)"
    if rung.compile:
        missing = missing_compile_toolchain(device)
        if missing:
            return missing
    if rung.name == "tf32":
        if device.type != "cuda":
            return "TF32 is an NVIDIA tensor-core mode; it does not exist on the CPU"
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            return "TF32 needs compute capability 8.0 or newer"
    if rung.name == "amp_bf16" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        return (
            f"bf16 needs compute capability 8.0 or newer (this GPU is sm_{major}{minor}, where bf16 is "
            "emulated); the amp_fp16 rung runs instead"
        )
    if rung.amp_fp16:
        if device.type != "cuda":
            return "fp16 with a GradScaler is the fallback for GPUs before sm_80; the CPU runs bf16"
        if native_bf16(device):
            return "this GPU runs bf16 (sm_80 or newer); fp16 is the fallback for older GPUs"
    return None


def run_ladder(
    work: Workload,
    rungs: list[Rung],
    *,
    device: torch.device,
    batch: int,
    size: int,
    steps: int,
    warmup: int,
    seed: int,
    compile_requested: bool,
    flops_per_image: int | None,
    ddp: bool = False,
) -> list[dict[str, Any]]:
    """Each rung in turn. A rung that runs out of memory halves its batch and retries (not under
    DDP, where the ranks would have to agree first: there the batch is the one the single-process
    run settled on); later rungs start from the batch that worked."""
    results: list[dict[str, Any]] = []
    baseline: float | None = None
    for rung in rungs:
        reason = skip_reason(rung, device, compile_requested)
        if reason:
            result: dict[str, Any] = {"name": rung.name, "status": "skipped", "reason": reason}
        else:
            result, batch = _run_with_retries(
                work,
                rung,
                device=device,
                batch=batch,
                size=size,
                steps=steps,
                warmup=warmup,
                seed=seed,
                ddp=ddp,
            )
        if ddp:
            result = _agree(work, result, device)
        if result["status"] == "ok":
            rate = result["images_per_s"]
            result["tflops"] = flops_per_image * rate / 1e12 if flops_per_image else None
            baseline = baseline or rate
            result["speedup"] = rate / baseline
            log(
                f"{work.name}: {rung.name}: {rate:.1f} images/s, "
                f"median step {result['step_ms_median']:.1f} ms"
            )
        results.append(result)
        emit({"event": "rung", "workload": work.name, "rung": result})
        if result["status"] == "ok":
            maybe_hang("after-rung")
    return results


def _run_with_retries(
    work: Workload,
    rung: Rung,
    *,
    device: torch.device,
    batch: int,
    size: int,
    steps: int,
    warmup: int,
    seed: int,
    ddp: bool,
) -> tuple[dict[str, Any], int]:
    """One rung, halving the batch on out-of-memory. Returns the result and the batch that worked."""
    retries = 0
    while True:
        log(f"{work.name}: rung {rung.name} (batch {batch}, {size}x{size}, {steps} steps)")
        out_of_memory = False
        with StderrTail() as captured:
            try:
                result = run_rung(
                    work,
                    rung,
                    device=device,
                    batch=batch,
                    size=size,
                    steps=steps,
                    warmup=warmup,
                    seed=seed,
                    ddp=ddp,
                )
            except Exception as exc:  # noqa: BLE001 - one failing rung must not lose the others
                out_of_memory = is_out_of_memory(exc) and batch > 1 and not ddp
                result = {
                    "name": rung.name,
                    "status": "error",
                    "reason": summarize_exception(exc),
                    "detail": exception_detail(exc),
                    "batch_size": batch,
                }
        if result["status"] == "error":
            result["stderr_tail"] = captured.tail() or None
            if ddp and "detail" in result:  # raised, rather than finished with a bad loss
                _rank_failed(work, result)
        # Outside the except block: the exception and its frames are gone, so the memory they held
        # can actually be released.
        if result["status"] == "error" or out_of_memory:
            free_memory(device)
        if not out_of_memory:
            break
        log(f"{work.name}: rung {rung.name}: out of memory at batch {batch}; retrying at {batch // 2}")
        batch //= 2
        retries += 1
    result["oom_retries"] = retries
    return result, batch


def _rank_failed(work: Workload, result: dict[str, Any]) -> None:
    """Under DDP a rank that raised cannot take part in the next collective, and the other ranks
    would wait for it until a timeout: report the cause and exit; torchrun stops the others."""
    event = {"event": "rank_error", "rank": _rank(), "workload": work.name, "rung": result["name"]}
    event.update({key: result.get(key) for key in ("reason", "detail", "stderr_tail")})
    print(
        f"[bench] rank {_rank()}: {work.name} {result['name']} failed: {result['reason']}",
        file=sys.stderr,
        flush=True,
    )
    emit(event, all_ranks=True)
    sys.stdout.flush()
    os._exit(RANK_FAILED_EXIT)


AGREE_REASON_BYTES = 512


def _agree(work: Workload, result: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every rank finished the rung; it counts as ok only if it is ok on every rank. Plain tensor
    collectives (the object ones need numpy, which an image may lack)."""
    import torch.distributed as dist  # noqa: PLC0415

    mine = torch.zeros(AGREE_REASON_BYTES + 1, dtype=torch.uint8, device=device)
    if result["status"] == "error":
        encoded = (result.get("reason") or "failed").encode()[:AGREE_REASON_BYTES]
        mine[0] = 1
        mine[1 : 1 + len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    failed = []
    for rank, row in enumerate(gathered):
        if int(row[0]):
            text = bytes(row[1:].cpu().tolist()).rstrip(b"\0").decode(errors="replace")
            failed.append(f"rank {rank}: {text}")
    if not failed or result["status"] == "skipped":
        return result
    reasons = "; ".join(failed)
    log(f"{work.name}: rung {result['name']} failed on {len(failed)} rank(s): {reasons}")
    return {**result, "status": "error", "reason": reasons, "images_per_s": None}


def _share_baseline(single: dict[str, Any] | None, batch: int, device: torch.device) -> tuple[bool, int]:
    """Rank 0's single-process outcome and the batch that fitted, sent to every rank."""
    import torch.distributed as dist  # noqa: PLC0415

    ok = single is not None and single.get("status") == "ok"
    shared = torch.tensor([1 if ok else 0, batch], dtype=torch.int64, device=device)
    dist.broadcast(shared, src=0)
    return bool(shared[0]), int(shared[1])


# --------------------------------------------------------------------------- distributed


def allreduce_bandwidth(device: torch.device, nbytes: int, iters: int = 10) -> dict[str, Any]:
    """nccl-tests' definitions: algbw = bytes / time; busbw = algbw * 2(n-1)/n for all-reduce."""
    import torch.distributed as dist  # noqa: PLC0415

    world = dist.get_world_size()
    tensor = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    for _ in range(3):
        dist.all_reduce(tensor)
    _sync(device)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(tensor)
    _sync(device)
    elapsed = (time.perf_counter() - started) / iters
    algbw = nbytes / elapsed / 1e9
    return {
        "bytes": nbytes,
        "time_ms": elapsed * 1000,
        "algbw_gb_s": algbw,
        "busbw_gb_s": algbw * 2 * (world - 1) / world,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="resnet50,yolo")
    parser.add_argument("--cpu", action="store_true", help="small batches and images on the CPU")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile rung")
    parser.add_argument("--impl", choices=("builtin", "ultralytics"), default="builtin")
    parser.add_argument("--batch-size", type=int, default=None, help="per process")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per rung")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per rung")
    parser.add_argument("--rungs", default=None, help="comma-separated subset of " + ",".join(RUNG_NAMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_DIST_TIMEOUT_S,
        help="seconds a rank waits in a collective before it fails (DDP only)",
    )
    parser.add_argument("--indent", type=int, default=None)
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    names = [r.strip() for r in args.rungs.split(",")] if args.rungs else list(RUNG_NAMES)
    unknown = sorted(set(names) - set(RUNG_NAMES))
    if unknown:
        parser.error(f"unknown rung {', '.join(unknown)} (known: {', '.join(RUNG_NAMES)})")
    args.ladder = [r for r in LADDER if r.name in names]
    return args


def _device(cpu_mode: bool) -> torch.device:
    if cpu_mode or not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _describe_device(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": props.name,
            "capability": f"sm_{props.major}{props.minor}",
            "total_memory_bytes": int(props.total_memory),
            "count": torch.cuda.device_count(),
            # A MIG slice reports its own share of the SMs; the host scales the reference by it.
            "multi_processor_count": int(props.multi_processor_count),
        }
    return {
        "type": "cpu",
        "name": platform.processor() or platform.machine(),
        "capability": None,
        "total_memory_bytes": None,
        "count": os.cpu_count(),
        "multi_processor_count": None,
    }


def init_distributed(device: torch.device, timeout_s: float) -> None:
    """The process group with a timeout (a rank stuck in a collective fails with a cause instead of
    waiting for the stage's timeout) and, on GPUs, this rank's device, so NCCL binds the right GPU
    and does not guess from the rank."""
    import torch.distributed as dist  # noqa: PLC0415

    kwargs: dict[str, Any] = {
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "timeout": timedelta(seconds=timeout_s),
    }
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    world = _world()
    distributed = world > 1
    device = _device(args.cpu)
    if distributed:
        init_distributed(device, args.dist_timeout)
        if device.type == "cpu":
            # Processes share the cores: give each its share so they do not oversubscribe.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "device": _describe_device(device),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "world_size": world,
        "cpu_mode": device.type == "cpu",
        "workloads": [],
        "distributed": None,
        "errors": [],
    }
    maybe_hang("start")
    steps = args.steps or (5 if device.type == "cpu" else 30)
    warmup = args.warmup if args.warmup is not None else (2 if device.type == "cpu" else 10)
    dist_results: list[dict[str, Any]] = []
    for name in args.workloads:
        batch, size = default_sizes(name, device, args.cpu)
        batch = args.batch_size or batch
        size = args.image_size or size
        entry: dict[str, Any] = {
            "name": name,
            "impl": None,
            "batch_size": batch,
            "image_size": size,
            "steps": steps,
            "warmup_steps": warmup,
            "flops_forward_per_image": None,
            "flops_per_image": None,
            "rungs": [],
            "error": None,
        }
        report["workloads"].append(entry)
        try:
            work = _resnet_workload() if name == "resnet50" else _yolo_workload(args.impl)
            entry["impl"] = work.impl
            try:
                forward = count_forward_flops(work.build, size)
                entry["flops_forward_per_image"] = forward
                # A training step costs about 3x the forward pass (forward, and backward for both
                # activations and weights): the convention behind ResNet50's 24.5 GFLOP per image.
                entry["flops_per_image"] = 3 * forward
            except Exception as exc:  # noqa: BLE001 - a model the meta device cannot trace
                log(f"{name}: FLOPs not counted: {exc}")
            if distributed:
                dist_results.append(
                    _distributed_workload(work, args, device, batch, size, steps, warmup, entry)
                )
            else:
                entry["rungs"] = run_ladder(
                    work,
                    args.ladder,
                    device=device,
                    batch=batch,
                    size=size,
                    steps=steps,
                    warmup=warmup,
                    seed=args.seed,
                    compile_requested=args.compile,
                    flops_per_image=entry["flops_per_image"],
                )
        except Exception as exc:  # noqa: BLE001 - report it; other workloads still run
            entry["error"] = f"{type(exc).__name__}: {exc}"
            if _rank() != 0:  # only rank 0 prints the report: say it here
                print(f"[bench] rank {_rank()}: {name}: {entry['error']}", file=sys.stderr, flush=True)
            report["errors"].append(f"{name}: {entry['error']}")
    if distributed:
        import torch.distributed as dist  # noqa: PLC0415

        nbytes = 256 * 2**20 if device.type == "cuda" else 8 * 2**20
        report["distributed"] = {
            "backend": dist.get_backend(),
            "world_size": world,
            "workloads": dist_results,
            "allreduce": allreduce_bandwidth(device, nbytes),
        }
        dist.destroy_process_group()
    report["ok"] = (
        not report["errors"]
        and all(rung["status"] != "error" for w in report["workloads"] for rung in w["rungs"])
        and all(w["rungs"] for w in report["workloads"])
    )
    return report


def _distributed_workload(
    work: Workload,
    args: argparse.Namespace,
    device: torch.device,
    batch: int,
    size: int,
    steps: int,
    warmup: int,
    entry: dict[str, Any],
) -> dict[str, Any]:
    """The last requested rung, first on rank 0 alone, then on all ranks under DDP.
    Scaling efficiency = DDP images/s / (world size x single-process images/s)."""
    import torch.distributed as dist  # noqa: PLC0415

    candidates = [r for r in args.ladder if not skip_reason(r, device, args.compile)]
    if not candidates:
        raise RuntimeError("no rung of the ladder applies on this device")
    rung = candidates[-1]
    single: dict[str, Any] | None = None
    if dist.get_rank() == 0:
        log(f"{work.name}: single-process baseline, rung {rung.name}")
        single, batch = _run_with_retries(
            work,
            rung,
            device=device,
            batch=batch,
            size=size,
            steps=steps,
            warmup=warmup,
            seed=args.seed,
            ddp=False,
        )
    # Every rank learns how the baseline went and which batch fits, so all take the same path.
    ok, batch = _share_baseline(single, batch, device)
    if not ok:
        reason = single.get("reason") if single else "see rank 0"
        raise RuntimeError(f"the single-process {rung.name} run failed: {reason}")
    entry["batch_size"] = batch
    log(f"{work.name}: DDP over {dist.get_world_size()} processes, rung {rung.name}")
    entry["rungs"] = run_ladder(
        work,
        [rung],
        device=device,
        batch=batch,
        size=size,
        steps=steps,
        warmup=warmup,
        seed=args.seed,
        compile_requested=args.compile,
        flops_per_image=entry["flops_per_image"],
        ddp=True,
    )
    ddp_rate = entry["rungs"][0].get("images_per_s") if entry["rungs"][0]["status"] == "ok" else None
    single_rate = single["images_per_s"] if single and single["status"] == "ok" else None
    efficiency = ddp_rate / (single_rate * dist.get_world_size()) if ddp_rate and single_rate else None
    return {
        "workload": work.name,
        "rung": rung.name,
        "batch_per_process": batch,
        "single_images_per_s": single_rate,
        "ddp_images_per_s": ddp_rate,
        "scaling_efficiency": efficiency,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    report = run(args)
    if _rank() == 0:
        print(json.dumps(report, indent=args.indent, sort_keys=True), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
