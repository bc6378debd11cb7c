"""The offline package server and the bundle file format, without an engine."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from envkit.errors import IntegrityError, UsageError
from envkit.events import Event
from envkit.image.wheelcache import wheel_platforms
from envkit.record.bundle import (
    INDEX_NAME,
    MANIFEST_NAME,
    BundleIndex,
    is_bundle,
    open_bundle,
    write_bundle,
)
from envkit.record.offline import DirStore, PackageServer, TarStore, mirror_key


def _get(url: str, proxy: str | None = None) -> tuple[int, bytes]:
    handlers = [urllib.request.ProxyHandler({"http": proxy} if proxy else {})]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_mirror_keys_are_confined_to_the_store() -> None:
    assert mirror_key("http://deb.debian.org/debian/dists/bookworm/InRelease") == (
        "apt/deb.debian.org/debian/dists/bookworm/InRelease"
    )
    assert mirror_key("http://deb.debian.org/debian/../../etc/passwd") is None
    assert mirror_key("https://deb.debian.org/debian/x.deb") is None
    assert mirror_key("http://evil host/x") is None
    assert mirror_key("http://deb.debian.org/") is None


def test_server_gives_a_simple_index_wheels_and_recorded_mirror_files(tmp_path: Path) -> None:
    wheel = b"not really a zip, but bytes with a hash"
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "Foo_Bar-1.0-py3-none-any.whl").write_bytes(wheel)
    store = DirStore(tmp_path)
    store.put("apt/deb.debian.org/debian/pool/main/a/a.deb", io.BytesIO(b"deb-bytes"))
    sha = hashlib.sha256(wheel).hexdigest()
    with PackageServer(store, {"Foo_Bar-1.0-py3-none-any.whl": sha}, "127.0.0.1") as server:
        status, page = _get(f"{server.url}/simple/foo-bar/")
        assert status == 200
        assert f'href="../../wheels/Foo_Bar-1.0-py3-none-any.whl#sha256={sha}"' in page.decode()
        assert _get(f"{server.url}/simple/")[1].decode().count("<a ") == 1
        assert _get(f"{server.url}/wheels/Foo_Bar-1.0-py3-none-any.whl") == (200, wheel)
        assert _get(f"{server.url}/simple/absent/")[0] == 404
        assert _get(f"{server.url}/wheels/../etc")[0] == 404
        # apt asks the proxy with absolute URLs; only recorded files are there.
        deb = "http://deb.debian.org/debian/pool/main/a/a.deb"
        assert _get(deb, proxy=server.url) == (200, b"deb-bytes")
        missing = "http://deb.debian.org/debian/pool/main/b/b.deb"
        assert _get(missing, proxy=server.url)[0] == 404
        # A request for the server itself through the proxy is served locally.
        assert _get(f"{server.url}/wheels/Foo_Bar-1.0-py3-none-any.whl", proxy=server.url) == (200, wheel)
    assert server.log.missing == [missing]


class _Upstream(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        _Upstream.hits.append(self.path)
        if self.path.endswith("absent"):
            self.send_error(404)
            return
        body = f"upstream:{self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


def test_recording_fetches_each_file_once_and_keeps_404s_out(tmp_path: Path) -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{upstream.server_address[1]}"
    store = DirStore(tmp_path)
    try:
        with PackageServer(store, {}, "127.0.0.1", record_to=store) as server:
            assert _get(f"{base}/debian/file", proxy=server.url) == (200, b"upstream:/debian/file")
            assert _get(f"{base}/debian/file", proxy=server.url) == (200, b"upstream:/debian/file")
            assert _get(f"{base}/debian/absent", proxy=server.url)[0] == 404
    finally:
        upstream.shutdown()
    assert _Upstream.hits.count("/debian/file") == 1
    assert server.log.recorded == [f"apt/127.0.0.1:{upstream.server_address[1]}/debian/file"]
    assert not list(tmp_path.rglob("absent"))


def test_wheel_platforms_go_from_the_suites_glibc_down() -> None:
    tags = wheel_platforms("linux/amd64", "bookworm")
    assert tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_28_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert tags.index("manylinux_2_28_x86_64") < tags.index("manylinux_2_17_x86_64")
    assert wheel_platforms("linux/arm64", "bookworm")[0] == "manylinux_2_36_aarch64"
    with pytest.raises(UsageError):
        wheel_platforms("windows/amd64", "bookworm")


M_DIGEST = "sha256:" + "3" * 64


def _bundle(tmp_path: Path, sign_key: Path | None = None) -> Path:
    root = tmp_path / "members"
    (root / "wheels").mkdir(parents=True)
    (root / "wheels" / "a-1-py3-none-any.whl").write_bytes(b"wheel-a")
    (root / "apt" / "deb.debian.org").mkdir(parents=True)
    (root / "apt" / "deb.debian.org" / "x.deb").write_bytes(b"deb-x")
    (root / "base").mkdir()
    (root / "base" / "image.tar").write_bytes(b"base")
    files = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in (("wheels/a-1-py3-none-any.whl", b"wheel-a"), ("apt/deb.debian.org/x.deb", b"deb-x"),
                           ("base/image.tar", b"base"))
    }
    index = BundleIndex(
        schema_version=1, manifest_digest=M_DIGEST, image_id="sha256:" + "1" * 64, base_ref="b:1",
        base_image_id="sha256:" + "2" * 64, files=files,
        wheels={"a-1-py3-none-any.whl": files["wheels/a-1-py3-none-any.whl"]["sha256"]},
    )
    out = tmp_path / "env.bundle"
    write_bundle(out, json.dumps({"digest": M_DIGEST}), index, root, 1761955200, sign_key=sign_key)
    return out


def test_bundle_round_trip_is_deterministic_and_readable_in_place(tmp_path: Path) -> None:
    first = _bundle(tmp_path / "one")
    second = _bundle(tmp_path / "two")
    assert first.read_bytes() == second.read_bytes()
    assert is_bundle(first) and not is_bundle(tmp_path / "one" / "members" / "wheels" / "a-1-py3-none-any.whl")
    shown: list[Event] = []
    opened = open_bundle(first, show=shown.append)
    assert [(e.kind, e.message) for e in shown][:1] == [("phase", f"checking {len(opened.index.files)} files of {first.name}")]
    assert opened.index.wheels == {"a-1-py3-none-any.whl": hashlib.sha256(b"wheel-a").hexdigest()}
    assert json.loads(opened.manifest_text) == {"digest": M_DIGEST}
    with tarfile.open(first) as tar:
        names = tar.getnames()
        assert names[:2] == [INDEX_NAME, MANIFEST_NAME]
        assert all(m.mtime == 1761955200 and m.uid == 0 for m in tar.getmembers())
    store = TarStore(first)
    handle, size = store.open("apt/deb.debian.org/x.deb") or (None, 0)
    assert handle is not None and size == 5 and handle.read() == b"deb-x"
    handle.close()
    assert store.open("apt/absent") is None


def test_a_damaged_or_truncated_bundle_is_refused(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(b"deb-x")
    data[at:at + 5] = b"DEB-X"
    damaged = tmp_path / "damaged.bundle"
    damaged.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        open_bundle(damaged)
    truncated = tmp_path / "truncated.bundle"
    truncated.write_bytes(path.read_bytes()[:1024])
    with pytest.raises(IntegrityError):
        open_bundle(truncated)


def test_a_failed_bundle_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bundle(tmp_path)
    before = path.read_bytes()
    root = tmp_path / "half"
    (root / "wheels").mkdir(parents=True)
    (root / "wheels" / "gone.whl").write_bytes(b"x")
    original = Path.open

    def open_then_fail(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self.name == "gone.whl":
            raise FileNotFoundError(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_then_fail)
    index = BundleIndex(1, "sha256:m", "sha256:i", "b:1", "sha256:b", {}, {})
    with pytest.raises(FileNotFoundError):
        write_bundle(path, "{}", index, root, 0)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_bundle_records_the_apt_packages_of_the_one_system_stage() -> None:
    from envkit.image.build import plan_build
    from envkit.record.bundle import apt_commands

    commands = apt_commands(plan_build("pytorch-cuda:2.8", with_requirements=False, environ={}))
    assert list(commands) == ["system"]
    # The venv module and pip's wheel are part of the image now: they must be recorded too.
    assert "python3.11-venv=" in commands["system"] and "gcc=" in commands["system"]
    assert "--download-only" in commands["system"]
