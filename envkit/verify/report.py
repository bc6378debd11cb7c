"""The verify report: a schema-versioned model for machines, a rich table for people, and the
comparison with the reference figures per GPU model (``envkit/data/reference/*.json``).

The probe and bench scripts print plain JSON; the models here are the contract for those documents
(``extra="forbid"``), so a script that drifts from the host fails a unit test instead of silently
losing a field.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Group
from rich.table import Table
from rich.text import Text

from envkit import __version__
from envkit.resources import PACKAGE_DIR

SCHEMA_VERSION = 1
REFERENCE_DIR = PACKAGE_DIR / "data" / "reference"

CheckStatus = Literal["PASS", "WARN", "FAIL", "SKIP"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- preflight


class Check(_Strict):
    name: str
    status: CheckStatus
    reason: str
    fix: str | None = None


# --------------------------------------------------------------------------- probe document


class NumericsResult(_Strict):
    op: str
    precision: str
    device: str
    tolerance: float
    rel_error: float | None
    finite: bool | None
    ok: bool
    error: str | None


class ProbeDevice(_Strict):
    index: int
    name: str
    capability: str
    total_memory_bytes: int
    multi_processor_count: int
    arch_supported: bool
    arch_reason: str


class ProbeResult(_Strict):
    schema_: str = Field(alias="schema")
    ok: bool
    fatal: str | None = None
    torch: str | None = None
    torch_cuda: str | None = None
    torch_git: str | None = None
    cudnn: int | None = None
    nccl: str | None = None
    torchvision: str | None = None
    python: str | None = None
    platform: str | None = None
    cuda_available: bool = False
    cuda_error: str | None = None
    device_count: int = 0
    devices: list[ProbeDevice] = []
    arch_list: list[str] = []
    numerics: list[NumericsResult] = []
    numerics_ok: bool = False
    elapsed_s: float | None = None


# --------------------------------------------------------------------------- bench document


class RungSettings(_Strict):
    tf32: bool
    amp_bf16: bool
    channels_last: bool
    compile: bool
    amp_fp16: bool = False  # GPUs before sm_80 run AMP in fp16 (with a GradScaler) instead of bf16


class RungResult(_Strict):
    name: str
    status: Literal["ok", "skipped", "error"]
    reason: str | None = None
    settings: RungSettings | None = None
    images_per_s: float | None = None
    step_ms_median: float | None = None
    step_ms_p10: float | None = None
    step_ms_p90: float | None = None
    peak_memory_bytes: int | None = None
    tflops: float | None = None
    speedup: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    compile_s: float | None = None
    # The batch this rung ran with, and how often it was halved after running out of memory.
    batch_size: int | None = None
    oom_retries: int = 0
    # A failed rung: the exception in full (truncated) and the tail of stderr while it ran.
    detail: str | None = None
    stderr_tail: str | None = None
    # Filled on the host from the reference data: achieved TFLOP/s over the GPU's dense peak for
    # the precision the rung computes in.
    peak_share: float | None = None


class WorkloadResult(_Strict):
    name: str
    impl: str | None
    batch_size: int
    image_size: int
    steps: int
    warmup_steps: int
    flops_forward_per_image: int | None
    flops_per_image: int | None
    rungs: list[RungResult]
    error: str | None


class BenchDevice(_Strict):
    type: str
    name: str
    capability: str | None
    total_memory_bytes: int | None
    count: int | None
    multi_processor_count: int | None = None


class DistributedWorkload(_Strict):
    workload: str
    rung: str
    batch_per_process: int
    single_images_per_s: float | None
    ddp_images_per_s: float | None
    scaling_efficiency: float | None


class AllReduce(_Strict):
    bytes: int
    time_ms: float
    algbw_gb_s: float
    busbw_gb_s: float


class DistributedResult(_Strict):
    backend: str
    world_size: int
    workloads: list[DistributedWorkload]
    allreduce: AllReduce


class BenchResult(_Strict):
    schema_: str = Field(alias="schema")
    ok: bool
    torch: str
    torch_cuda: str | None
    cudnn: int | None
    python: str
    device: BenchDevice
    threads: int
    seed: int
    world_size: int
    cpu_mode: bool
    workloads: list[WorkloadResult]
    distributed: DistributedResult | None
    errors: list[str]


# --------------------------------------------------------------------------- the report


class Target(_Strict):
    requested: str
    image: str | None = None
    image_id: str | None = None
    torch: str | None = None
    cuda: str | None = None
    min_driver: str | None = None
    arch_list: list[str] = []
    source: Literal["labels", "native", "none"] = "none"


class Comparison(_Strict):
    workload: str
    gpu_model: str
    reference_images_per_s: float
    reference_images_per_s_high: float | None
    source: str
    conditions: str
    measured_rung: str | None
    measured_images_per_s: float | None
    ratio: float | None
    min_ratio: float
    gating: bool
    status: CheckStatus
    note: str | None = None


class Verdict(_Strict):
    status: Literal["pass", "host_not_ready", "failed"]
    exit_code: int
    summary: str
    reasons: list[str] = []
    fix: str | None = None


class VerifyReport(BaseModel):
    """Not frozen: the runner fills it stage by stage so that a run stopped half-way (timeout,
    host not ready) still leaves everything gathered up to that point."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: int = SCHEMA_VERSION
    envkit_version: str = __version__
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    mode: Literal["container", "native"]
    options: dict[str, Any]
    target: Target
    preflight: list[Check] = []
    probe: ProbeResult | None = None
    bench: BenchResult | None = None
    bench_ddp: BenchResult | None = None
    bench_partial: list[dict[str, Any]] = []
    timed_out: bool = False
    comparisons: list[Comparison] = []
    verdict: Verdict | None = None
    log_tail: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True) + "\n"


