"""Files a training job reads but no package carries (model weights such as ``yolov8n.pt``),
fetched once by URL and sha256 into a content-addressed host cache and put where a container sees
them, so that a job started with ``envkit run --offline`` finds them without the network.

The cache lives under the state directory: ``files/sha256/<hex>``. A file enters it only after its
bytes hash to the sha256 the user gave; a second fetch of the same sha256 downloads nothing. The
URL may carry credentials: they are used for the request and never printed or stored.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from envkit.atomic import place_file
from envkit.digests import sha256_file
from envkit.errors import IntegrityError, NetworkError, UsageError
from envkit.events import Event, done
from envkit.lock.mirror import redact
from envkit.state import state_root

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A plain file name: what a training script names (yolov8n.pt, resnet50-0676ba61.pth).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 20 << 30


@dataclass(frozen=True)
class Fetched:
    name: str
    sha256: str
    size: int
    cached: Path
    placed: Path | None
    downloaded: bool
    source: str  # the URL without credentials

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name, "sha256": self.sha256, "size": self.size, "cache": str(self.cached),
            "path": str(self.placed) if self.placed else None, "downloaded": self.downloaded,
            "url": self.source,
        }


def cache_dir() -> Path:
    return state_root() / "files" / "sha256"


def check_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"{redact(url)!r} is not an http(s) URL")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise UsageError(f"{redact(url)!r}: a URL holds no spaces or control characters")
    return url


def check_sha256(value: str) -> str:
    value = value.strip().lower().removeprefix("sha256:")
    if not SHA256_RE.match(value):
        raise UsageError(f"--sha256 {value[:80]!r}: give the file's sha256 as 64 hex digits")
    return value


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or name in (".", ".."):
        raise UsageError(
            f"{name[:80]!r} is not a plain file name (letters, digits, . _ + -; no directories)"
        )
    return name


def default_name(url: str) -> str:
    last = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if not last or not NAME_RE.match(last):
        raise UsageError(f"{redact(url)!r} ends in no plain file name: give one with --name")
    return last


def _download(url: str, sha256: str, destination: Path, max_bytes: int) -> Iterator[Event]:
    """Stream ``url`` into a temporary file beside ``destination``; rename it there only when
    its sha256 is the one asked for."""
    shown = redact(url)
    parsed = urllib.parse.urlsplit(url)
    request = urllib.request.Request(url)
    if parsed.username is not None:  # credentials in the URL become a header, never a log line
        netloc = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
        request = urllib.request.Request(urllib.parse.urlunsplit(parsed._replace(netloc=netloc)))
        pair = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".fetch-", dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0)
                if total > max_bytes:
                    raise UsageError(f"{shown} is {total} bytes, over the limit of {max_bytes} (--max-size)")
                yield Event("phase", f"downloading {shown}")
                shown_at = 0
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UsageError(f"{shown} is over the limit of {max_bytes} bytes (--max-size)")
                    digest.update(chunk)
                    out.write(chunk)
                    if size - shown_at >= 64 * CHUNK:
                        shown_at = size
                        yield Event("download", _amount(size, total))
                out.flush()
                os.fsync(out.fileno())
        except urllib.error.HTTPError as exc:
            raise NetworkError(f"{shown}: the server answered {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise NetworkError(f"{shown}: {reason}",
                               hint="check the URL and the network (or proxy)") from None
        got = digest.hexdigest()
        if got != sha256:
            raise IntegrityError(
                f"{shown}: its sha256 is {got}, not {sha256}; nothing was kept",
                hint="the file changed on the server, or the sha256 given is not this file's",
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


def _amount(size: int, total: int) -> str:
    mib = size / (1 << 20)
    return f"{mib:.0f} MiB of {total / (1 << 20):.0f} MiB" if total else f"{mib:.0f} MiB"


def _cached_ok(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    if sha256_file(path) == sha256:
        return True
    path.unlink()  # a damaged cache entry is dropped and fetched again
    return False


def fetch_events(
    url: str, sha256: str, *, name: str | None = None, into: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[Event]:
    """Fetch ``url`` (checked against ``sha256``) into the host cache, then into ``into``/NAME.

    The last event carries a ``Fetched``. Known failures: a bad URL, name or sha256 (2), the
    server unreachable or refusing (6), bytes that are not the sha256's (5, nothing kept)."""
    check_url(url)
    sha256 = check_sha256(sha256)
    name = check_name(name) if name else default_name(url)
    cached = cache_dir() / sha256
    downloaded = False
    if _cached_ok(cached, sha256):
        yield Event("phase", f"{name}: in the host cache, nothing to download")
    else:
        yield from _download(url, sha256, cached, max_bytes)
        downloaded = True
    placed = None
    if into is not None:
        placed = into / name
        place_file(cached, placed)
        yield Event("phase", f"{name} -> {placed}")
    result = Fetched(name=name, sha256=sha256, size=cached.stat().st_size, cached=cached, placed=placed,
                     downloaded=downloaded, source=redact(url))
    yield done(f"{name}: {sha256}", result)
