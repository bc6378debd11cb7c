"""The command line: one module per command group, loaded lazily by the group in ``app``."""

from envkit.cli.app import cli, main

__all__ = ["cli", "main"]
