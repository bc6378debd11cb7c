"""Package mirrors: a local PEP 503 index on loopback stands in for a regional PyPI mirror."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from envkit.errors import SpecError, UsageError
from envkit.lock import mirror
from envkit.lock import python as locks

USER, TOKEN = "trainer", "s3cret-token"


def tiny_wheel(name: str = "envkit_tiny", version: str = "1.0", body: str = "VALUE = 1\n") -> tuple[str, bytes]:
    filename = f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": body.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += f"{dist}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            archive.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), data)
    return filename, buffer.getvalue()


class Mirror:
    """A PEP 503 simple index that wants HTTP basic credentials, like a private mirror."""

    def __init__(self, wheels: dict[str, bytes]) -> None:
        self.wheels = wheels
        self.seen_auth: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                expected = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="mirror"')
                    self.end_headers()
                    return
                owner.seen_auth.append(self.path)
                if self.path.rstrip("/") == "/simple/envkit-tiny":
                    links = "".join(
                        f'<a href="/files/{f}#sha256={hashlib.sha256(d).hexdigest()}">{f}</a>\n'
                        for f, d in owner.wheels.items()
                    )
                    self._send(f"<html><body>{links}</body></html>".encode(), "text/html")
                elif self.path.startswith("/files/") and self.path[7:] in owner.wheels:
                    self._send(owner.wheels[self.path[7:]], "application/octet-stream")
                else:
                    self.send_response(404)
                    self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                self.head_only = True
                self.do_GET()

            def _send(self, data: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not getattr(self, "head_only", False):
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{USER}:{TOKEN}@127.0.0.1:{self.server.server_address[1]}/simple/"

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served() -> Iterator[Mirror]:
    filename, data = tiny_wheel()
    with Mirror({filename: data}) as server:
        yield server


needs_uv = pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")


@needs_uv
def test_a_lock_made_through_a_mirror_pins_hashes_and_never_its_credentials(served: Mirror) -> None:
    text = locks.lock_requirements(["envkit-tiny==1.0"], python="3.11", index_url=served.url)
    assert served.seen_auth, "the mirror was not asked"
    expected = hashlib.sha256(next(iter(served.wheels.values()))).hexdigest()
    assert f"--hash=sha256:{expected}" in text
    assert TOKEN not in text and USER not in text and "127.0.0.1" not in text


@needs_uv
def test_a_mirror_serving_other_bytes_than_the_lock_pins_fails_the_install(served: Mirror, tmp_path: Path) -> None:
    text = locks.lock_requirements(["envkit-tiny==1.0"], python="3.11", index_url=served.url)
    (tmp_path / "requirements.txt").write_text(text)
    filename, _ = tiny_wheel()
    _, tampered = tiny_wheel(body="VALUE = 2  # not what was locked\n")
    served.wheels[filename] = tampered
    uv = str(shutil.which("uv"))
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(tmp_path / "venv")], check=True)
    result = subprocess.run(
        [uv, "pip", "install", "--python", str(tmp_path / "venv" / "bin" / "python"), "--require-hashes",
         "--no-deps", "--index-url", served.url, "-r", str(tmp_path / "requirements.txt")],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "hash" in result.stderr.lower()


def test_the_mirror_order_cli_then_environment_then_spec() -> None:
    spec_url = "https://mirror.example.org/simple/"
    env = {mirror.ENV_VAR: "https://env.example.org/simple/"}
    assert mirror.choose(spec_url=spec_url, environ={}).primary == spec_url
    assert mirror.choose(spec_url=spec_url, environ=env).primary == env[mirror.ENV_VAR]
    chosen = mirror.choose(cli_url="https://cli.example.org/simple/", spec_url=spec_url, environ=env)
    assert chosen.primary == "https://cli.example.org/simple/"
    assert mirror.choose(environ={}) == mirror.Indexes()
    # The PyTorch index keeps its place; the mirror serves everything else.
    torch = "https://download.pytorch.org/whl/cu128"
    chosen = mirror.choose(spec_url=spec_url, torch_index=torch, environ={})
    assert chosen.uv_args() == ["--index-url", torch, "--extra-index-url", spec_url]


def test_a_plain_http_mirror_is_trusted_and_its_credentials_redacted() -> None:
    url = "http://u:tok@10.1.2.3:8080/simple/"
    assert mirror.redact(url) == "http://***@10.1.2.3:8080/simple/"
    assert "--trusted-host" in mirror.Indexes(primary=url).pip_args()


def test_bad_mirror_urls_are_refused_with_exit_2() -> None:
    with pytest.raises(UsageError) as caught:
        mirror.choose(cli_url="ftp://x/simple/", environ={})
    assert caught.value.exit_code == 2
    with pytest.raises(UsageError):
        mirror.choose(environ={mirror.ENV_VAR: "not a url"})


def test_a_spec_names_a_mirror_without_credentials_and_outside_its_digest(tmp_path: Path) -> None:
    from envkit.spec.catalog import load
    from envkit.spec.model import parse_spec_text

    ref = load("pytorch-cuda:2.6")
    text = ref.path.read_text()
    plain = parse_spec_text(text.encode(), "a.yaml")
    mirrored = parse_spec_text((
        text + "index_url: https://mirror.example.org/pypi/simple/\n"
        "extra_index_url:\n  - https://other.example.org/simple/\n").encode(), "b.yaml"
    )
    assert mirrored.index_url == "https://mirror.example.org/pypi/simple/"
    assert mirrored.digest() == plain.digest() == ref.spec.digest()
    with pytest.raises(SpecError, match="credentials"):
        parse_spec_text((text + "index_url: https://u:p@mirror.example.org/simple/\n").encode(), "c.yaml")


def test_a_build_through_a_mirror_keeps_its_url_out_of_the_dockerfile_and_labels() -> None:
    from envkit.image.build import plan_build

    url = f"http://{USER}:{TOKEN}@127.0.0.1:9/simple/"
    plan = plan_build("pytorch-cuda:2.6", with_requirements=False, index_url=url)
    assert plan.index_args[:2] == ["--index-url", url]  # the host's download uses it
    assert TOKEN not in plan.dockerfile and "127.0.0.1" not in plan.dockerfile
    from envkit.image.render import labels_for

    assert not any(TOKEN in value for value in labels_for(plan.render_input).values())
    plain = plan_build("pytorch-cuda:2.6", with_requirements=False, environ={})
    assert "ARG" not in plain.dockerfile and "--index-url" not in plain.index_args
