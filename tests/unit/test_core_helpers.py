"""The small shared helpers: canonical JSON, file digests, platform names, label keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from envkit import labels, platforms
from envkit.digests import sha256_file
from envkit.engine.dockerarchive import sha256_file as prefixed_sha256_file
from envkit.errors import UsageError
from envkit.image.base import BasePlan, base_config
from envkit.jsonio import canonical_bytes, canonical_digest, canonical_text
from envkit.spec.model import Bootstrap


def test_canonical_json_matches_the_forms_digests_were_recorded_with() -> None:
    value = {"b": [1, {"d": None, "c": "x"}], "a": "2.8.0"}
    old = json.dumps(value, sort_keys=True, separators=(",", ":"))
    assert canonical_text(value) == old and canonical_bytes(value) == old.encode()
    assert canonical_digest(value) == "sha256:" + hashlib.sha256(old.encode()).hexdigest()
    # Non-ASCII stays UTF-8, as the engine writes image configs and manifests always were.
    assert canonical_bytes({"k": "é"}) == '{"k":"é"}'.encode()


def test_sha256_file_keeps_each_callers_format(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (5 << 20))
    hexdigest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == hexdigest
    assert prefixed_sha256_file(path) == "sha256:" + hexdigest


def test_platform_names() -> None:
    assert platforms.machine("linux/amd64") == "x86_64" and platforms.machine("linux/arm64") == "aarch64"
    assert platforms.architecture("linux/arm64") == "arm64"
    assert platforms.uv_platform("linux/amd64") == "x86_64-manylinux_2_28"
    with pytest.raises(UsageError) as info:
        platforms.machine("windows/amd64")
    assert info.value.exit_code == 2


def test_manylinux_platforms_go_down_from_the_glibc_with_legacy_names() -> None:
    tags = platforms.manylinux_platforms("x86_64", (2, 36))
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-1] == "linux_x86_64"
    assert tags.index("manylinux_2_17_x86_64") + 1 == tags.index("manylinux2014_x86_64")
    assert "manylinux1_x86_64" in tags and "manylinux_2_5_x86_64" in tags
    arm = platforms.manylinux_platforms("aarch64", (2, 36))
    assert arm[-3:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64", "linux_aarch64"]


def test_base_config_takes_the_platform() -> None:
    plan = BasePlan(bootstrap=Bootstrap(), source_date_epoch=0)
    amd64 = base_config(plan, "sha256:" + "0" * 64)
    assert amd64["architecture"] == "amd64"
    assert base_config(plan, "sha256:" + "0" * 64, "linux/amd64") == amd64
    assert base_config(plan, "sha256:" + "0" * 64, "linux/arm64")["architecture"] == "arm64"
    assert amd64["config"]["Labels"][labels.BASE_SUITE] == "bookworm"  # type: ignore[index]


def test_an_amd64_base_keeps_its_tag_and_arm64_gets_its_own() -> None:
    amd64 = BasePlan(bootstrap=Bootstrap(), source_date_epoch=1761955200)
    text = "|".join(["bookworm", "http://deb.debian.org/debian", "minbase", "1761955200"])
    assert amd64.key == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert amd64.tag == "envkit/debian:bookworm-minbase-33760934346d"  # what the catalog locks name
    arm64 = BasePlan(bootstrap=Bootstrap(), source_date_epoch=1761955200, platform="linux/arm64")
    assert arm64.tag != amd64.tag


def test_label_keys_are_envkits() -> None:
    keys = [value for name, value in vars(labels).items() if name.isupper() and name != "PREFIX"]
    assert keys and all(key.startswith(labels.PREFIX) for key in keys)
    assert len(set(keys)) == len(keys)
