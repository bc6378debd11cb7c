"""`envkit import` reads untrusted archives: capped, checked as tar on the way, never exit 1."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from envkit.engine import archive
from envkit.engine.archive import import_image, parse_size
from envkit.errors import IntegrityError, UsageError
from tests.tarfiles import tar_of


class _CountingApi:
    """A stand-in engine that reads what it is sent and counts it, like `docker load` would."""

    def __init__(self) -> None:
        self.received = 0

    def load_image(self, data: Any):  # type: ignore[no-untyped-def]
        for chunk in data:
            self.received += len(chunk)
        yield {"stream": "Loaded image: demo:1\n"}

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return {"Id": "sha256:" + "e" * 64}


class _Client:
    def __init__(self) -> None:
        self.api = _CountingApi()


def _zstd_bomb(path: Path, size: int) -> None:
    """A tar holding one member of ``size`` zero bytes, zstd-compressed to a few kilobytes."""
    info = tarfile.TarInfo("abc/layer.tar")
    info.size = size
    with path.open("wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as writer:
        writer.write(info.tobuf(tarfile.PAX_FORMAT))
        zeros = bytes(4 << 20)
        left = size
        while left:
            n = min(left, len(zeros))
            writer.write(zeros[:n])
            left -= n
        writer.write(bytes(1024))


def test_import_refuses_a_small_zstd_bomb_before_it_fills_the_disk(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.zst"
    _zstd_bomb(bomb, 512 << 20)
    assert bomb.stat().st_size < 256 << 10
    client = _Client()
    with pytest.raises(IntegrityError, match="decompression bomb") as caught:
        import_image(client, bomb)
    assert caught.value.exit_code == 5
    assert client.api.received < 128 << 20  # stopped early, far short of the 512 MiB inside


def test_import_refuses_an_archive_above_max_size(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(tar_of([("manifest.json", b"[]"), ("x/layer.tar", bytes(300_000))]))
    with pytest.raises(IntegrityError, match="expands beyond 100000 bytes"):
        import_image(_Client(), path, max_size=100_000)
    assert import_image(_Client(), path, max_size=10_000_000).loaded == ("demo:1",)


def test_import_cli_refuses_a_bomb_with_exit_5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.cli import app as cli_module

    bomb = tmp_path / "bomb.tar.zst"
    _zstd_bomb(bomb, 16 << 20)
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: _Client())
    assert cli_module.main(["import", str(bomb), "--max-size", "1M"]) == 5
    assert cli_module.main(["import", str(bomb), "--max-size", "lots"]) == 2


@pytest.mark.parametrize("compress", ["plain", "gzip", "zstd"])
def test_import_refuses_a_truncated_archive_with_exit_5(tmp_path: Path, compress: str) -> None:
    data = tar_of([("manifest.json", b"[]"), ("x/layer.tar", bytes(range(256)) * 4000)])
    content = 512 * 3 + 256 * 4000  # where the end-of-archive marker starts
    cuts = [content // 3, content // 2, content - 100, content]
    if compress == "gzip":
        data = gzip.compress(data)
        cuts = [len(data) // 3, len(data) // 2, len(data) - 4]
    elif compress == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
        cuts = [len(data) // 3, len(data) // 2]
    path = tmp_path / "cut.tar"
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(IntegrityError):
            import_image(_Client(), path)


def test_import_refuses_a_tar_cut_at_a_member_boundary(tmp_path: Path) -> None:
    data = tar_of([("manifest.json", b"[]"), ("x/layer.tar", bytes(1024))])
    path = tmp_path / "cut.tar"
    # header + data of manifest.json, header + data of the layer: members intact, end marker gone.
    path.write_bytes(data[: 512 * 3 + 1024])
    with pytest.raises(IntegrityError, match="truncated"):
        import_image(_Client(), path)


def test_import_refuses_member_names_that_climb_out(tmp_path: Path) -> None:
    path = tmp_path / "evil.tar"
    path.write_bytes(tar_of([("../../etc/passwd", b"x")]))
    with pytest.raises(IntegrityError):
        import_image(_Client(), path)


def _oci(index: bytes, extra: list[tuple[str, bytes]] | None = None) -> bytes:
    return tar_of([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index), *(extra or [])])


@pytest.mark.parametrize(
    "index",
    [
        b"{not json",
        b"[]",
        b'{"manifests": []}',
        b'{"manifests": [{"digest": "sha256:../../x"}]}',
        b'{"manifests": [{"digest": 5}]}',
        b'{"manifests": [{"digest": "sha256:' + b"a" * 64 + b'", "annotations": {"io.containerd.image.name": "a b;c"}}]}',
        b"[" * 100_000,
    ],
)
def test_import_refuses_a_malformed_oci_index_with_exit_5(tmp_path: Path, index: bytes) -> None:
    path = tmp_path / "oci.tar"
    path.write_bytes(_oci(index))
    with pytest.raises(IntegrityError):
        import_image(_Client(), path)


def test_import_refuses_a_malformed_oci_manifest_with_exit_5(tmp_path: Path) -> None:
    manifest = json.dumps({"config": {"digest": "sha256:zz"}, "layers": "x"}).encode()
    digest = "b" * 64
    index = json.dumps({"manifests": [{"digest": f"sha256:{digest}"}]}).encode()
    path = tmp_path / "oci.tar"
    path.write_bytes(_oci(index, [(f"blobs/sha256/{digest}", manifest)]))
    with pytest.raises(IntegrityError):
        import_image(_Client(), path)


def test_import_of_a_directory_or_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        import_image(_Client(), tmp_path / "absent.tar")


@pytest.mark.parametrize(("text", "size"), [("20G", 20 << 30), ("512M", 512 << 20), ("1.5K", 1536),
                                            ("1000", 1000), ("2GiB", 2 << 30)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1G", "0", "lots", "1Q"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_default_cap_is_the_engine_disk_less_a_margin(tmp_path: Path) -> None:
    class _Info(_Client):
        def info(self) -> dict[str, str]:
            return {"DockerRootDir": str(tmp_path)}

    cap = archive.default_max_size(_Info())  # type: ignore[arg-type]
    assert cap is not None and cap >= 0
    import os

    stats = os.statvfs(tmp_path)
    assert cap < stats.f_bavail * stats.f_frsize
    assert archive.default_max_size(_Client()) is None  # type: ignore[arg-type]
