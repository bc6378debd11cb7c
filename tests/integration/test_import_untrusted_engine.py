"""`envkit import` against the real engine: a decompression bomb and a truncated archive are
refused with exit 5 and leave no image behind."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import zstandard

from envkit.errors import IntegrityError

pytestmark = pytest.mark.docker


def _image_ids(client) -> set[str]:  # type: ignore[no-untyped-def]
    return {item["Id"] for item in client.api.images(all=True)}


def _bomb(path: Path, size: int) -> None:
    info = tarfile.TarInfo("0" * 64 + "/layer.tar")
    info.size = size
    with path.open("wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as writer:
        writer.write(info.tobuf(tarfile.PAX_FORMAT))
        zeros = bytes(4 << 20)
        for _ in range(size // len(zeros)):
            writer.write(zeros)
        writer.write(bytes(1024))


def test_engine_import_refuses_a_zstd_bomb_without_loading_it(docker_client, tmp_path: Path) -> None:
    from envkit.engine.archive import import_image

    bomb = tmp_path / "bomb.tar.zst"
    _bomb(bomb, 1 << 30)
    before = _image_ids(docker_client)
    with pytest.raises(IntegrityError) as caught:
        import_image(docker_client, bomb)
    assert caught.value.exit_code == 5
    assert _image_ids(docker_client) == before


def test_engine_import_refuses_a_truncated_archive(docker_client, tmp_path: Path) -> None:
    from envkit.engine.archive import import_image

    whole = tmp_path / "whole.tar.zst"
    _bomb(whole, 8 << 20)
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    before = _image_ids(docker_client)
    with pytest.raises(IntegrityError):
        import_image(docker_client, cut)
    assert _image_ids(docker_client) == before
