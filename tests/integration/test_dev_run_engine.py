"""`envkit run IMAGE -- CMD` on the real engine: the command's exit code is envkit's exit code, so CI
sees a failed training as a failure. Uses the session's one pytorch-cuda:2.8 build."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import BuiltImage, run_envkit


def test_run_exits_with_the_commands_exit_code(torch_image: BuiltImage, tmp_path: Path) -> None:
    env = {"ENVKIT_STATE_DIR": str(tmp_path)}
    result = run_envkit("run", torch_image.tag, "--", "python", "-c", "raise SystemExit(5)", env=env, timeout=300)
    assert result.returncode == 5, result.stderr[-2000:]
    result = run_envkit("run", torch_image.tag, "--", "bash", "-c", "exit 3", env=env, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    result = run_envkit("run", torch_image.tag, "--", "python", "-c", "print('trained')", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained" in result.stdout
