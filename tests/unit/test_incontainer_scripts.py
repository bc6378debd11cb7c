"""The in-container package scripts, run natively (this Python) against a venv-like directory."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from envkit.record.drift import REMOVE_SCRIPT
from envkit.record.snapshot import COLLECT_SCRIPT
from envkit.resources import incontainer_dir

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
COLLECT = incontainer_dir() / "collect_packages.py"
REMOVE = incontainer_dir() / "remove_dists.py"


def _site(prefix: Path) -> Path:
    site = prefix / "lib" / f"python{PY}" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    return site


def _dist(prefix: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A dist-info with METADATA and a RECORD listing ``files`` (written under site-packages)."""
    site = _site(prefix)
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    dist = site / f"{re.sub(r'[-.]', '_', name)}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: not-this\n")
    rows = [f"{rel},," for rel in files] + [f"{dist.name}/METADATA,,", f"{dist.name}/RECORD,,"]
    (dist / "RECORD").write_text("\n".join(rows) + "\n")
    return dist


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-S", "-B", str(script), *args], capture_output=True, text=True)


def test_the_strings_sent_to_containers_are_the_files() -> None:
    assert COLLECT_SCRIPT == COLLECT.read_text(encoding="utf-8")
    assert REMOVE_SCRIPT == REMOVE.read_text(encoding="utf-8")


def test_scripts_use_the_standard_library_only() -> None:
    for script in (COLLECT, REMOVE):
        assert "envkit" not in "".join(line for line in script.read_text().splitlines() if "import" in line)


def test_collect_lists_each_distribution_with_its_record_hash(tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    dist = _dist(prefix, "Tiny_Pkg", "1.0", {"tiny_pkg/__init__.py": "X = 1\n"})
    _dist(prefix, "other", "2.5", {"other.py": ""})
    (dist.parent / "broken.dist-info").mkdir()  # no METADATA: skipped only if it has no name
    (dist.parent / "broken.dist-info" / "METADATA").write_text("Version: 9\n")

    result = _run(COLLECT, str(prefix))

    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    record = "sha256:" + hashlib.sha256((dist / "RECORD").read_bytes()).hexdigest()
    assert found["python"] == {
        "other": {"version": "2.5", "record_sha256": found["python"]["other"]["record_sha256"]},
        "tiny-pkg": {"version": "1.0", "record_sha256": record},
    }
    assert isinstance(found["apt"], dict)


def test_collect_without_a_record_says_none_and_an_empty_prefix_lists_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    dist = _dist(prefix, "norecord", "0.1", {})
    (dist / "RECORD").unlink()
    found = json.loads(_run(COLLECT, str(prefix)).stdout)
    assert found["python"] == {"norecord": {"version": "0.1", "record_sha256": None}}
    assert json.loads(_run(COLLECT, str(tmp_path / "empty")).stdout)["python"] == {}


def test_remove_takes_the_listed_files_their_bytecode_and_empty_directories(tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    site = _site(prefix)
    _dist(prefix, "Tiny.Pkg", "1.0", {"tiny_pkg/__init__.py": "", "tiny_pkg/sub/mod.py": ""})
    _dist(prefix, "keep", "1.0", {"keep.py": ""})
    cache = Path(importlib.util.cache_from_source(str(site / "tiny_pkg" / "sub" / "mod.py")))
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"")

    result = _run(REMOVE, str(prefix), "tiny-pkg")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "removed tiny-pkg (Tiny_Pkg-1.0.dist-info)\n"
    assert sorted(p.name for p in site.iterdir()) == ["keep-1.0.dist-info", "keep.py"]


def test_remove_never_touches_a_file_outside_the_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    outside = tmp_path / "outside.txt"
    outside.write_text("stay")
    _dist(prefix, "evil", "1.0", {})
    record = next(_site(prefix).glob("evil-*.dist-info")) / "RECORD"
    record.write_text("../../../../outside.txt,,\n")

    assert _run(REMOVE, str(prefix), "evil").returncode == 0
    assert outside.read_text() == "stay"


def test_remove_fails_naming_what_is_not_installed(tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    _dist(prefix, "present", "1.0", {"present.py": ""})
    result = _run(REMOVE, str(prefix), "present", "ghost", "absent")
    assert result.returncode == 1
    assert "not installed, cannot remove: absent, ghost" in result.stderr
    assert not (_site(prefix) / "present.py").exists()
