"""``envkit verify``: host preflight, in-container probe and benchmark (envkit.verify.runner)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from envkit.errors import UsageError
from envkit.events import Event
from envkit.incontainer.probe import WORKLOADS
from envkit.verify.runner import DEFAULT_TIMEOUT_S, VerifyOptions, raise_for_verdict
from envkit.verify.runner import verify as run_verify

if TYPE_CHECKING:
    from envkit.verify.fleet import FleetReport


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
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="ENGINE",
    help="Verify on this engine instead (repeatable, run in parallel): ssh://[user@]host[:port], "
    "unix:///path.sock, tcp://host[:port] or a Docker context name.",
)
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
    hosts: tuple[str, ...],
) -> None:
    """Check that NAME|IMAGE runs on this host and trains at the speed the GPU allows.

    Exit 7 when the host is not ready for the image (no NVIDIA runtime, driver too old, missing
    architecture, torch without CUDA); exit 8 when numerics fail, the benchmark is too slow or
    does not finish within --timeout. The JSON report is written in every case.

    With --host, the image goes from this machine's engine to each host (pulled by digest when a
    registry location is recorded, else streamed) and is verified on all of them in parallel: one
    report per host, a summary table, and the worst host's exit code.
    """
    from envkit.cli import console  # noqa: PLC0415 - keeps `envkit --help` fast

    engines = None
    if hosts:
        from envkit.engine.client import parse_hosts  # noqa: PLC0415

        engines = parse_hosts(hosts)  # every form checked before any work
        if native:
            raise UsageError("--native runs in this Python environment; it cannot be combined with --host")

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

    if engines is not None:
        _verify_fleet(options, engines, json_path)
        return

    def show(event: Event) -> None:
        if event.message.startswith("[bench]"):
            console.info("  " + event.message)

    report = run_verify(options, show=show)
    _write_json(json_path, report.to_json())
    from envkit.verify.report import render  # noqa: PLC0415

    console.console.print(render(report))
    raise_for_verdict(report)


def _write_json(json_path: Path | None, text: str) -> None:
    if json_path is None:
        return
    if str(json_path) == "-":
        sys.stdout.write(text)
    else:
        from envkit.atomic import write_text  # noqa: PLC0415

        write_text(json_path, text)


def _verify_fleet(options: VerifyOptions, engines: list[Any], json_path: Path | None) -> None:
    from rich.text import Text  # noqa: PLC0415

    from envkit.cli import console  # noqa: PLC0415
    from envkit.untrusted import clean  # noqa: PLC0415
    from envkit.verify.fleet import raise_for_fleet, verify_fleet  # noqa: PLC0415
    from envkit.verify.report import render  # noqa: PLC0415

    def show(event: Event) -> None:
        """One line per event, prefixed by its host; of the scripts' output, the benchmark's."""
        if event.kind == "log" and not event.message.startswith("[bench]"):
            return
        console.info(f"{event.data.get('host', '?')}: {event.message}")

    report = verify_fleet(options, engines, show=show)
    _write_json(json_path, report.to_json())
    for host in report.hosts:
        console.console.rule(Text(clean(f"host {host.host}")), style="dim")
        if host.report is not None:
            console.console.print(render(host.report))
        else:
            console.console.print(Text(clean(f"{host.status.upper()}: {host.summary}"), style="red bold"))
            if host.error is not None and host.error.hint:
                console.console.print(Text(clean(f"  fix: {host.error.hint}"), style="cyan"))
    console.console.print(summary_table(report))
    raise_for_fleet(report)


def summary_table(report: FleetReport) -> Any:
    """The hosts side by side: how the image got there, GPU, driver, verdict, images/s per workload;
    below it, each failed host and why."""
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    from envkit.untrusted import clean  # noqa: PLC0415

    workloads = list(dict.fromkeys(name for host in report.hosts for name in host.images_per_s))
    table = Table(
        "host", "image", "GPU", "driver", "verdict", *[f"{name} img/s" for name in workloads],
        title=f"{report.target} on {len(report.hosts)} hosts", title_justify="left",
    )
    for host in report.hosts:
        style = "green" if host.exit_code == 0 else "red bold"
        table.add_row(
            Text(clean(host.host)),
            host.transfer.method if host.transfer else "-",
            Text(clean(host.gpu or "-")),
            host.driver or "-",
            Text(f"{host.status} ({host.exit_code})", style=style),
            *[f"{host.images_per_s[name]:.1f}" if name in host.images_per_s else "-" for name in workloads],
        )
    lines: list[Any] = [table]
    for host in report.failed:
        lines.append(Text(clean(f"{host.host}: exit {host.exit_code}, {host.summary}"), style="red"))
    lines.append(Text(f"exit code {report.exit_code} (the worst host's)", style="bold"))
    return Group(*lines)
