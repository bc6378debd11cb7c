"""``envkit doctor``: which catalog images this host's driver and GPUs can run (envkit.verify.doctor)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from envkit.cli import console
from envkit.cli.matrix import cell


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def doctor_cmd(as_json: bool) -> None:
    """Say which catalog images can run on this host's driver and GPUs."""
    from envkit.verify.doctor import doctor as run_doctor

    report = run_doctor()
    if as_json:
        console.out.print_json(json.dumps(report.to_json()))
        return
    host = report.host
    if not host.has_gpu:
        console.out.print(f"This host has no usable NVIDIA GPU: {host.problem}.")
        console.out.print("GPU images can be built here but not run; CPU-only images run.")
    else:
        console.out.print(f"Driver {host.driver} (read through {host.source})")
        for gpu in host.gpus:
            memory = f", {gpu.memory_mib} MiB" if gpu.memory_mib else ""
            sm = gpu.sm or "compute capability unknown"
            console.out.print(f"  GPU {gpu.index}: {gpu.name}, {sm}{memory}")
    table = Table(title="catalog images on this host")
    for column in ("image", "torch", "cuda", "min driver", "runs", "why"):
        table.add_column(column, overflow="fold")
    verdict = {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]unknown[/]"}
    for fit in report.fits:
        why = "; ".join(fit.reasons + fit.notes) or "-"
        table.add_row(fit.image, fit.torch, fit.cuda, cell(fit.min_driver), verdict[fit.runs], why)
    console.out.print(table)