# --------------------------------------------------------------------------- reference data


class PeakTflops(_Strict):
    fp32: float | None = None
    tf32: float | None = None
    bf16: float | None = None
    fp16: float | None = None
    source: str
    conditions: str


class ThroughputReference(_Strict):
    workload: str
    images_per_s: float
    images_per_s_high: float | None = None
    image_size: int
    comparable_rungs: list[str]
    use_for_threshold: bool
    source: str
    conditions: str


class GpuReference(_Strict):
    gpu_model: str
    # Regular expressions searched in the device name (case-insensitive). Each name must match one
    # reference only: "H200" alone would also catch "GH200" and "H200 NVL" (a unit test checks).
    match: list[str]
    memory_gb: list[float] = []  # the memory sizes the model is sold with
    # Streaming multiprocessors of the whole GPU: a MIG slice's share of the card is its SM count
    # over this. mig_compute_slices: the compute slices the whole GPU splits into (7 on A100/H100).
    multiprocessors: int | None = None
    mig_compute_slices: int | None = None
    specs_source: str | None = None  # where memory, SM count and MIG slices come from
    peak_tflops: PeakTflops | None = None
    throughput: list[ThroughputReference] = []

    def matches(self, device_name: str) -> bool:
        return any(re.search(pattern, device_name, re.IGNORECASE) for pattern in self.match)


_MIG_RE = re.compile(r"\bMIG\s+(\d+)g\.(\d+)gb\b", re.IGNORECASE)


class MigSlice(_Strict):
    profile: str
    compute_slices: int
    memory_gb: int


def mig_slice(device_name: str) -> MigSlice | None:
    """``NVIDIA A100-SXM4-40GB MIG 1g.5gb`` -> the 1g.5gb profile; None for a whole GPU."""
    found = _MIG_RE.search(device_name)
    if not found:
        return None
    return MigSlice(
        profile=f"{found.group(1)}g.{found.group(2)}gb",
        compute_slices=int(found.group(1)),
        memory_gb=int(found.group(2)),
    )


