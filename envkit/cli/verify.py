"""``envkit verify``: host preflight, in-container probe and benchmark (envkit.verify.runner)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from envkit.errors import UsageError
from envkit.events import Event
from envkit.incontainer.probe import WORKLOADS
from envkit.verify.runner import DEFAULT_TIMEOUT_S, VerifyOptions, raise_for_verdict
from envkit.verify.runner import verify as run_verify


def parse_gpus(value: str) -> int | None:
    """``all`` -> None (every GPU), ``N`` -> N >= 1."""
    text = value.strip().lower()
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--gpus {value!r}: expected 'all' or a positive number")
    return int(text)


def parse_workloads(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))
    unknown = [name for name in names if name not in WORKLOADS]
    if not names or unknown:
        raise UsageError(f"--workload {value!r}: known workloads are {', '.join(WORKLOADS)}")
    return names


@click.command("verify")
@click.argument("target", metavar="NAME|IMAGE", required=False)
@click.option(
    "--gpus", default="all", show_default=True, help="GPUs to use: all or N (N > 1 adds a DDP run)."
)
@click.option("--cpu", is_flag=True, help="No GPU: small CPU benchmark (CI). With --gpus 2, DDP over gloo.")
@click.option("--workload", default=",".join(WORKLOADS), show_default=True, help="Comma-separated workloads.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON report to FILE ('-' for stdout).",
)
@click.option("--native", is_flag=True, help="Run in this Python environment, without Docker.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds per stage (probe, benchmark) before it is killed.",
)
@click.option("--compile", "use_compile", is_flag=True, help="Add the torch.compile rung.")
@click.option(
    "--impl",
    type=click.Choice(["builtin", "ultralytics"]),
    default="builtin",
    show_default=True,
    help="YOLO model: the built-in YOLOv8s-shaped one, or ultralytics' when the image has it.",
)
@click.option(
    "--min-ratio",
    type=click.FloatRange(min=0),
    default=0.7,
    show_default=True,
    help="Fail below this share of the reference throughput for the GPU model.",
)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Timed steps per rung.")
def verify_cmd(
    target: str | None,
    gpus: str,
    cpu: bool,
    workload: str,
    json_path: Path | None,
    native: bool,
    timeout_s: float,
    use_compile: bool,
    impl: str,
    min_ratio: float,
    steps: int | None,
) -> None:
    """Check that NAME|IMAGE runs on this host and trains at the speed the GPU allows.

    Exit 7 when the host is not ready for the image (no NVIDIA runtime, driver too old, missing
    architecture, torch without CUDA); exit 8 when numerics fail, the benchmark is too slow or
    does not finish within --timeout. The JSON report is written in every case.
    """
    from envkit.cli import console  # noqa: PLC0415 - keeps `envkit --help` fast

    options = VerifyOptions(
        target=target,
        gpus=parse_gpus(gpus),
        cpu=cpu,
        workloads=parse_workloads(workload),
        native=native,
        timeout_s=timeout_s,
        compile=use_compile,
        impl=impl,
        min_ratio=min_ratio,
        steps=steps,
    )

    def show(event: Event) -> None:
        if event.message.startswith("[bench]"):
            console.info("  " + event.message)

    report = run_verify(options, show=show)
    if json_path is not None:
        if str(json_path) == "-":
            sys.stdout.write(report.to_json())
        else:
            from envkit.atomic import write_text  # noqa: PLC0415

            write_text(json_path, report.to_json())
    from envkit.verify.report import render  # noqa: PLC0415

    console.console.print(render(report))
    raise_for_verdict(report)
