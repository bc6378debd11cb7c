"""The CLI's help texts and its lazy loading.

tests/golden/help/*.txt hold `envkit --help` and every `envkit COMMAND --help` as a user sees them
on an 80-column terminal; restructuring the CLI must not change a byte of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from envkit.cli.app import COMMANDS, cli

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "help"
COMMAND_GOLDENS = sorted(p.stem for p in GOLDEN.glob("*.txt") if p.stem != "envkit")


def _envkit(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO)}
    env.pop("ENVKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "envkit", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )


def test_top_level_help_is_unchanged() -> None:
    result = _envkit("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (GOLDEN / "envkit.txt").read_text()


@pytest.mark.parametrize("command", COMMAND_GOLDENS)
def test_command_help_is_unchanged(command: str) -> None:
    result = _envkit(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (GOLDEN / f"{command}.txt").read_text()


def test_every_command_has_a_golden_help() -> None:
    with click.Context(cli) as ctx:
        assert sorted(cli.list_commands(ctx)) == COMMAND_GOLDENS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_table_entry_names_a_command_whose_help_matches_its_summary(name: str) -> None:
    with click.Context(cli) as ctx:
        command = cli.get_command(ctx, name)
    assert isinstance(command, click.Command)
    assert command.name == name
    summary = COMMANDS[name][2]
    assert command.get_short_help_str(limit=1000) == click.Command(name, help=summary).get_short_help_str(1000)


def test_unknown_command_is_a_usage_error() -> None:
    result = _envkit("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr


HEAVY_PACKAGES = ("envkit.verify", "envkit.image.seal", "envkit.dev", "envkit.record")


def test_render_imports_only_what_it_needs(tmp_path: Path) -> None:
    """`envkit render` must not pay for verify, seal, dev containers or the manifest code."""
    output = tmp_path / "Dockerfile"
    script = (
        "import json, sys\n"
        "from envkit.cli.app import main\n"
        f"code = main(['render', 'pytorch-cuda:2.8', '-o', {str(output)!r}])\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "ENVKIT_CA_BUNDLE"):
        env.pop(var, None)  # the golden Dockerfile is rendered without a CA bundle
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert output.read_text() == (REPO / "tests" / "golden" / "pytorch-cuda-2.8.Dockerfile").read_text()
    loaded = [m for m in report["modules"] if m.startswith(HEAVY_PACKAGES)]
    assert loaded == []
    assert "envkit.cli.image" in report["modules"]
    assert not {"envkit.cli.record", "envkit.cli.verify", "envkit.cli.dev"} & set(report["modules"])
