"""Fetching locked wheels from an index without pip: a real HTTP server on loopback serves the pages."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from envkit.errors import IntegrityError
from envkit.events import follow
from envkit.image.wheelcache import ensure_wheels, wheel_platforms
from envkit.image.wheelfetch import best_file, page_files, parse_index_args, plan_direct, tag_ranks

PLATFORMS = wheel_platforms("linux/amd64", "bookworm")


class Index:
    """Files by URL path; /json/<name>/ answers PEP 691 JSON, /html/<name>/ PEP 503 HTML."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.listed: dict[str, str] = {}  # file name -> the sha256 the page lists
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization)

    def add(self, filename: str, data: bytes, listed: str | None = None) -> str:
        self.files[f"/files/{filename}"] = data
        self.listed[filename] = listed or hashlib.sha256(data).hexdigest()
        return hashlib.sha256(data).hexdigest()


@pytest.fixture
def index() -> Iterator[tuple[Index, str]]:
    state = Index()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            state.requests.append((self.path, self.headers.get("Authorization")))
            kind, _, rest = self.path.strip("/").partition("/")
            if self.path in state.files:
                body, ctype = state.files[self.path], "application/octet-stream"
            elif kind in ("json", "html") and rest:
                name = rest.strip("/")
                mine = {f: h for f, h in state.listed.items() if f.split("-")[0].replace("_", "-") == name}
                if not mine:
                    self.send_response(404)
                    self.end_headers()
                    return
                if kind == "json":
                    files = [{"filename": f, "url": f"../../files/{f}", "hashes": {"sha256": h},
                              "size": len(state.files[f"/files/{f}"])} for f, h in mine.items()]
                    body, ctype = json.dumps({"files": files}).encode(), "application/vnd.pypi.simple.v1+json"
                else:
                    body = "".join(f'<a href="/files/{f}#sha256={h}">{f}</a>\n' for f, h in mine.items()).encode()
                    ctype = "text/html"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _requirements(pins: dict[str, tuple[str, list[str]]]) -> str:
    return "".join(f"{name}=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n"
                   for name, (version, hashes) in pins.items())


