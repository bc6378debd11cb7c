"""Builds with the network cut: a local package server on an internal Docker network.

Build containers join an internal bridge network, which has no route out of the host: no DNS for
outside names, no default gateway. The one thing they can reach is this process, listening on the
network's gateway address. It serves

* the bundle's wheels as a PEP 503 simple index (``/simple/<project>/``, ``/wheels/<file>``), and
* the Debian mirror as an HTTP proxy (apt honours ``http_proxy``) that answers only with files
  the bundle recorded; anything else is a 404 that is remembered and reported.

The same server records: with an upstream allowed, a miss is fetched once from the real mirror and
kept, which is how ``envkit bundle`` collects exactly the files apt asks for.
"""

from __future__ import annotations

import contextlib
import html
import re
import shutil
import socket
import tarfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

import docker
import docker.errors
from packaging.utils import canonicalize_name

from envkit import labels
from envkit.atomic import open_atomic
from envkit.errors import NetworkError

CHUNK = 1 << 20
_SAFE_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?$")


def normalize(project: str) -> str:
    return str(canonicalize_name(project))


def wheel_project(filename: str) -> str:
    return normalize(filename.split("-", 1)[0])


def mirror_key(url: str) -> str | None:
    """The store key of a mirror URL (``apt/<host>/<path>``), or None when it cannot be stored."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not _SAFE_HOST_RE.match(parts.netloc) or parts.query:
        return None
    segments = [s for s in parts.path.split("/") if s]
    if not segments or any(s in (".", "..") or "\\" in s for s in segments):
        return None
    return "/".join(["apt", parts.netloc, *segments])


class Store(Protocol):
    def has(self, key: str) -> bool: ...

    def open(self, key: str) -> tuple[BinaryIO, int] | None: ...


class DirStore:
    """Files under a directory; the recording side of a bundle."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def open(self, key: str) -> tuple[BinaryIO, int] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        return path.open("rb"), path.stat().st_size

    def put(self, key: str, source: BinaryIO) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_atomic(path) as out:
            shutil.copyfileobj(source, out, CHUNK)


class TarStore:
    """Members of an uncompressed tar, read in place by offset (a bundle is never unpacked)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with tarfile.open(self.path, "r:") as tar:
            self.members = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}

    def has(self, key: str) -> bool:
        return key in self.members

    def open(self, key: str) -> tuple[BinaryIO, int] | None:
        found = self.members.get(key)
        if found is None:
            return None
        offset, size = found
        handle = self.path.open("rb")
        handle.seek(offset)
        return _Window(handle, size), size


class _Window:
    """At most ``size`` bytes of an open file, from where it stands."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.left = handle, size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n < 0 else min(n, self.left)
        data = self.handle.read(n)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.handle.close()


@dataclass
class ServerLog:
    served: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, key: str) -> None:
        with self.lock:
            getattr(self, kind).append(key)


