"""Fetch locked wheels straight from a package index, several at a time, into the wheel cache.

A hash-pinned set needs no resolver: for each package the index page (PEP 691 JSON, or PEP 503
HTML) lists its files with their sha256, and the one to take is the file whose hash the lock
allows and whose tags fit the image best, which is what pip chooses for the same `--platform`,
`--python-version` and `--abi` flags. Each file streams into the cache in 1 MiB reads, hashed on
the way, several files at once: pip reads 10 KiB at a time, copies each file out of its temporary
directory and runs one download after another, which on the build machine made the 3.9 GB of
torch's and NVIDIA's wheels cost 16 s and several seconds of CPU that the layer writing needed.

Only plain index URLs are handled here (`--index-url`, `--extra-index-url`, `--cert`,
`--trusted-host`); anything else, or a package no index lists with an allowed hash, returns None
and the caller lets pip do it. A credential in an index URL goes to that index's host only, never
to a host it redirects to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from envkit.errors import IntegrityError, NetworkError

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before a page or a file counts as unreachable
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class Index:
    url: str  # ends with "/", no credentials
    host: str
    authorization: str | None  # "Basic ..." from the URL's credentials


@dataclass(frozen=True)
class Wanted:
    """One file to fetch: the package, its file name, where it is, its sha256 and size (0: unsaid)."""

    name: str
    version: str
    filename: str
    url: str
    sha256: str
    size: int
    index: Index


def parse_index_args(args: list[str]) -> tuple[list[Index], str | None, set[str]] | None:
    """Indexes, the CA file and trusted hosts from pip's index arguments; None for anything else."""
    urls: list[str] = []
    cert: str | None = None
    trusted: set[str] = set()
    items = iter(args)
    for flag in items:
        value = next(items, None)
        if value is None:
            return None
        if flag == "--index-url":
            urls.insert(0, value)
        elif flag == "--extra-index-url":
            urls.append(value)
        elif flag == "--cert":
            cert = value
        elif flag == "--trusted-host":
            trusted.add(value.split(":", 1)[0])
        else:
            return None
    if not args or "--index-url" not in args:
        urls.insert(0, "https://pypi.org/simple/")
    indexes = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/", "", ""))
        indexes.append(Index(clean, parts.hostname, authorization))
    return indexes, cert, trusted


def tag_ranks(python: str, platforms: list[str]) -> dict[Tag, int]:
    """Every tag the image accepts, best first, as pip orders them for the same flags."""
    major, minor = (int(part) for part in python.split(".")[:2])
    abi = f"cp{major}{minor}"
    tags = [*cpython_tags((major, minor), abis=[abi, "abi3", "none"], platforms=platforms),
            *compatible_tags((major, minor), abi, platforms)]
    ranks: dict[Tag, int] = {}
    for rank, tag in enumerate(tags):
        ranks.setdefault(tag, rank)
    return ranks


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def page_files(body: bytes, content_type: str, page_url: str) -> list[tuple[str, str, str, int]]:
    """(file name, absolute URL, sha256, size or 0) of each file a simple-index page lists with a
    sha256; files listed without one are left out (nothing unhashed is taken)."""
    out = []
    if content_type.split(";")[0].strip() == JSON_TYPE:
        data = json.loads(body)
        for item in data.get("files") or []:
            if not isinstance(item, dict):
                continue
            digest = (item.get("hashes") or {}).get("sha256")
            filename, url = item.get("filename"), item.get("url")
            size = item.get("size")
            if isinstance(digest, str) and isinstance(filename, str) and isinstance(url, str):
                out.append((filename, urljoin(page_url, url), digest.lower(),
                            size if isinstance(size, int) and size > 0 else 0))
        return out
    links = _Links()
    links.feed(body.decode("utf-8", "replace"))
    for href in links.hrefs:
        url, _, fragment = urljoin(page_url, href).partition("#")
        if fragment.startswith("sha256="):
            out.append((unquote(url.rsplit("/", 1)[-1]), url, fragment[7:].lower(), 0))
    return out


def best_file(files: list[tuple[str, str, str, int]], name: str, version: str, hashes: list[str],
              ranks: dict[Tag, int]) -> tuple[str, str, str, int] | None:
    """The listed wheel of `name`==`version` with an allowed hash and the best-ranked tag."""
    allowed = {h.lower() for h in hashes}
    best: tuple[int, str] | None = None
    chosen = None
    for item in files:
        filename, _url, digest, _size = item
        if digest not in allowed or not filename.endswith(".whl"):
            continue
        try:
            dist, wheel_version, _build, tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        if dist != canonicalize_name(name) or str(wheel_version) != version:
            continue
        rank = min((ranks[t] for t in tags if t in ranks), default=None)
        if rank is not None and (best is None or (rank, filename) < best):
            best, chosen = (rank, filename), item
    return chosen


