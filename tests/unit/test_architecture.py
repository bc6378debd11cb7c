"""The layout's rules: the pipeline's import direction, and what `make build` installs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.fail("lint-imports is missing: install the test extra (make test-venv)")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout
    assert result.stdout.count("KEPT") >= 3


def test_make_build_installs_nothing_only_the_tests_need() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(["make", "-n", "-B", "build"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "envkit build" in plan.stdout or "$(ENVKIT) build" in plan.stdout or "/envkit build" in plan.stdout
    for test_only in ("test-deps.sh", ".[test]", "torch==", "chromium"):
        assert test_only not in plan.stdout, f"make build runs {test_only!r}:\n{plan.stdout}"
    test_plan = subprocess.run(["make", "-n", "-B", "test"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "test-deps.sh" in test_plan.stdout and ".[test]" in test_plan.stdout
