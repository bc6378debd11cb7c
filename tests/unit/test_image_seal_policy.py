"""The layer rewriter and the sealed config, on synthetic tars: no engine needed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import tarfile
from pathlib import Path

import pytest

from envkit.engine.dockerarchive import archive_stream, chain_ids
from envkit.engine.tarstream import END_OF_ARCHIVE, iter_tar, tar_header
from envkit.errors import UsageError
from envkit.events import Event
from envkit.image.seal_policy import (
    EMPTY_LAYER_DIGEST,
    resolve_epoch,
    rewrite_layer,
    sealed_config,
    sort_key,
)
from tests.fakes import FakeClient, FakeImage

EPOCH = 1_700_000_000


def _pyc(source_mtime: int, *, flags: int = 0) -> bytes:
    return b"\xa7\r\r\n" + struct.pack("<III", flags, source_mtime, 42) + b"\xe3marshalled-code"


def _entries(build_time: int, *, volatile_seed: str) -> list[tuple[str, bytes | None, dict]]:
    """The members of a layer as two builds would write them: same content, different times."""
    return [
        ("opt", None, {}),
        ("opt/venv", None, {}),
        ("opt/venv/bin", None, {}),
        ("opt/venv/bin/python", b"#!python\n", {"mode": 0o755}),
        ("opt/venv/lib", None, {}),
        ("opt/venv/lib/mod.py", b"x = 1\n", {"mtime": 1_600_000_000}),
        ("opt/venv/lib/__pycache__", None, {}),
        ("opt/venv/lib/__pycache__/mod.cpython-311.pyc", _pyc(build_time), {}),
        ("etc", None, {}),
        ("etc/machine-id", f"{volatile_seed}-machine\n".encode(), {}),
        ("var", None, {}),
        ("var/log", None, {}),
        ("var/log/dpkg.log", f"{build_time} install foo\n".encode(), {}),
        ("var/log/apt", None, {}),
        ("var/log/apt/history.log", volatile_seed.encode(), {}),
        ("var/cache", None, {}),
        ("var/cache/apt", None, {}),
        ("var/cache/apt/pkgcache.bin", volatile_seed.encode() * 10, {}),
        ("var/cache/apt/archives", None, {}),
        ("var/cache/apt/archives/foo_1.0_amd64.deb", b"deb", {}),
        ("var/cache/ldconfig", None, {}),
        ("var/cache/ldconfig/aux-cache", volatile_seed.encode(), {}),
        ("var/lib", None, {}),
        ("var/lib/apt", None, {}),
        ("var/lib/apt/lists", None, {}),
        ("var/lib/apt/lists/deb.debian.org_Packages", volatile_seed.encode(), {}),
        ("var/lib/apt/lists/partial", None, {}),
        ("root", None, {}),
        ("root/.cache", None, {}),
        ("root/.cache/pip", None, {}),
        ("root/.cache/pip/blob", volatile_seed.encode(), {}),
        ("tmp", None, {}),
        ("tmp/build.log", volatile_seed.encode(), {}),
        ("usr", None, {}),
        ("usr/.wh.games", b"", {}),
        ("usr/share", None, {}),
        ("usr/share/.wh..wh..opq", b"", {}),
        ("usr/share/doc", None, {}),
        ("usr/share/doc/a", b"doc a", {}),
        ("usr/share/doc/a-b", b"doc a-b", {}),
        ("usr/share/doc/a.link", None, {"symlink": "a"}),
        ("usr/share/doc/hard", None, {"hardlink": "usr/share/doc/a"}),
    ]


def _make_tar(entries, build_time: int, *, order=None, fmt=tarfile.PAX_FORMAT, names=("root", "root")) -> bytes:
    buf = io.BytesIO()
    items = list(entries)
    if order is not None:
        items = [items[i] for i in order]
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data, extra in items:
            info = tarfile.TarInfo(name)
            info.mtime = extra.get("mtime", build_time)
            info.uid = info.gid = 0
            info.uname, info.gname = names
            info.mode = extra.get("mode", 0o644)
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"atime": str(build_time + 0.5), "ctime": str(build_time + 0.25)}
            if "symlink" in extra:
                info.type, info.linkname = tarfile.SYMTYPE, extra["symlink"]
                tf.addfile(info)
            elif "hardlink" in extra:
                info.type, info.linkname = tarfile.LNKTYPE, extra["hardlink"]
                tf.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _rewrite(data: bytes, tmp_path: Path, name: str = "out.tar", epoch: int = EPOCH):
    out_path = tmp_path / name
    with open(out_path, "wb+") as out:
        result = rewrite_layer(io.BufferedReader(io.BytesIO(data)), out, epoch=epoch)
        out.flush()
    return result, out_path.read_bytes()


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


def test_rewrite_sorts_clamps_and_strips(tmp_path: Path) -> None:
    result, data = _rewrite(_make_tar(_entries(EPOCH + 5000, volatile_seed="one"), EPOCH + 5000), tmp_path)
    members = _members(data)
    names = [m.name for m in members]
    assert names == sorted(names, key=sort_key)
    assert all(m.mtime <= EPOCH for m in members)
    assert next(m for m in members if m.name == "opt/venv/lib/mod.py").mtime == 1_600_000_000
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert all("atime" not in m.pax_headers and "ctime" not in m.pax_headers for m in members)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert data.endswith(END_OF_ARCHIVE)


def test_rewrite_removes_volatile_files_and_keeps_whiteouts(tmp_path: Path) -> None:
    result, data = _rewrite(_make_tar(_entries(EPOCH + 1, volatile_seed="v"), EPOCH + 1), tmp_path)
    names = {m.name for m in _members(data)}
    for gone in (
        "var/log/dpkg.log",
        "var/log/apt/history.log",
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/archives/foo_1.0_amd64.deb",
        "var/cache/ldconfig/aux-cache",
        "var/lib/apt/lists/deb.debian.org_Packages",
        "var/lib/apt/lists/partial",
        "root/.cache",
        "root/.cache/pip/blob",
        "tmp/build.log",
    ):
        assert gone not in names, gone
    for kept in ("var/log", "var/log/apt", "var/lib/apt/lists", "tmp", "usr/.wh.games",
                 "usr/share/.wh..wh..opq", "usr/share/doc/hard", "usr/share/doc/a.link"):
        assert kept in names, kept
    machine_id = next(m for m in _members(data) if m.name == "etc/machine-id")
    assert machine_id.size == 0
    assert result.removed == 11 and result.emptied == 1


def test_same_input_twice_gives_same_bytes(tmp_path: Path) -> None:
    layer = _make_tar(_entries(EPOCH + 99, volatile_seed="x"), EPOCH + 99)
    first = _rewrite(layer, tmp_path, "a.tar")
    second = _rewrite(layer, tmp_path, "b.tar")
    assert first[1] == second[1]
    assert first[0].diff_id == second[0].diff_id


def test_builds_differing_in_times_and_volatile_files_give_same_digest(tmp_path: Path) -> None:
    one = _make_tar(_entries(EPOCH + 100, volatile_seed="first build"), EPOCH + 100, names=("root", "root"))
    order = list(range(len(_entries(0, volatile_seed=""))))
    random.Random(4).shuffle(order)
    two = _make_tar(_entries(EPOCH + 7000, volatile_seed="second"), EPOCH + 7000, order=order,
                    fmt=tarfile.GNU_FORMAT, names=("", "wheel"))
    assert hashlib.sha256(one).digest() != hashlib.sha256(two).digest()
    r1, d1 = _rewrite(one, tmp_path, "1.tar")
    r2, d2 = _rewrite(two, tmp_path, "2.tar")
    assert r2.reordered
    assert d1 == d2
    assert r1.diff_id == r2.diff_id


def test_timestamp_pyc_header_is_clamped_like_its_source(tmp_path: Path) -> None:
    _, data = _rewrite(_make_tar(_entries(EPOCH + 300, volatile_seed="p"), EPOCH + 300), tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        pyc = tf.extractfile("opt/venv/lib/__pycache__/mod.cpython-311.pyc").read()
    assert struct.unpack_from("<I", pyc, 8)[0] == EPOCH
    assert pyc[16:] == b"\xe3marshalled-code"


def test_hash_based_pyc_is_left_alone(tmp_path: Path) -> None:
    checked = _pyc(0xDEADBEEF, flags=0b11)
    layer = _make_tar([("a.pyc", checked, {})], EPOCH + 1)
    _, data = _rewrite(layer, tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.extractfile("a.pyc").read() == checked


def test_reordered_hardlink_gets_the_data(tmp_path: Path) -> None:
    # Input order: file "z" first, then "a" linking to it. Sorted, "a" comes first and must carry
    # the data, or extraction would meet a link to a file not yet there.
    entries = [("z", b"payload", {}), ("a", None, {"hardlink": "z"})]
    _, data = _rewrite(_make_tar(entries, EPOCH), tmp_path)
    members = _members(data)
    assert [m.name for m in members] == ["a", "z"]
    assert members[0].isreg() and members[0].size == 7
    assert members[1].islnk() and members[1].linkname == "a"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.extractfile("a").read() == b"payload"


def test_link_to_removed_volatile_file_is_removed(tmp_path: Path) -> None:
    entries = [("var/log/x", b"log", {}), ("var/log2", b"", {}), ("zz", None, {"hardlink": "var/log/x"})]
    result, data = _rewrite(_make_tar(entries, EPOCH), tmp_path)
    assert [m.name for m in _members(data)] == ["var/log2"]
    assert result.removed == 2


def test_long_names_xattrs_and_big_ids_survive(tmp_path: Path) -> None:
    long_name = "opt/" + "d" * 120 + "/ünïcode-" + "f" * 90
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(long_name)
        info.size, info.uid, info.gid, info.mtime = 3, 3_000_000, 70_000, EPOCH + 5
        info.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
        tf.addfile(info, io.BytesIO(b"abc"))
    _, data = _rewrite(buf.getvalue(), tmp_path)
    (member,) = _members(data)
    assert member.name == long_name
    assert (member.uid, member.gid, member.mtime) == (3_000_000, 70_000, EPOCH)
    assert member.pax_headers["SCHILY.xattr.security.capability"] == "\x01\x00\x00\x02"


def test_empty_layer_has_no_entries(tmp_path: Path) -> None:
    result, data = _rewrite(_make_tar([("tmp/a", b"1", {}), ("var/log/b", b"2", {})], EPOCH), tmp_path)
    assert result.entries == 0
    assert data == END_OF_ARCHIVE
    assert result.diff_id == EMPTY_LAYER_DIGEST


def test_truncated_layer_is_an_error(tmp_path: Path) -> None:
    layer = _make_tar([("big", b"x" * 5000, {})], EPOCH)
    from envkit.engine.tarstream import TarFormatError

    with pytest.raises(TarFormatError):
        _rewrite(layer[:1500], tmp_path)


def test_iter_tar_reads_what_tarfile_wrote() -> None:
    layer = _make_tar(_entries(EPOCH, volatile_seed="r"), EPOCH, fmt=tarfile.GNU_FORMAT)
    ours = [(i.name, i.size, i.type) for i, _ in iter_tar(io.BufferedReader(io.BytesIO(layer)))]
    theirs = [(m.name, m.size, m.type) for m in _members(layer)]
    assert ours == theirs


def test_header_matches_tarfile_reading() -> None:
    info = tarfile.TarInfo("dir/sub")
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o40755, 12
    header = tar_header(info)
    assert len(header) == 512
    (member,) = _members(header + END_OF_ARCHIVE)
    assert member.isdir() and member.name == "dir/sub" and member.mode == 0o755


def _config(layers: int, empty_every: int = 2) -> dict:
    history = []
    for i in range(layers):
        history.append({"created": f"2026-01-0{i + 1}T00:00:00.123Z", "created_by": f"RUN step {i}"})
        history.append({"created": "2026-01-09T00:00:00Z", "created_by": "ENV A=1", "empty_layer": True})
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-09T10:11:12.5Z",
        "container": "abc123",
        "docker_version": "20.10.24",
        "container_config": {"Hostname": "abc123"},
        "config": {"Hostname": "abc123", "Image": "sha256:parent", "Env": ["A=1"], "Labels": {"x": "y"}},
        "history": history,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{i:064x}" for i in range(layers)]},
    }


def test_sealed_config_fixes_times_and_clears_builder_fields() -> None:
    digests = ["sha256:" + "a" * 64, None, "sha256:" + "c" * 64]
    raw = sealed_config(_config(3), digests, EPOCH)
    config = json.loads(raw)
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert all(h["created"] == config["created"] for h in config["history"])
    assert "container" not in config and "container_config" not in config and "docker_version" not in config
    assert config["config"]["Hostname"] == "" and config["config"]["Image"] == ""
    assert config["config"]["Labels"] == {"x": "y"}
    assert config["rootfs"]["diff_ids"] == ["sha256:" + "a" * 64, "sha256:" + "c" * 64]
    layered = [h for h in config["history"] if not h.get("empty_layer")]
    assert len(layered) == len(config["rootfs"]["diff_ids"])
    assert [h["created_by"] for h in layered] == ["RUN step 0", "RUN step 2"]
    assert raw == sealed_config(_config(3), digests, EPOCH)


def test_copy_source_hash_in_history_names_the_sealed_layer() -> None:
    config = _config(1)
    config["history"][0]["created_by"] = "/bin/sh -c #(nop) COPY dir:" + "9" * 64 + " in /opt/venv "
    digest = "sha256:" + "b" * 64
    sealed = json.loads(sealed_config(config, [digest], EPOCH))
    assert sealed["history"][0]["created_by"] == "/bin/sh -c #(nop) COPY dir:" + "b" * 64 + " in /opt/venv "


def test_copy_with_chown_names_the_sealed_layer_too() -> None:
    """The classic builder glues the source to the flag: "--chown=1000:1000dir:<hash>". Two builds
    whose builder stages differ only in file times must still seal to one config."""
    digest = "sha256:" + "b" * 64
    made = []
    for source in ("9" * 64, "2" * 64):
        config = _config(1)
        config["history"][0]["created_by"] = (
            f"/bin/bash -o pipefail -c #(nop) COPY --chown=1000:1000dir:{source} in /opt/venv "
        )
        made.append(sealed_config(config, [digest], EPOCH))
    assert made[0] == made[1]
    history = json.loads(made[0])["history"][0]["created_by"]
    assert history == "/bin/bash -o pipefail -c #(nop) COPY --chown=1000:1000dir:" + "b" * 64 + " in /opt/venv "


def test_a_build_given_only_proxy_args_seals_like_one_given_none() -> None:
    digest = "sha256:" + "b" * 64
    plain, proxied, declared = _config(1), _config(1), _config(1)
    plain["history"][0]["created_by"] = "/bin/bash -o pipefail -c apt-get update"
    proxied["history"][0]["created_by"] = "|0 /bin/bash -o pipefail -c apt-get update"
    declared["history"][0]["created_by"] = "|1 FLAVOUR=x /bin/bash -o pipefail -c apt-get update"
    assert sealed_config(plain, [digest], EPOCH) == sealed_config(proxied, [digest], EPOCH)
    kept = json.loads(sealed_config(declared, [digest], EPOCH))["history"][0]["created_by"]
    assert kept.startswith("|1 FLAVOUR=x ")  # a declared build arg is part of what made the layer


def test_epoch_from_argument_label_or_error() -> None:
    attrs = {"Config": {"Labels": {"io.envkit.source-date-epoch": "1234"}}}
    assert resolve_epoch(attrs, "img", None) == 1234
    assert resolve_epoch(attrs, "img", 99) == 99
    with pytest.raises(UsageError, match="no SOURCE_DATE_EPOCH"):
        resolve_epoch({"Config": {"Labels": None}}, "img", None)
    with pytest.raises(UsageError, match="not an integer"):
        resolve_epoch({"Config": {"Labels": {"io.envkit.source-date-epoch": "soon"}}}, "img", None)


def test_archive_stream_is_a_loadable_docker_archive(tmp_path: Path) -> None:
    layer = tmp_path / "l.tar"
    layer.write_bytes(_make_tar([("a", b"1", {})], EPOCH))
    digest = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    config = sealed_config(_config(2), [digest, digest], EPOCH)
    blob = b"".join(archive_stream(config, [(digest, str(layer)), (digest, str(layer))], epoch=EPOCH))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())
        assert manifest[0]["Layers"] == [digest[7:] + "/layer.tar"] * 2
        assert tf.extractfile(manifest[0]["Config"]).read() == config
        assert tf.extractfile(digest[7:] + "/layer.tar").read() == layer.read_bytes()
        assert len([m for m in tf.getmembers() if m.name.endswith("layer.tar")]) == 1


def test_chain_ids_match_the_engine_definition() -> None:
    one, two = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    chains = chain_ids([one, two])
    assert chains[0] == one
    assert chains[1] == "sha256:" + hashlib.sha256(f"{one} {two}".encode()).hexdigest()


def test_archive_leaves_out_layers_the_engine_holds(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        layer = tmp_path / f"{i}.tar"
        layer.write_bytes(_make_tar([(f"f{i}", b"x", {})], EPOCH))
        paths.append(("sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest(), str(layer)))
    config = sealed_config(_config(2), [d for d, _ in paths], EPOCH)
    present = {chain_ids([paths[0][0]])[0]}
    blob = b"".join(archive_stream(config, paths, epoch=EPOCH, present=present))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        names = tf.getnames()
        manifest = json.loads(tf.extractfile("manifest.json").read())
    assert manifest[0]["Layers"] == [d[7:] + "/layer.tar" for d, _ in paths]  # still listed
    assert paths[0][0][7:] + "/layer.tar" not in names
    assert paths[1][0][7:] + "/layer.tar" in names


# Export and import (envkit.engine.archive) with a stand-in engine: atomic output, interruptions, bad input.


DEMO = FakeImage("sha256:" + "e" * 64, tags=["demo:1"])


def _engine(saved: list[bytes], fail_after: int | None = None, exc: BaseException | None = None) -> FakeClient:
    """An engine holding demo:1, whose `docker save` streams `saved` (failing at chunk `fail_after`)."""
    return FakeClient({"demo:1": DEMO}, saved=saved, save_fails_after=fail_after, save_error=exc,
                      load_messages=[{"stream": "Loaded image: demo:1\n"}])


def test_export_writes_zstd_atomically_and_import_reads_it_back(tmp_path: Path) -> None:
    from envkit.engine.archive import export_image, import_image

    saved = _make_tar([("a", b"a" * 100_000, {}), ("b", b"b" * 50_000, {})], EPOCH)
    payload = [saved[:70_000], saved[70_000:]]
    client = _engine(payload)
    out = tmp_path / "sub" / "demo.tar.zst"
    shown: list[Event] = []
    result = export_image(client, "demo:1", out, show=shown.append)
    assert [event.kind for event in shown] == ["phase", "phase"]
    assert shown[-1].message == f"wrote {out}: {len(saved)} bytes -> {out.stat().st_size} bytes"
    assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert result.uncompressed_bytes == len(saved) and result.compressed_bytes == out.stat().st_size
    assert [p.name for p in out.parent.iterdir()] == ["demo.tar.zst"]
    imported = import_image(client, out, show=shown.append)
    assert shown[2].kind == "phase" and shown[2].message.startswith(f"importing {out} (at most ")
    assert client.api.loaded == b"".join(payload)
    assert imported.loaded == ("demo:1",)


def test_interrupted_export_leaves_no_file(tmp_path: Path) -> None:
    from envkit.engine.archive import export_image
    from envkit.errors import Interrupted

    out = tmp_path / "demo.tar.zst"
    out.write_bytes(b"previous export")
    client = _engine([b"x" * 1000] * 5, fail_after=3, exc=KeyboardInterrupt())
    with pytest.raises(Interrupted):
        export_image(client, "demo:1", out)
    assert out.read_bytes() == b"previous export"  # the old file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["demo.tar.zst"]


def test_export_disk_full_is_clear(tmp_path: Path) -> None:
    import errno

    from envkit.engine.archive import export_image
    from envkit.errors import EnvkitError

    client = _engine([b"x" * 1000] * 5, fail_after=2, exc=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(EnvkitError, match="disk full"):
        export_image(client, "demo:1", tmp_path / "demo.tar.zst")
    assert list(tmp_path.iterdir()) == []


def test_import_of_a_corrupt_zstd_archive_is_an_integrity_error(tmp_path: Path) -> None:
    import zstandard

    from envkit.engine.archive import import_image
    from envkit.errors import IntegrityError

    blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(200_000)))
    blob[len(blob) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        import_image(_engine([]), bad)


def test_oci_export_round_trip_keeps_config_and_layers(tmp_path: Path) -> None:
    from envkit.engine.archive import export_image, import_image

    layer = tmp_path / "l.tar"
    layer.write_bytes(_make_tar([("a", b"1" * 3000, {})], EPOCH))
    digest = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    config = sealed_config(_config(2), [digest, digest], EPOCH)
    saved = b"".join(archive_stream(config, [(digest, str(layer)), (digest, str(layer))], epoch=EPOCH))
    client = _engine([saved[i : i + 700] for i in range(0, len(saved), 700)])
    out = tmp_path / "demo.oci.tar.zst"
    export_image(client, "demo:1", out, fmt="oci")
    import zstandard

    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(out.read_bytes()))) as tf:
        names = tf.getnames()
        index = json.loads(tf.extractfile("index.json").read())
        assert names[:2] == ["oci-layout", "index.json"]
        assert "blobs/sha256/" + hashlib.sha256(config).hexdigest() in names
        assert tf.extractfile("blobs/sha256/" + digest[7:]).read() == layer.read_bytes()
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "demo:1"
    assert [p.name for p in tmp_path.iterdir()].count("demo.oci.tar.zst") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".envkit-export-")]
    import_image(client, out)
    with tarfile.open(fileobj=io.BytesIO(client.api.loaded)) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())[0]
        assert manifest["RepoTags"] == ["demo:1"]
        assert tf.extractfile(manifest["Config"]).read() == config
        assert manifest["Layers"] == [digest[7:] + "/layer.tar"] * 2
        assert tf.extractfile(manifest["Layers"][0]).read() == layer.read_bytes()
