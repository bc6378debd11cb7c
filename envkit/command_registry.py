"""Commands defined in feature modules, attached to the CLI group in one place."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    for command in _commands():
        group.add_command(command)


def _commands() -> list[click.Command]:
    return []
