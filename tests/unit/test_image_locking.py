"""``check_locks``: fresh, stale and missing locks in a temporary catalog (no network, no engine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envkit.errors import IntegrityError
from envkit.image.locking import LockStatus, check_locks
from envkit.resources import images_dir


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "images"
    (root / "resnet").mkdir(parents=True)
    for suffix in (".yaml", ".lock"):
        shutil.copy(images_dir() / "resnet" / f"2.8{suffix}", root / "resnet" / f"2.8{suffix}")
    monkeypatch.setenv("ENVKIT_IMAGES_DIR", str(root))
    return root


def test_the_committed_lock_is_fresh(images: Path) -> None:
    assert check_locks() == [LockStatus("resnet:2.8", "fresh")]


def test_a_lock_is_missing_when_there_is_no_file(images: Path) -> None:
    (images / "resnet" / "2.8.lock").unlink()
    assert check_locks(["resnet:2.8"]) == [LockStatus("resnet:2.8", "missing")]


def test_a_lock_is_stale_once_its_spec_changes(images: Path) -> None:
    spec = images / "resnet" / "2.8.yaml"
    spec.write_text(spec.read_text().replace("ResNet training", "ResNet training, edited"))
    assert check_locks() == [LockStatus("resnet:2.8", "stale")]


def test_a_lock_that_claims_the_digest_but_drops_a_pin_exits_5(images: Path) -> None:
    lock_path = images / "resnet" / "2.8.lock"
    data = json.loads(lock_path.read_text())
    data["packages"].pop("tensorboard")
    lock_path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="tensorboard") as info:
        check_locks()
    assert info.value.exit_code == 5
