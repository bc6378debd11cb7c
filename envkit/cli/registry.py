"""Commands defined in feature modules, attached to the CLI group in one place."""

from __future__ import annotations

import importlib

import click

# (module, attribute): a click command, or a function returning a list of them. The modules are
# imported only when the CLI starts, so `envkit render` does not pay for verify or seal imports.
FEATURE_COMMANDS: tuple[tuple[str, str], ...] = (
    ("envkit.cli.repro", "commands"),
    ("envkit.cli.matrix", "matrix"),
    ("envkit.cli.matrix", "doctor"),
    ("envkit.cli.verify", "verify"),
    ("envkit.cli.dev", "commands"),
    ("envkit.cli.bundle", "commands"),
    ("envkit.cli.sbom", "sbom"),
)


def register(group: click.Group) -> None:
    for module_name, attribute in FEATURE_COMMANDS:
        found = getattr(importlib.import_module(module_name), attribute)
        for command in [found] if isinstance(found, click.Command) else found():
            group.add_command(command)
