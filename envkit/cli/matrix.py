"""``envkit matrix``: which torch / CUDA / cuDNN / Python builds exist (envkit.spec.compat)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from envkit.cli import console


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value) or "-"
    return str(value)


def _arches(arch_list: list[str]) -> str:
    """sm_70 sm_75 compute_120 -> 70,75,+PTX120: the table stays narrow, --json has the names."""
    short = [a.replace("sm_", "").replace("compute_", "+PTX") for a in arch_list]
    return ",".join(short) or "-"


@click.command("matrix")
@click.option("--torch", "torch_version", metavar="X", help="Only this torch release (2.8 or 2.8.0).")
@click.option("--cuda", metavar="Y", help="Only builds for this CUDA version (12.8, cu128 or cpu).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def matrix_cmd(torch_version: str | None, cuda: str | None, as_json: bool) -> None:
    """Show which torch / CUDA / cuDNN / Python combinations exist."""
    from envkit.spec.compat import matrix_rows

    rows = matrix_rows(torch_version, cuda)
    if as_json:
        console.out.print_json(json.dumps(rows))
        return
    if not rows:
        console.warning("no combination matches (try `envkit matrix` without filters)")
        return
    table = Table(title="torch builds (arch: sm_XX, +PTX compute_XX)")
    for column in ("torch", "vision", "cuda", "variant", "cudnn", "nccl", "python", "arch", "min driver"):
        table.add_column(column, overflow="fold")
    for row in rows:
        pythons = row["python"]
        table.add_row(
            row["torch"],
            cell(row["torchvision"]),
            row["cuda"],
            row["variant"],
            cell(row["cudnn"]),
            cell(row["nccl"]),
            f"{pythons[0]}-{pythons[-1]}" if pythons else "-",
            _arches(row["arch_list"]),
            cell(row["min_driver"]),
        )
    console.out.print(table)