def mig_fraction(ref: GpuReference, device_name: str, multi_processor_count: int | None) -> float | None:
    """The share of the whole GPU a MIG slice has: its SMs over the card's, else its compute slices
    over the card's; 1.0 for a whole GPU; None when a slice's share cannot be told."""
    found = mig_slice(device_name)
    if found is None:
        return 1.0
    if multi_processor_count and ref.multiprocessors:
        return min(1.0, multi_processor_count / ref.multiprocessors)
    if ref.mig_compute_slices:
        return found.compute_slices / ref.mig_compute_slices
    return None


@lru_cache(maxsize=4)
def load_references(directory: Path = REFERENCE_DIR) -> tuple[GpuReference, ...]:
    return tuple(
        GpuReference.model_validate(json.loads(path.read_text())) for path in sorted(directory.glob("*.json"))
    )


def reference_for(
    device_name: str, references: tuple[GpuReference, ...] | None = None
) -> GpuReference | None:
    for ref in references if references is not None else load_references():
        if ref.matches(device_name):
            return ref
    return None


def _rung_precision(settings: RungSettings | None) -> str | None:
    if settings is None:
        return None
    if settings.amp_bf16:
        return "bf16"
    if settings.amp_fp16:
        return "fp16"
    return "tf32" if settings.tf32 else "fp32"


def with_peak_share(bench: BenchResult, ref: GpuReference | None) -> BenchResult:
    """A copy of ``bench`` whose rungs carry achieved / peak TFLOP/s, where a peak is recorded.
    A MIG slice is measured against its share of the card's peak."""
    if ref is None or ref.peak_tflops is None or bench.device.type != "cuda":
        return bench
    fraction = mig_fraction(ref, bench.device.name, bench.device.multi_processor_count)
    if fraction is None:
        return bench
    workloads = []
    for work in bench.workloads:
        rungs = []
        for rung in work.rungs:
            precision = _rung_precision(rung.settings)
            peak = getattr(ref.peak_tflops, precision) if precision else None
            share = rung.tflops / (peak * fraction) if rung.tflops and peak else None
            rungs.append(rung.model_copy(update={"peak_share": share}))
        workloads.append(work.model_copy(update={"rungs": rungs}))
    return bench.model_copy(update={"workloads": workloads})


def compare(
    bench: BenchResult, *, min_ratio: float, references: tuple[GpuReference, ...] | None = None
) -> list[Comparison]:
    """Each workload's best comparable rung against the reference figures for this GPU model.

    Only single-process GPU runs at the reference's image size are compared; a reference marked
    ``use_for_threshold: false`` is shown but never fails the run."""
    if bench.device.type != "cuda" or bench.world_size != 1:
        return []
    ref = reference_for(bench.device.name, references)
    if ref is None:
        return []
    # A MIG slice shares the card's name: compare it with its share of the whole-GPU figure, for
    # information only. Throughput does not scale exactly with the slice (memory bandwidth, cache
    # and the CPU side do not split the same way), so it never fails the run.
    mig = mig_slice(bench.device.name)
    fraction = mig_fraction(ref, bench.device.name, bench.device.multi_processor_count) if mig else 1.0
    note = None
    if mig is not None:
        share = f"{fraction:.2f} of the GPU" if fraction else "an unknown share of the GPU"
        note = (
            f"MIG slice {mig.profile} ({share}): the reference is a whole-GPU figure, scaled to the "
            "slice for information; not a pass/fail floor"
        )
    results: list[Comparison] = []
    for work in bench.workloads:
        for figure in ref.throughput:
            if figure.workload != work.name or figure.image_size != work.image_size:
                continue
            eligible = [
                r
                for r in work.rungs
                if r.status == "ok"
                and r.images_per_s
                and (r.name in figure.comparable_rungs or not figure.use_for_threshold)
            ]
            best = max(eligible, key=lambda r: r.images_per_s or 0.0, default=None)
            measured = best.images_per_s if best else None
            scale = (fraction or 0.0) if mig else 1.0
            reference = figure.images_per_s * scale
            high = figure.images_per_s_high * scale if figure.images_per_s_high else None
            ratio = measured / reference if measured and reference else None
            gating = figure.use_for_threshold and mig is None
            if not gating:
                status: CheckStatus = "SKIP"
            elif ratio is None or ratio < min_ratio:
                status = "FAIL"
            else:
                status = "PASS"
            results.append(
                Comparison(
                    workload=work.name,
                    gpu_model=ref.gpu_model,
                    reference_images_per_s=reference,
                    reference_images_per_s_high=high,
                    source=figure.source,
                    conditions=figure.conditions,
                    measured_rung=best.name if best else None,
                    measured_images_per_s=measured,
                    ratio=ratio,
                    min_ratio=min_ratio,
                    gating=gating,
                    status=status,
                    note=note,
                )
            )
    return results


