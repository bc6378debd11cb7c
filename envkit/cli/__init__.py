"""The command line: one module per command group, attached to the group in ``registry``."""

from envkit.cli.app import cli, main

__all__ = ["cli", "main"]
