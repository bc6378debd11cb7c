"""Commands defined in feature modules, attached to the CLI group in one place."""

from __future__ import annotations

import importlib

import click

# (module, attribute): a click command, or a function returning a list of them. Each module is
# imported only when its file is part of this installation, so a feature can land on its own.
FEATURE_COMMANDS: tuple[tuple[str, str], ...] = (
    ("envkit.repro_cli", "commands"),
    ("envkit.matrix_cli", "matrix"),
    ("envkit.matrix_cli", "doctor"),
    ("envkit.verify.cli", "verify"),
    ("envkit.devrun_cli", "commands"),
)


def register(group: click.Group) -> None:
    for module_name, attribute in FEATURE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        found = getattr(module, attribute)
        for command in found() if not isinstance(found, click.Command) else [found]:
            group.add_command(command)
