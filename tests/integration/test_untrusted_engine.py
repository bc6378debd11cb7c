"""Untrusted bundles against a real engine: a base archive's own tags never move a local tag.

Two tiny images (a single-file layer written in Python) stand in for a bundle's base; nothing is
built and nothing larger than a few KB is loaded.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from pathlib import Path

import docker.errors
import pytest

from envkit.engine.client import find_image, inspect_image
from envkit.engine.dockerarchive import archive_stream, canonical_json, load_image
from envkit.engine.tarstream import tar_bytes
from envkit.record.bundle import BASE_NAME, BundleIndex, OpenBundle, load_base

pytestmark = pytest.mark.docker


def _tiny(tmp_path: Path, marker: str) -> tuple[dict, str, Path]:  # type: ignore[type-arg]
    layer = tmp_path / f"{marker}.tar"
    layer.write_bytes(tar_bytes([("etc", None), ("etc/envkit-untrusted", marker.encode())]))
    diff_id = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    config = {
        "architecture": "amd64", "os": "linux", "created": "2020-09-13T12:26:40Z",
        "config": {"Labels": {"io.envkit.test": "untrusted"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2020-09-13T12:26:40Z", "created_by": "envkit test"}],
    }
    return config, diff_id, layer


def test_bundle_base_archive_does_not_move_an_existing_tag(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    victim = f"envkit-test/untrusted-victim:{uuid.uuid4().hex[:8]}"
    base_ref = f"envkit-test/untrusted-base:{uuid.uuid4().hex[:8]}"
    mine_config, mine_diff, mine_layer = _tiny(tmp_path, "mine-" + uuid.uuid4().hex)
    mine = load_image(docker_client, mine_config, [(mine_diff, mine_layer)], [victim])
    config, diff_id, layer = _tiny(tmp_path, "bundle-" + uuid.uuid4().hex)
    config_bytes = canonical_json(config)
    base_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    # The bundle's base archive names the victim's tag, as a hostile bundle would.
    archive = b"".join(archive_stream(config_bytes, [(diff_id, str(layer))], epoch=0, repo_tags=[victim]))
    path = tmp_path / "b.bundle"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(BASE_NAME)
        info.size = len(archive)
        tar.addfile(info, io.BytesIO(archive))
    index = BundleIndex(1, "sha256:" + "3" * 64, "sha256:" + "4" * 64, base_ref, base_id, {}, {})
    try:
        list(load_base(docker_client, OpenBundle(path, index, "{}")))
        assert inspect_image(docker_client, victim)["Id"] == mine
        assert inspect_image(docker_client, base_ref)["Id"] == base_id
        assert victim not in (inspect_image(docker_client, base_id).get("RepoTags") or [])
    finally:
        for ref in (victim, base_ref, mine, base_id):
            try:
                docker_client.api.remove_image(ref, force=True)
            except docker.errors.APIError:
                pass
    assert find_image(docker_client, base_id) is None
