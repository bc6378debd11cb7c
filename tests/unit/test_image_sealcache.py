"""The seal cache: an unsealed ID (or build-input digest) -> the sealed image, per engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from envkit.image import sealcache
from envkit.image.seal_policy import POLICY_VERSION
from tests.fakes import FakeClient, FakeImage

UNSEALED = "sha256:" + "a" * 64
SEALED = "sha256:" + "b" * 64


class Engine(FakeClient):
    def __init__(self, engine_id: str, images: dict[str, FakeImage]) -> None:
        super().__init__(images)
        self.engine_id = engine_id

    def info(self) -> dict[str, Any]:
        return {**super().info(), "ID": self.engine_id}


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_cache_lives_under_xdg_cache_home(cache_home: Path) -> None:
    assert sealcache.cache_path() == cache_home / "envkit" / "sealed.json"


def test_a_remembered_seal_is_found_while_the_sealed_image_exists() -> None:
    engine = Engine("one", {SEALED: FakeImage(SEALED)})
    assert sealcache.lookup(engine, UNSEALED) is None
    sealcache.remember(engine, UNSEALED, SEALED)
    assert sealcache.lookup(engine, UNSEALED) == SEALED
    key = f"policy{POLICY_VERSION}:{UNSEALED}"
    assert json.loads(sealcache.cache_path().read_text()) == {"one": {key: SEALED}}


def test_a_record_made_under_another_seal_policy_is_not_used() -> None:
    engine = Engine("one", {SEALED: FakeImage(SEALED)})
    sealcache.cache_path().parent.mkdir(parents=True)
    sealcache.cache_path().write_text(json.dumps({"one": {UNSEALED: SEALED}}))  # before policies had versions
    assert sealcache.lookup(engine, UNSEALED) is None


def test_a_seal_whose_image_is_gone_is_forgotten() -> None:
    sealcache.remember(Engine("one", {}), UNSEALED, SEALED)
    assert sealcache.lookup(Engine("one", {}), UNSEALED) is None


def test_each_engine_has_its_own_record() -> None:
    images = {SEALED: FakeImage(SEALED)}
    sealcache.remember(Engine("one", images), UNSEALED, SEALED)
    assert sealcache.lookup(Engine("two", images), UNSEALED) is None
    other = "sha256:" + "c" * 64
    sealcache.remember(Engine("two", {other: FakeImage(other)}), UNSEALED, other)
    assert sealcache.lookup(Engine("one", images), UNSEALED) == SEALED


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_a_corrupt_cache_file_reads_as_empty_and_is_replaced(text: str) -> None:
    sealcache.cache_path().parent.mkdir(parents=True)
    sealcache.cache_path().write_text(text)
    engine = Engine("one", {SEALED: FakeImage(SEALED)})
    assert sealcache.lookup(engine, UNSEALED) is None
    sealcache.remember(engine, UNSEALED, SEALED)
    assert sealcache.lookup(engine, UNSEALED) == SEALED