# --------------------------------------------------------------------------- rendering

_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "red bold", "SKIP": "dim"}


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


def _rung_note(rung: RungResult, requested_batch: int) -> str:
    notes = []
    if rung.compile_s:
        notes.append(f"compile {rung.compile_s:.0f} s")
    if rung.settings is not None and rung.settings.amp_fp16:
        notes.append("fp16")
    if rung.batch_size and rung.batch_size != requested_batch:
        retries = f" after {rung.oom_retries} out-of-memory retries" if rung.oom_retries else ""
        notes.append(f"batch {rung.batch_size}{retries}")
    return ", ".join(notes)


def render(report: VerifyReport) -> Group:
    """Tables for people: preflight, environment, ladder per workload, comparison, verdict."""
    parts: list[Any] = [_title(report)]
    if report.preflight:
        parts.append(_preflight_table(report.preflight))
    if report.probe is not None:
        parts.append(_probe_table(report.probe))
    if report.bench is not None:
        parts += [_workload_table(work) for work in report.bench.workloads]
        ddp = report.bench_ddp.distributed if report.bench_ddp else None
        if ddp:
            parts.append(_ddp_table(ddp))
    elif report.bench_partial:
        parts.append(
            Text(
                f"benchmark stopped early; {len(report.bench_partial)} rung(s) finished before that",
                style="yellow",
            )
        )
    if report.comparisons:
        parts.append(_comparison_table(report.comparisons))
    if report.verdict:
        parts += _verdict_lines(report.verdict)
    return Group(*parts)


def _title(report: VerifyReport) -> Text:
    target = report.target
    return Text(f"envkit verify {target.requested}", style="bold") + Text(
        f"  ({report.mode}{', image ' + target.image if target.image else ''})", style="dim"
    )


def _preflight_table(checks: list[Check]) -> Table:
    table = Table("check", "status", "reason", "fix", title="host preflight", title_justify="left")
    for check in checks:
        status = Text(check.status, style=_STYLE[check.status])
        table.add_row(check.name, status, check.reason, check.fix or "")
    return table


def _probe_table(probe: ProbeResult) -> Table:
    table = Table("item", "value", title="environment (probe)", title_justify="left")
    table.add_row(
        "torch / CUDA / cuDNN / NCCL",
        f"{probe.torch} / {probe.torch_cuda or 'none'} / {probe.cudnn or '-'} / {probe.nccl or '-'}",
    )
    table.add_row("python", probe.python or "-")
    table.add_row(
        "cuda available",
        str(probe.cuda_available) + (f" ({probe.cuda_error})" if probe.cuda_error else ""),
    )
    for dev in probe.devices:
        table.add_row(
            f"gpu {dev.index}",
            f"{dev.name}, {dev.capability}, {_bytes(dev.total_memory_bytes)}, kernels: {dev.arch_reason}",
        )
    if probe.arch_list:
        table.add_row("arch list", " ".join(probe.arch_list))
    for item in probe.numerics:
        status = Text("ok" if item.ok else "FAIL", style="green" if item.ok else "red bold")
        detail = item.error or f"rel. error {_fmt(item.rel_error, '.2e')} (tolerance {item.tolerance:.0e})"
        table.add_row(f"numerics {item.op} {item.precision} on {item.device}", status + Text(f"  {detail}"))
    if probe.fatal:
        table.add_row("fatal", Text(probe.fatal, style="red"))
    return table