class Fetcher:
    """HTTP for one set of indexes: the CA file, trusted hosts and credentials applied."""

    def __init__(self, cert: str | None, trusted: set[str]) -> None:
        verified = ssl.create_default_context(cafile=cert) if cert else ssl.create_default_context()
        unverified = ssl._create_unverified_context()  # noqa: S323 - pip's --trusted-host, asked for
        self._openers = {
            True: urllib.request.build_opener(urllib.request.HTTPSHandler(context=unverified)),
            False: urllib.request.build_opener(urllib.request.HTTPSHandler(context=verified)),
        }
        self.trusted = trusted

    def open(self, url: str, index: Index, accept: str | None = None):  # type: ignore[no-untyped-def]
        request = urllib.request.Request(url)
        if accept:
            request.add_header("Accept", accept)
        host = urlsplit(url).hostname or ""
        if index.authorization and host == index.host:
            request.add_unredirected_header("Authorization", index.authorization)
        return self._openers[host in self.trusted].open(request, timeout=TIMEOUT)


def plan_direct(locked: dict[str, tuple[str, list[str]]], index_args: list[str], python: str,
                platforms: list[str]) -> tuple[list[Wanted], Fetcher] | None:
    """Where each locked wheel is, or None when some are not found this way (pip will try)."""
    parsed = parse_index_args(index_args)
    if parsed is None:
        return None
    indexes, cert, trusted = parsed
    try:
        fetcher = Fetcher(cert, trusted)
    except (OSError, ssl.SSLError):
        return None
    ranks = tag_ranks(python, platforms)

    def find(name: str) -> Wanted | None:
        version, hashes = locked[name]
        for index in indexes:
            page = urljoin(index.url, canonicalize_name(name) + "/")
            try:
                with fetcher.open(page, index, f"{JSON_TYPE}, text/html;q=0.1") as response:
                    body = response.read()
                    content_type = response.headers.get("Content-Type", "")
                    page = response.geturl()
            except (urllib.error.URLError, OSError, ValueError):
                continue
            try:
                chosen = best_file(page_files(body, content_type, page), name, version, hashes, ranks)
            except ValueError:
                continue
            if chosen is not None:
                filename, url, digest, size = chosen
                return Wanted(name, version, filename, url, digest, size, index)
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(find, sorted(locked)))
    if any(item is None for item in found):
        return None
    return [item for item in found if item is not None], fetcher


class Downloads:
    """The planned files fetched into `root/<sha256>/<file>` by `workers` threads; `done_bytes`
    and `total_bytes` report progress while `futures` run."""

    def __init__(self, wanted: list[Wanted], fetcher: Fetcher, root: Path, workers: int,
                 order: Callable[[list[str]], list[list[str]]]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))  # this run's partial files
        self.fetcher = fetcher
        self.total_bytes = sum(w.size for w in wanted) if all(w.size for w in wanted) else 0
        self._done = [0] * workers
        self._lock = threading.Lock()
        self.paths: dict[str, Path] = {}
        by_name = {w.name: w for w in wanted}
        self._pool = ThreadPoolExecutor(max_workers=workers)
        shares = order(sorted(by_name))
        self.futures: list[Future[None]] = [
            self._pool.submit(self._run, slot, [by_name[n] for n in share])
            for slot, share in enumerate(shares)
        ]

    @property
    def done_bytes(self) -> int:
        return sum(self._done)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        shutil.rmtree(self.incoming, ignore_errors=True)

    def _run(self, slot: int, share: list[Wanted]) -> None:
        for wanted in share:
            path = self._fetch(slot, wanted)
            with self._lock:
                self.paths[wanted.name] = path

    def _fetch(self, slot: int, wanted: Wanted) -> Path:
        sha = hashlib.sha256()
        handle, temp = tempfile.mkstemp(dir=self.incoming)
        try:
            with os.fdopen(handle, "wb") as out:
                try:
                    with self.fetcher.open(wanted.url, wanted.index) as response:
                        while chunk := response.read(CHUNK):
                            sha.update(chunk)
                            out.write(chunk)
                            self._done[slot] += len(chunk)
                except (urllib.error.URLError, OSError) as exc:
                    raise NetworkError(f"could not download {wanted.filename}: {exc}") from None
            digest = sha.hexdigest()
            if digest != wanted.sha256:
                raise IntegrityError(
                    f"hash mismatch for {wanted.name}=={wanted.version}: expected sha256:{wanted.sha256}, "
                    f"computed sha256:{digest}",
                    hint="the index served other bytes than the lock pinned; check the index",
                )
            folder = self.root / digest
            folder.mkdir(exist_ok=True)
            target = folder / wanted.filename
            os.chmod(temp, 0o644)  # as pip's downloads are kept (mkstemp makes it 0600)
            os.replace(temp, target)
            return target
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
