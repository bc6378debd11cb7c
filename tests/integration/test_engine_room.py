"""The engine's few image verbs and the docker-archive reader/writer against a real engine.

One tiny image (a single-file layer written in Python) is loaded, read back with `docker save`,
tagged and removed; nothing is built.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import docker.errors
import pytest

from envkit.engine.client import find_image, image_exists, inspect_image, tag_image
from envkit.engine.dockerarchive import canonical_json, load_image, read_saved, save_stream
from envkit.engine.tarstream import tar_bytes
from envkit.errors import UsageError

pytestmark = pytest.mark.docker


def test_load_save_tag_round_trip(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tar_bytes([("etc", None), ("etc/envkit-engine-room", uuid.uuid4().hex.encode())]))
    diff_id = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2020-09-13T12:26:40Z",
        "config": {"Labels": {"io.envkit.test": "engine-room"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2020-09-13T12:26:40Z", "created_by": "envkit test"}],
    }
    name = f"envkit-test/engine-room:{uuid.uuid4().hex[:8]}"
    moved = f"envkit-test/engine-room:{uuid.uuid4().hex[:8]}-moved"
    image_id = load_image(docker_client, config, [(diff_id, layer)], [name])
    try:
        assert image_id == "sha256:" + hashlib.sha256(canonical_json(config)).hexdigest()
        assert inspect_image(docker_client, name)["Id"] == image_id
        assert image_exists(docker_client, image_id)

        saved = read_saved(save_stream(docker_client, image_id),
                           lambda _m, info, data: "sha256:" + hashlib.sha256(data.read(info.size)).hexdigest())
        assert saved.layers == [diff_id]
        assert saved.config_bytes == canonical_json(config)

        tag_image(docker_client, image_id, moved)
        assert inspect_image(docker_client, moved)["Id"] == image_id
    finally:
        for ref in (moved, name, image_id):
            try:
                docker_client.api.remove_image(ref, force=True)
            except docker.errors.APIError:
                pass
    assert find_image(docker_client, image_id) is None
    with pytest.raises(UsageError, match="not found"):
        inspect_image(docker_client, name)
