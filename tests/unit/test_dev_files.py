"""`envkit fetch`: files by URL and sha256 into the host cache, from a real HTTP server on loopback."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from envkit.dev import files
from envkit.errors import IntegrityError, NetworkError, UsageError
from envkit.events import drain

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = os.urandom(3 << 20) + b"weights"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.auth: str | None = None


@pytest.fixture
def server() -> Iterator[tuple[str, _Server]]:
    state = _Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            state.requests.append(self.path)
            state.auth = self.headers.get("Authorization")
            if self.path.startswith("/private/") and state.auth != "Basic " + base64.b64encode(b"u:s3cret").decode():
                self.send_response(401)
                self.end_headers()
                return
            if self.path.endswith("/yolov8n.pt"):
                body = PAYLOAD
            elif self.path.endswith("/other.pt"):
                body = b"not the weights"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENVKIT_STATE_DIR", str(tmp_path / "state"))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    return tmp_path / "state"


def test_fetch_checks_the_hash_caches_once_and_places_the_file(server, tmp_path: Path, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    base, state = server
    workspace = tmp_path / "workspace"
    first = drain(files.fetch_events(f"{base}/w/yolov8n.pt", SHA, into=workspace))
    assert first.downloaded and first.name == "yolov8n.pt" and first.size == len(PAYLOAD)
    assert (workspace / "yolov8n.pt").read_bytes() == PAYLOAD
    assert (state_dir / "files" / "sha256" / SHA).read_bytes() == PAYLOAD
    assert state.requests == ["/w/yolov8n.pt"]

    again = drain(files.fetch_events(f"{base}/w/yolov8n.pt", "sha256:" + SHA.upper(), into=tmp_path / "b",
                                     name="model.pt"))
    assert not again.downloaded
    assert state.requests == ["/w/yolov8n.pt"]  # the second fetch asked the server nothing
    assert (tmp_path / "b" / "model.pt").read_bytes() == PAYLOAD


def test_a_damaged_cache_entry_is_fetched_again(server, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    base, state = server
    drain(files.fetch_events(f"{base}/w/yolov8n.pt", SHA))
    (state_dir / "files" / "sha256" / SHA).write_bytes(b"bit rot")
    fetched = drain(files.fetch_events(f"{base}/w/yolov8n.pt", SHA))
    assert fetched.downloaded and len(state.requests) == 2
    assert (state_dir / "files" / "sha256" / SHA).read_bytes() == PAYLOAD


def test_bytes_that_are_not_the_sha256_are_refused_and_nothing_is_kept(server, tmp_path: Path, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    base, _ = server
    with pytest.raises(IntegrityError, match="nothing was kept"):
        drain(files.fetch_events(f"{base}/w/other.pt", SHA, into=tmp_path / "ws"))
    assert not (tmp_path / "ws" / "other.pt").exists()
    cache = state_dir / "files" / "sha256"
    assert [p.name for p in cache.iterdir()] == []  # no half-written or wrong entry


def test_server_errors_and_bad_input_have_their_own_errors(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, _ = server
    with pytest.raises(NetworkError, match="404"):
        drain(files.fetch_events(f"{base}/missing.pt", SHA))
    with pytest.raises(NetworkError):
        drain(files.fetch_events("http://127.0.0.1:9/x.pt", SHA))
    for url, sha, name in [
        ("file:///etc/passwd", SHA, None),
        (f"{base}/w/yolov8n.pt", "abc", None),
        (f"{base}/w/yolov8n.pt", SHA, "../escape.pt"),
        (f"{base}/w/yolov8n.pt", SHA, "sub/dir.pt"),
        (f"{base}/w/", SHA, None),
        (f"{base}/w/a b.pt", SHA, None),
    ]:
        with pytest.raises(UsageError):
            drain(files.fetch_events(url, sha, name=name, into=tmp_path / "ws"))
    assert not (tmp_path / "ws").exists()
    with pytest.raises(UsageError, match="over the limit"):
        drain(files.fetch_events(f"{base}/w/yolov8n.pt", SHA, max_bytes=1024))


def test_credentials_in_the_url_are_sent_but_never_shown(server, tmp_path: Path, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    base, state = server
    url = base.replace("http://", "http://u:s3cret@") + "/private/yolov8n.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ENVKIT_STATE_DIR": str(state_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "envkit", "fetch", url, "--sha256", SHA, "--into", str(tmp_path / "ws"), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["downloaded"] is True and data["path"] == str(tmp_path / "ws" / "yolov8n.pt")
    assert "s3cret" not in result.stdout + result.stderr
    assert data["url"].startswith("http://***@127.0.0.1")
    assert state.auth == "Basic " + base64.b64encode(b"u:s3cret").decode()

    wrong = subprocess.run(
        [sys.executable, "-m", "envkit", "fetch", url.replace("s3cret", "nope"), "--sha256", "0" * 64],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert wrong.returncode == 6, wrong.stderr
    assert "401" in wrong.stderr and "nope" not in wrong.stderr
