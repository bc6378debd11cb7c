"""Manifests: canonical JSON with a digest over its content; edits, truncation and newer schemas refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envkit.errors import IntegrityError, UsageError
from envkit.lock.python import LockFile
from envkit.record.manifest import (
    SCHEMA_VERSION,
    ImageRecord,
    Manifest,
    StackVersions,
    content_digest,
    read_manifest,
    write_manifest,
)
from envkit.record.snapshot import python_packages_against_lock
from envkit.spec.model import ImageSpec


def make_spec(**fields: object) -> ImageSpec:
    """A valid spec; ``fields`` override the top-level fields."""
    data: dict[str, object] = {
        "name": "x", "tag": "1", "python": "3.11", "base": {"bootstrap": {"suite": "bookworm"}},
        "torch": {"version": "2.8.0", "cuda": "12.8"}, "source_date_epoch": 1761955200,
    }
    return ImageSpec.model_validate({**data, **fields})


def make_lock(spec: ImageSpec, packages: dict[str, dict[str, object]], **fields: object) -> LockFile:
    # The requirements text says what the package table says, as a real lock's does.
    text = "".join(
        f"{name}=={entry['version']} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in entry["hashes"]) + "\n"
        for name, entry in sorted(packages.items())
    )
    data: dict[str, object] = {
        "spec_digest": spec.digest(), "source_date_epoch": spec.source_date_epoch,
        "python_requirements": text, "packages": packages,
    }
    return LockFile.model_validate({**data, **fields})


def _manifest() -> Manifest:
    installed = {
        "torch": {"version": "2.8.0", "record_sha256": "sha256:" + "1" * 64},
        "six": {"version": "1.17.0", "record_sha256": "sha256:" + "2" * 64},
    }
    spec = make_spec()
    lock = make_lock(spec, {"torch": {"version": "2.8.0", "hashes": ["a" * 64]},
                            "six": {"version": "1.16.0", "hashes": ["b" * 64]}})
    packages, mismatches = python_packages_against_lock(installed, lock)
    return Manifest(
        schema_version=SCHEMA_VERSION,
        envkit_version="0.1.0",
        source="images/pytorch-cuda/2.8.yaml",
        image=ImageRecord(id="sha256:" + "c" * 64, layers=["sha256:" + "d" * 64], tags=["envkit/x:1"], size=10),
        spec=spec,
        spec_digest=spec.digest(),
        lock=lock,
        base={"ref": "envkit/debian:bookworm"},
        source_date_epoch=1761955200,
        apt_packages={"python3.11": "3.11.2-6+deb12u6"},
        python_packages=packages,
        lock_mismatches=mismatches,
        stack=StackVersions(torch="2.8.0", cuda="12.8", cudnn="9.10.2.21", nccl="2.27.3", python="3.11",
                            arch_list=["sm_90"]),
        env=["PATH=/opt/venv/bin"],
        labels={"io.envkit.name": "x:1"},
    )


def test_lock_mismatches_are_reported() -> None:
    manifest = _manifest()
    assert manifest.lock_mismatches == ["six: installed 1.17.0, lock 1.16.0"]
    assert manifest.python_packages["torch"].lock_hashes == ["a" * 64]


def test_round_trip_is_canonical_and_digest_checked(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_manifest(path, _manifest())
    data = json.loads(path.read_text())
    assert list(data) == sorted(data)
    assert data["digest"] == content_digest(data)
    loaded = read_manifest(path)
    assert loaded.image.id == "sha256:" + "c" * 64
    write_manifest(tmp_path / "again.json", loaded)
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_edited_manifest_is_refused_with_exit_5(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_manifest(path, _manifest())
    path.write_text(path.read_text().replace("2.8.0", "2.8.1", 1))
    with pytest.raises(IntegrityError, match="does not match its digest") as info:
        read_manifest(path)
    assert info.value.exit_code == 5


def test_truncated_manifest_is_refused_with_exit_5(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_manifest(path, _manifest())
    path.write_text(path.read_text()[:200])
    with pytest.raises(IntegrityError) as info:
        read_manifest(path)
    assert info.value.exit_code == 5


def _write_edited(tmp_path: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    """A manifest edited after it was sealed, its digest made to match again."""
    data = _manifest().model_dump(mode="json")
    edit(data)
    data["digest"] = content_digest(data)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    return path


def test_newer_schema_is_refused_with_exit_2(tmp_path: Path) -> None:
    path = _write_edited(tmp_path, lambda data: data.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(UsageError, match="schema_version") as info:
        read_manifest(path)
    assert info.value.exit_code == 2


def test_failed_write_keeps_the_previous_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.json"
    write_manifest(path, _manifest())
    before = path.read_text()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(path, _manifest().model_copy(update={"source": "elsewhere"}))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def _catalog_manifest(name: str = "resnet:2.8") -> Manifest:
    """A manifest of a catalog image as snapshot records it (image facts made up)."""
    from envkit.lock.python import read_lock
    from envkit.spec.catalog import load

    ref = load(name)
    manifest = _manifest()
    return manifest.model_copy(update={"spec": ref.spec, "spec_digest": ref.spec.digest(),
                                       "lock": read_lock(ref.lock_path), "source": ref.display})


def test_restore_plans_from_the_manifest_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.image.build import plan_build
    from envkit.record.snapshot import plan_from_manifest

    manifest = _catalog_manifest()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))

    def no_writes(*args: object, **kwargs: object) -> None:
        raise AssertionError("restore planning wrote a file")

    monkeypatch.setattr(Path, "write_text", no_writes)
    monkeypatch.setattr(Path, "write_bytes", no_writes)
    plan = plan_from_manifest(manifest, environ={})
    assert list(tmp_path.iterdir()) == []
    original = plan_build("resnet:2.8", environ={})
    assert plan.dockerfile == original.dockerfile
    assert plan.requirements == original.requirements and plan.lock_digest == original.lock_digest


def test_restore_refuses_a_spec_that_does_not_match_its_digest() -> None:
    from envkit.record.snapshot import plan_from_manifest

    manifest = _catalog_manifest()
    edited = manifest.model_copy(update={"spec": manifest.spec.model_copy(update={"tag": "2.9"})})
    with pytest.raises(IntegrityError, match="digests to"):
        plan_from_manifest(edited, environ={})


def test_restore_refuses_a_lock_made_for_another_spec() -> None:
    from envkit.errors import CompatError
    from envkit.record.snapshot import plan_from_manifest

    manifest = _catalog_manifest()
    other = manifest.lock.model_copy(update={"spec_digest": "sha256:" + "0" * 64})
    with pytest.raises(CompatError, match="stale"):
        plan_from_manifest(manifest.model_copy(update={"lock": other}), environ={})


def test_a_spec_tag_cannot_name_a_path(tmp_path: Path) -> None:
    """The spec is parsed with the spec model, so a tag like ../../x never reaches a file name."""
    path = _write_edited(tmp_path, lambda data: data["spec"].update(tag="../../outside"))
    with pytest.raises(IntegrityError, match="spec.tag") as info:
        read_manifest(path)
    assert info.value.exit_code == 5


def test_manifests_without_a_lock_written_as_an_empty_object_still_read(tmp_path: Path) -> None:
    data = _manifest().model_dump(mode="json")
    data["lock"] = {}
    data["digest"] = content_digest(data)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    assert read_manifest(path).lock is None
