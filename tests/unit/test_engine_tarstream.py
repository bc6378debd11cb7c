"""The engine room on its own: the in-memory tar writer, the docker-archive reader, and a seal
driven end to end through the fake engine."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from envkit.engine.dockerarchive import archive_stream, read_saved
from envkit.engine.tarstream import buffered, file_chunks, iter_tar, tar_bytes
from envkit.errors import EnvkitError
from envkit.events import Event
from envkit.image.seal import seal_image
from envkit.image.seal_policy import rewrite_layer
from tests.fakes import FakeClient, FakeImage

EPOCH = 1_700_000_000


def test_tar_bytes_is_readable_by_tarfile_and_keeps_modes_and_owner() -> None:
    blob = tar_bytes([("d", None), ("d/run", b"#!/bin/sh\n"), ("d/key", b"s")],
                     mtime=7, modes={"d/key": 0o600}, uid=1000, gid=1000)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert tf.extractfile("d/run").read() == b"#!/bin/sh\n"  # type: ignore[union-attr]
    assert members["d"].isdir() and members["d"].mode == 0o755
    assert (members["d/run"].mode, members["d/key"].mode) == (0o644, 0o600)
    assert {(m.uid, m.gid, m.mtime) for m in members.values()} == {(1000, 1000, 7)}
    assert tar_bytes([("a", b"1")]) == tar_bytes([("a", b"1")])


def _layer(tmp_path: Path, name: str, files: dict[str, bytes]) -> tuple[str, str]:
    path = tmp_path / name
    path.write_bytes(tar_bytes(sorted(files.items())))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(), str(path)


def test_read_saved_hands_each_layer_over_once_in_rootfs_order(tmp_path: Path) -> None:
    one, two = _layer(tmp_path, "1.tar", {"a": b"1"}), _layer(tmp_path, "2.tar", {"b": b"2"})
    config = json.dumps({"rootfs": {"diff_ids": [one[0], two[0], one[0]]}}).encode()
    blob = b"".join(archive_stream(config, [one, two, one], epoch=EPOCH))
    seen: list[str] = []

    def names(member: str, info: tarfile.TarInfo, data) -> list[str]:  # type: ignore[no-untyped-def]
        seen.append(member)
        return [i.name for i, _ in iter_tar(data)]

    saved = read_saved(buffered([blob[i : i + 333] for i in range(0, len(blob), 333)]), names)
    assert saved.config_bytes == config
    assert saved.layers == [["a"], ["b"], ["a"]]
    assert len(seen) == 2


def test_read_saved_without_a_manifest_is_an_error() -> None:
    with pytest.raises(EnvkitError, match="no manifest.json"):
        read_saved(buffered([tar_bytes([("other.json", b"{}")])]), lambda *_: None)


def test_a_file_that_changes_while_sent_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with pytest.raises(EnvkitError, match="changed while being sent"):
        list(file_chunks(path, 4))


def test_seal_through_the_fake_engine_loads_the_rewritten_layer_and_moves_the_tag(tmp_path: Path) -> None:
    files = {"etc/machine-id": b"abc\n", "opt/app.py": b"x = 1\n", "var/log/build.log": b"noise"}
    built = tmp_path / "built.tar"
    built.write_bytes(tar_bytes(sorted(files.items()), mtime=EPOCH + 500))
    diff_id = "sha256:" + hashlib.sha256(built.read_bytes()).hexdigest()
    raw = {"config": {"Hostname": "builder"}, "created": "2031-01-01T00:00:00Z",
           "history": [{"created_by": "COPY . /"}], "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config = json.dumps(raw).encode()
    unsealed = FakeImage("sha256:" + hashlib.sha256(config).hexdigest(), tags=["demo:1"],
                         attrs={"Size": 10, "RootFS": {"Layers": [diff_id]}})
    client = FakeClient({"demo:1": unsealed}, saved=list(archive_stream(config, [(diff_id, str(built))], epoch=0)))

    shown: list[Event] = []
    result = seal_image(client, "demo:1", source_date_epoch=EPOCH, tmp_dir=tmp_path, show=shown.append)

    with tarfile.open(fileobj=io.BytesIO(client.api.loaded)) as tf:
        entry = json.loads(tf.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        sealed_config = tf.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        layer = tf.extractfile(entry["Layers"][0]).read()  # type: ignore[union-attr]
    with (tmp_path / "expected.tar").open("wb+") as out:
        expected = rewrite_layer(io.BufferedReader(io.BytesIO(built.read_bytes())), out, epoch=EPOCH)
    assert result.image_id == "sha256:" + hashlib.sha256(sealed_config).hexdigest()
    assert result.diff_ids == (expected.diff_id,) == ("sha256:" + hashlib.sha256(layer).hexdigest(),)
    assert client.api.tagged == [(result.image_id, "demo", "1")]
    assert client.images.get("demo:1").id == result.image_id
    # Progress arrives as phase events, in the words the CLI prints.
    assert {event.kind for event in shown} == {"phase"}
    assert shown[0].message.startswith("saving demo:1 (") and shown[1].message.startswith("rewriting layer 1 (")
    assert shown[-1].message == f"tagged demo:1 -> {result.image_id[7:19]}"