def _workload_table(work: WorkloadResult) -> Table:
    gflop = f", {work.flops_per_image / 1e9:.2f} GFLOP/image/step" if work.flops_per_image else ""
    table = Table(
        "rung",
        "images/s",
        "step ms (p10-p90)",
        "peak mem",
        "TFLOP/s",
        "% of peak",
        "speedup",
        "note",
        title=f"{work.name} [{work.impl}] batch {work.batch_size}, {work.image_size}px, "
        f"{work.steps} timed steps after {work.warmup_steps} warm-up{gflop}",
        title_justify="left",
    )
    for rung in work.rungs:
        if rung.status != "ok":
            style = _STYLE["SKIP"] if rung.status == "skipped" else _STYLE["FAIL"]
            table.add_row(rung.name, Text(rung.status, style=style), "", "", "", "", "", rung.reason or "")
            continue
        table.add_row(
            rung.name,
            _fmt(rung.images_per_s),
            f"{_fmt(rung.step_ms_median)} ({_fmt(rung.step_ms_p10)}-{_fmt(rung.step_ms_p90)})",
            _bytes(rung.peak_memory_bytes),
            _fmt(rung.tflops, ".2f"),
            _fmt(rung.peak_share * 100 if rung.peak_share is not None else None, ".0f", "%"),
            _fmt(rung.speedup, ".2f", "x"),
            _rung_note(rung, work.batch_size),
        )
    if work.error:
        table.add_row("error", Text(work.error, style="red"))
    return table


def _ddp_table(dist: DistributedResult) -> Table:
    table = Table(
        "workload",
        "rung",
        "1 process img/s",
        f"{dist.world_size} processes img/s",
        "scaling efficiency",
        title=f"DDP ({dist.backend}); all-reduce {dist.allreduce.bytes / 2**20:.0f} MiB: "
        f"bus bandwidth {dist.allreduce.busbw_gb_s:.2f} GB/s",
        title_justify="left",
    )
    for item in dist.workloads:
        table.add_row(
            item.workload,
            item.rung,
            _fmt(item.single_images_per_s),
            _fmt(item.ddp_images_per_s),
            _fmt(item.scaling_efficiency * 100 if item.scaling_efficiency else None, ".0f", "%"),
        )
    return table


def _comparison_table(comparisons: list[Comparison]) -> Table:
    table = Table(
        "workload",
        "GPU model",
        "measured",
        "reference",
        "ratio",
        "status",
        "source / conditions",
        title="comparison with published figures",
        title_justify="left",
    )
    for comp in comparisons:
        ref = f"{comp.reference_images_per_s:.0f}" + (
            f"-{comp.reference_images_per_s_high:.0f}" if comp.reference_images_per_s_high else ""
        )
        table.add_row(
            comp.workload,
            comp.gpu_model,
            f"{_fmt(comp.measured_images_per_s, '.0f')} ({comp.measured_rung or '-'})",
            ref,
            _fmt(comp.ratio, ".2f"),
            Text(comp.status, style=_STYLE[comp.status]),
            f"{comp.source}; {comp.conditions}" + (f"; {comp.note}" if comp.note else ""),
        )
    return table


def _verdict_lines(verdict: Verdict) -> list[Text]:
    style = "green bold" if verdict.status == "pass" else "red bold"
    lines = [Text(f"{verdict.status.upper()}: {verdict.summary}", style=style)]
    lines += [Text(f"  - {reason}") for reason in verdict.reasons]
    if verdict.fix:
        lines.append(Text(f"  fix: {verdict.fix}", style="cyan"))
    return lines
