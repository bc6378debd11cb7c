"""Hashed locks: a real uv resolution, the lock file round trip and staleness."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from envkit.errors import IntegrityError, NetworkError, UsageError
from envkit.lock import python as locks

HASHED_TEXT = """\
idna==3.10 \\
    --hash=sha256:12f65c9b470abda6dc35cf8e63cc574b1c52b11df2c86030af0ac09b01b13ea9 \\
    --hash=sha256:946d195a0d259cbba61165e88e65941f16e9b36ea6ddb97f00452bae8b1287d3
    # via requests
Typing_Extensions==4.12.2 ; python_version < "3.13" \\
    --hash=sha256:04e5ca0351e0f3f85c6853954072df659d0d13fac324d0072316b67d7794700d \\
    --hash=sha256:1a7ead55c7e559dd4dee8856e3a88b41225abfe1ce8df57b7c13915fe121ffb8
"""


def _sample_lock(**overrides) -> locks.LockFile:
    fields = {
        "spec_digest": "sha256:" + "a" * 64,
        "source_date_epoch": 1735689600,
        "base": {"suite": "bookworm", "ref": "envkit-base:bookworm"},
        "apt": {"python3": "3.11.2-1+b1"},
        "python_requirements": HASHED_TEXT,
        "packages": locks.parse_locked(HASHED_TEXT),
    }
    fields.update(overrides)
    return locks.LockFile(**fields)


def test_parse_locked_reads_versions_and_every_hash():
    parsed = locks.parse_locked(HASHED_TEXT)
    assert parsed == {
        "idna": (
            "3.10",
            [
                "12f65c9b470abda6dc35cf8e63cc574b1c52b11df2c86030af0ac09b01b13ea9",
                "946d195a0d259cbba61165e88e65941f16e9b36ea6ddb97f00452bae8b1287d3",
            ],
        ),
        "typing-extensions": (
            "4.12.2",
            [
                "04e5ca0351e0f3f85c6853954072df659d0d13fac324d0072316b67d7794700d",
                "1a7ead55c7e559dd4dee8856e3a88b41225abfe1ce8df57b7c13915fe121ffb8",
            ],
        ),
    }


def test_lock_round_trip_is_exact(tmp_path):
    lock = _sample_lock()
    path = tmp_path / "images" / "pytorch-cuda" / "2.8.lock"
    locks.write_lock(path, lock)
    assert locks.read_lock(path) == lock
    data = json.loads(path.read_text())
    assert data["schema_version"] == locks.LOCK_SCHEMA_VERSION
    assert data["packages"]["idna"] == {"version": "3.10", "hashes": list(lock.packages["idna"].hashes)}
    assert [p.name for p in path.parent.iterdir()] == ["2.8.lock"]  # no temporary file left behind
    assert locks.lock_digest(lock) == locks.lock_digest(locks.read_lock(path))
    assert locks.lock_digest(lock) != locks.lock_digest(_sample_lock(apt={"python3": "3.11.2-1"}))


def test_write_lock_replaces_atomically_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "2.8.lock"
    locks.write_lock(path, _sample_lock())
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        locks.write_lock(path, _sample_lock(source_date_epoch=1))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["2.8.lock"]


def test_staleness_follows_the_spec_digest():
    lock = _sample_lock()
    assert not locks.is_stale(lock, "sha256:" + "a" * 64)
    assert locks.is_stale(lock, "sha256:" + "b" * 64)
    assert locks.is_stale(_sample_lock(schema_version=0), "sha256:" + "a" * 64)


def test_read_lock_refuses_missing_and_tampered_files(tmp_path):
    with pytest.raises(UsageError):
        locks.read_lock(tmp_path / "absent.lock")
    bad = tmp_path / "bad.lock"
    bad.write_text('{"schema_version": 1, "spec_digest": "x"}')
    with pytest.raises(IntegrityError) as caught:
        locks.read_lock(bad)
    assert caught.value.exit_code == 5
    extra = tmp_path / "extra.lock"
    extra.write_text(json.dumps({**json.loads(_sample_lock().model_dump_json()), "surprise": 1}))
    with pytest.raises(IntegrityError):
        locks.read_lock(extra)


needs_uv = pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")


@needs_uv
def test_uv_locks_a_small_pure_python_package_with_hashes(tmp_path):
    text = locks.lock_requirements(["six==1.16.0"], python="3.11")
    parsed = locks.parse_locked(text)
    assert list(parsed) == ["six"]
    version, hashes = parsed["six"]
    assert version == "1.16.0"
    # sha256 of six-1.16.0-py2.py3-none-any.whl in PyPI's simple index
    assert "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254" in hashes
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    lock = _sample_lock(python_requirements=text, packages=parsed)
    locks.write_lock(tmp_path / "x.lock", lock)
    assert locks.read_lock(tmp_path / "x.lock").packages["six"].version == "1.16.0"


@needs_uv
def test_unreachable_index_is_a_network_error():
    with pytest.raises(NetworkError) as caught:
        locks.lock_requirements(["six"], python="3.11", index_url="http://127.0.0.1:9/simple")
    assert caught.value.exit_code == 6
