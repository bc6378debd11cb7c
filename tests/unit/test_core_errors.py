"""Exit codes mean what the README says: the bare EnvkitError (exit 1) is kept for bugs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from envkit import errors

PACKAGE = Path(errors.__file__).resolve().parent
README_CODES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 130}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "errors.py")


def _names_envkit_error(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "EnvkitError") or (
        isinstance(node, ast.Attribute) and node.attr == "EnvkitError"
    )


def test_no_module_creates_a_bare_envkit_error() -> None:
    """``EnvkitError(...)`` anywhere (raised, returned, stored) would exit 1, "a bug", for a known failure."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _names_envkit_error(node.func):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
            if isinstance(node, ast.Raise) and node.exc is not None and _names_envkit_error(node.exc):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert found == []


def test_no_module_subclasses_envkit_error_directly() -> None:
    """A direct subclass outside errors.py would inherit exit 1; derive from a typed error instead."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(_names_envkit_error(base) for base in node.bases):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert found == []


def _subclasses(cls: type) -> list[type]:
    result = []
    for sub in cls.__subclasses__():
        result += [sub, *_subclasses(sub)]
    return result


@pytest.mark.parametrize("cls", _subclasses(errors.EnvkitError), ids=lambda c: c.__name__)
def test_every_typed_error_has_a_documented_code_other_than_1(cls: type[errors.EnvkitError]) -> None:
    assert cls.exit_code in README_CODES - {0, 1}
    assert cls.label != errors.EnvkitError.label


def test_known_failures_map_to_their_codes() -> None:
    assert errors.DiskFull.exit_code == errors.BuildFailed.exit_code == 4
    assert errors.EngineRefused.exit_code == 4
    assert errors.LockFailed.exit_code == 4
    assert errors.MissingDependency.exit_code == errors.UsageError.exit_code == 2
    from envkit.engine.dockerarchive import load_error as _load_error
    from envkit.engine.tarstream import TarFormatError

    assert TarFormatError.exit_code == errors.IntegrityError.exit_code == 5
    assert isinstance(_load_error("write /var/lib/docker/x: no space left on device"), errors.DiskFull)
    assert isinstance(_load_error("invalid tar header"), errors.EngineRefused)