class PackageServer:
    """The HTTP side: simple index, wheel files and the mirror proxy, on ``host``."""

    def __init__(
        self,
        store: Store,
        wheels: dict[str, str],
        host: str,
        *,
        record_to: DirStore | None = None,
    ) -> None:
        self.store = store
        self.wheels = dict(wheels)  # file name -> sha256 hex
        self.record_to = record_to
        self.log = ServerLog()
        self._fetch_lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.handle(self, send_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                server.handle(self, send_body=False)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PackageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # Routing -------------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler, *, send_body: bool) -> None:
        target = request.path
        if target.startswith("http://"):
            parts = urlsplit(target)
            if parts.netloc != f"{self.host}:{self.port}":
                self._mirror(request, target, send_body)
                return
            target = parts.path
        if target.startswith("/simple"):
            self._simple(request, target, send_body)
        elif target.startswith("/wheels/"):
            name = target[len("/wheels/"):]
            if name not in self.wheels:
                self._status(request, 404, send_body)
                return
            self._file(request, f"wheels/{name}", send_body)
        else:
            self._status(request, 404, send_body)

    def _simple(self, request: BaseHTTPRequestHandler, target: str, send_body: bool) -> None:
        project = target[len("/simple"):].strip("/")
        if not project:
            names = sorted({wheel_project(f) for f in self.wheels})
            links = "".join(f'<a href="{n}/">{n}</a>\n' for n in names)
        else:
            files = sorted(f for f in self.wheels if wheel_project(f) == normalize(project))
            if not files:
                self._status(request, 404, send_body)
                return
            links = "".join(
                f'<a href="../../wheels/{html.escape(f)}#sha256={self.wheels[f]}">{html.escape(f)}</a>\n'
                for f in files
            )
        body = f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode()
        self._headers(request, 200, len(body), "text/html")
        if send_body:
            request.wfile.write(body)

    def _mirror(self, request: BaseHTTPRequestHandler, url: str, send_body: bool) -> None:
        key = mirror_key(url)
        if key is None:
            self.log.add("missing", url)
            self._status(request, 404, send_body)
            return
        if not self.store.has(key) and self.record_to is not None:
            with self._fetch_lock:  # one fetch per file, and the first answer is the one kept
                if not self.store.has(key) and not self._record(url, key):
                    self._status(request, 404, send_body)
                    return
        self._file(request, key, send_body, missing_name=url)

    def _record(self, url: str, key: str) -> bool:
        assert self.record_to is not None
        try:
            with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (http mirror)
                self.record_to.put(key, response)
        except urllib.error.HTTPError:
            return False  # a 404 upstream (apt probes optional files) stays a 404 offline
        except (urllib.error.URLError, OSError) as exc:
            raise NetworkError(f"could not fetch {url} while recording: {exc}") from None
        self.log.add("recorded", key)
        return True

    def _file(
        self, request: BaseHTTPRequestHandler, key: str, send_body: bool, missing_name: str | None = None
    ) -> None:
        found = self.store.open(key)
        if found is None:
            self.log.add("missing", missing_name or key)
            self._status(request, 404, send_body)
            return
        handle, size = found
        try:
            self._headers(request, 200, size, "application/octet-stream")
            if send_body:
                shutil.copyfileobj(handle, request.wfile, CHUNK)
        finally:
            handle.close()
        self.log.add("served", key)

    @staticmethod
    def _headers(request: BaseHTTPRequestHandler, code: int, length: int, kind: str) -> None:
        request.send_response(code)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(length))
        request.end_headers()

    def _status(self, request: BaseHTTPRequestHandler, code: int, send_body: bool) -> None:
        body = f"{code}\n".encode()
        self._headers(request, code, len(body), "text/plain")
        if send_body:
            request.wfile.write(body)


@contextlib.contextmanager
def internal_network(client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """A fresh internal bridge network; yields (name, gateway address) and removes it after."""
    name = f"envkit-offline-{uuid.uuid4().hex[:10]}"
    network = client.networks.create(name, driver="bridge", internal=True, labels={labels.OFFLINE: "1"})
    try:
        network.reload()
        configs = (network.attrs.get("IPAM") or {}).get("Config") or []
        gateway = next((c.get("Gateway") for c in configs if c.get("Gateway")), None)
        if not gateway:
            raise NetworkError(f"network {name} has no gateway address to serve packages on")
        yield name, gateway.split("/")[0]
    finally:
        with contextlib.suppress(docker.errors.APIError):
            network.remove()


def outside_addresses(hosts: tuple[str, ...] = ("deb.debian.org", "pypi.org")) -> list[tuple[str, int]]:
    """Addresses on the internet a cut-off build must not reach (resolved here, on the host)."""
    found: list[tuple[str, int]] = []
    for host, port in ((h, 80 if "debian" in h else 443) for h in hosts):
        with contextlib.suppress(OSError):
            found.append((socket.gethostbyname(host), port))
    return found


def assert_cut_off(
    client: docker.DockerClient, network: str, image: str, targets: list[tuple[str, int]]
) -> list[str]:
    """Prove a container on ``network`` reaches none of ``targets``; return what was tried."""
    if not targets:
        return []
    probes = " ; ".join(
        f"if timeout 4 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null; then echo REACHED {ip}:{port}; fi"
        for ip, port in targets
    )
    output = client.containers.run(
        image, ["bash", "-c", probes], network=network, remove=True, entrypoint="", user="0"
    ).decode()
    if "REACHED" in output:
        raise NetworkError(
            f"the offline build network {network} reaches the internet ({output.strip()})",
            hint="the engine does not isolate internal networks here; an offline restore is not proven",
        )
    return [f"{ip}:{port}" for ip, port in targets]