def test_the_allowed_file_with_the_best_tag_is_taken() -> None:
    ranks = tag_ranks("3.11", PLATFORMS)
    files = [("torch-2.8.0-cp311-cp311-manylinux_2_28_x86_64.whl", "u1", "a" * 64, 0),
             ("torch-2.8.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "u2", "b" * 64, 0),
             ("torch-2.8.0-cp312-cp312-manylinux_2_28_x86_64.whl", "u3", "c" * 64, 0),
             ("torch-2.8.0-cp311-none-macosx_11_0_arm64.whl", "u4", "d" * 64, 0),
             ("torch-2.8.0.tar.gz", "u5", "e" * 64, 0)]
    every = ["a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64]
    assert best_file(files, "torch", "2.8.0", every, ranks)[1] == "u1"  # type: ignore[index]
    assert best_file(files, "torch", "2.8.0", ["b" * 64, "c" * 64], ranks)[1] == "u2"  # type: ignore[index]
    assert best_file(files, "torch", "2.8.0", ["c" * 64, "d" * 64, "e" * 64], ranks) is None
    assert best_file(files, "torch", "2.9.0", every, ranks) is None  # another version is never taken


def test_pages_in_json_and_html_and_index_arguments() -> None:
    html = b'<a href="../../f/x-1-py3-none-any.whl#sha256=ABC">x</a><a href="/f/nohash-1-py3-none-any.whl">n</a>'
    assert page_files(html, "text/html", "http://h/simple/x/") == [
        ("x-1-py3-none-any.whl", "http://h/f/x-1-py3-none-any.whl", "abc", 0)]
    parsed = parse_index_args(["--index-url", "https://user:p%40ss@mirror.example/simple", "--cert", "/ca.pem",
                               "--extra-index-url", "https://pypi.org/simple/", "--trusted-host", "mirror.example"])
    assert parsed is not None
    indexes, cert, trusted = parsed
    assert [i.url for i in indexes] == ["https://mirror.example/simple/", "https://pypi.org/simple/"]
    assert indexes[0].authorization == "Basic dXNlcjpwQHNz" and indexes[1].authorization is None
    assert cert == "/ca.pem" and trusted == {"mirror.example"}
    # What envkit does not read itself goes to pip.
    assert parse_index_args(["--no-index", "--find-links", "/wheels"]) is None
    assert parse_index_args(["--index-url", "file:///srv/simple"]) is None


@pytest.mark.parametrize("kind", ["json", "html"])
def test_the_cache_fills_from_the_index_and_credentials_go_to_its_host_only(
    index: tuple[Index, str], tmp_path: Path, kind: str
) -> None:
    state, url = index
    good = state.add("alpha-1.0-py3-none-any.whl", b"alpha wheel bytes")
    state.add("alpha-1.0-cp311-cp311-win_amd64.whl", b"windows")
    beta = state.add("beta-2.0-cp311-cp311-manylinux_2_17_x86_64.whl", b"beta wheel" * 1000)
    text = _requirements({"alpha": ("1.0", [good, hashlib.sha256(b"windows").hexdigest()]), "beta": ("2.0", [beta])})
    host_url = url.replace("http://", "http://me:secret@")
    events: list[tuple[str, str]] = []
    wheels = follow(ensure_wheels(text, python="3.11", platform="linux/amd64", suite="bookworm",
                                  index_args=["--index-url", f"{host_url}/{kind}/"], root=tmp_path / "cache"),
                    lambda e: events.append((e.kind, e.message)))
    assert sorted(wheels.paths) == ["alpha-1.0-py3-none-any.whl", "beta-2.0-cp311-cp311-manylinux_2_17_x86_64.whl"]
    assert wheels.digests["alpha-1.0-py3-none-any.whl"] == good and wheels.downloaded == 2
    assert wheels.downloaded_bytes == len(b"alpha wheel bytes") + 10000
    assert ("download", "wheels: downloaded 2 (0.00 GB)") in events
    assert {auth for _path, auth in state.requests} == {"Basic bWU6c2VjcmV0"}
    assert not list((tmp_path / "cache").glob(".incoming-*"))
    assert {path.stat().st_mode & 0o777 for path in wheels.paths.values()} == {0o644}  # as pip's are kept


def test_a_file_other_than_the_listed_one_is_a_hash_mismatch(index: tuple[Index, str], tmp_path: Path) -> None:
    state, url = index
    locked = hashlib.sha256(b"the real wheel").hexdigest()
    state.add("gamma-3.0-py3-none-any.whl", b"a tampered wheel", listed=locked)
    text = _requirements({"gamma": ("3.0", [locked])})
    with pytest.raises(IntegrityError, match=f"hash mismatch for gamma==3.0: expected sha256:{locked}, computed"):
        follow(ensure_wheels(text, python="3.11", platform="linux/amd64", suite="bookworm",
                             index_args=["--index-url", f"{url}/json/"], root=tmp_path / "cache"))
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-written stays


def test_a_package_no_index_lists_with_an_allowed_hash_is_left_to_pip(index: tuple[Index, str]) -> None:
    state, url = index
    digest = state.add("delta-1.0-py3-none-any.whl", b"delta")
    assert plan_direct({"delta": ("1.0", [digest])}, ["--index-url", f"{url}/json/"], "3.11", PLATFORMS)
    assert plan_direct({"delta": ("1.0", ["0" * 64])}, ["--index-url", f"{url}/json/"], "3.11", PLATFORMS) is None
    assert plan_direct({"omega": ("1.0", [digest])}, ["--index-url", f"{url}/json/"], "3.11", PLATFORMS) is None
