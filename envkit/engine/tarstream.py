"""The one tar reader and the one tar writer, both streaming and both free of `tarfile`'s stream mode.

The reader (`iter_tar`) yields each member with a reader over its data and never holds more than
a chunk; `tarfile`'s stream mode copies every block several times and ran at about a tenth of the
disk's speed on a layer of shared libraries. The writer (`tar_header`) writes ustar headers with
PAX records only where a field does not fit, keys sorted, so the bytes depend on the member alone
and not on the Python version that wrote them. `tar_bytes` builds a small in-memory tar (a build
context, files to copy into a container) with the same writer.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from envkit.errors import IntegrityError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
END_OF_ARCHIVE = bytes(2 * BLOCK)
COPY_CHUNK = 4 << 20
SAVE_CHUNK = 4 << 20

_ENC = "utf-8"
_ERR = "surrogateescape"

# PAX records that describe the moment or the machine, not the file.
_DROPPED_PAX = frozenset(
    {"atime", "ctime", "mtime", "hdrcharset", "comment", "SCHILY.dev", "SCHILY.ino", "SCHILY.nlink"}
)
_DATA_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})


def carries_data(info: tarfile.TarInfo) -> bool:
    """Whether the member's size counts data blocks (regular files and unknown types do)."""
    return info.type in _DATA_TYPES or info.type not in tarfile.SUPPORTED_TYPES


class TarFormatError(IntegrityError):
    """A tar stream this module cannot read (truncated, sparse members, a bad header)."""


class Source(Protocol):
    def read(self, n: int) -> bytes: ...

    def readinto(self, buf: memoryview) -> int: ...


# --------------------------------------------------------------------------------------------
# Reading tar streams without `tarfile`'s stream mode, which copies every block several times
# and ran at about a tenth of the disk's speed on a layer of shared libraries.


class IterReader(io.RawIOBase):
    """A readable raw stream over an iterator of byte chunks, such as the body of `docker save`."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def buffered(chunks: Iterable[bytes], size: int = SAVE_CHUNK) -> io.BufferedReader:
    """A buffered reader over byte chunks (the body of `docker save`), ready for `iter_tar`."""
    return io.BufferedReader(IterReader(chunks), size)


class Limited:
    """At most `size` bytes of an underlying stream: the data of one tar member."""

    def __init__(self, src: Source, size: int) -> None:
        self._src = src
        self.remaining = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self._src.read(n) if n else b""
        if len(data) < n:
            raise TarFormatError("tar stream ends in the middle of a member")
        self.remaining -= len(data)
        return data

    def readinto(self, buf: memoryview) -> int:
        want = min(len(buf), self.remaining)
        got = 0
        while got < want:
            n = self._src.readinto(buf[got:want])
            if not n:
                raise TarFormatError("tar stream ends in the middle of a member")
            got += n
        self.remaining -= got
        return got

    def drain(self) -> None:
        scratch = memoryview(bytearray(min(self.remaining, COPY_CHUNK) or 1))
        while self.remaining:
            self.readinto(scratch[: min(len(scratch), self.remaining)])


def padding(size: int) -> int:
    return -size % BLOCK


def _parse_pax(data: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError as exc:
            raise TarFormatError("malformed PAX record") from exc
        if length <= 0:
            raise TarFormatError("malformed PAX record")
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode(_ENC, _ERR)] = value
        pos += length
    return records


def _apply_pax(info: tarfile.TarInfo, records: dict[str, bytes]) -> None:
    info.pax_headers = {}
    for key, raw in records.items():
        if key == "path":
            info.name = raw.decode(_ENC, _ERR)
        elif key == "linkpath":
            info.linkname = raw.decode(_ENC, _ERR)
        elif key == "size":
            info.size = int(raw)
        elif key in ("uid", "gid"):
            setattr(info, key, int(raw))
        elif key == "mtime":
            info.mtime = float(raw)
        elif key in ("uname", "gname"):
            setattr(info, key, raw.decode(_ENC, _ERR))
        elif key.startswith("GNU.sparse."):
            raise TarFormatError(f"sparse member {info.name!r} is not supported")
        elif key in _DROPPED_PAX or key.startswith("LIBARCHIVE."):
            continue
        else:
            # Kept as raw bytes (xattrs such as file capabilities are binary).
            info.pax_headers[key] = raw  # type: ignore[assignment]


def iter_tar(src: Source) -> Iterator[tuple[tarfile.TarInfo, Limited]]:
    """Yield each member of a tar stream with a reader over its data.

    Names come back without a trailing slash. The consumer reads as much of the data as it wants
    before asking for the next member; the rest is skipped. Stops at the end-of-archive block.
    """
    pax_global: dict[str, bytes] = {}
    pax: dict[str, bytes] | None = None
    long_name: str | None = None
    long_link: str | None = None
    while True:
        block = src.read(BLOCK)
        if len(block) < BLOCK:
            if not block:
                return
            raise TarFormatError("tar stream ends in the middle of a header")
        if block == ZERO_BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(block, _ENC, _ERR)
        except tarfile.HeaderError as exc:
            raise TarFormatError(f"bad tar header: {exc}") from exc
        kind = info.type
        if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            data = _read_exact(src, info.size + padding(info.size))[: info.size]
            if kind == tarfile.XGLTYPE:
                pax_global.update(_parse_pax(data))
            else:
                pax = _parse_pax(data)
            continue
        if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            data = _read_exact(src, info.size + padding(info.size))[: info.size]
            value = data.split(b"\0", 1)[0].decode(_ENC, _ERR)
            if kind == tarfile.GNUTYPE_LONGNAME:
                long_name = value
            else:
                long_link = value
            continue
        if kind == tarfile.GNUTYPE_SPARSE:
            raise TarFormatError(f"sparse member {info.name!r} is not supported")
        _apply_pax(info, {**pax_global, **(pax or {})})
        if long_name is not None:
            info.name = long_name
        if long_link is not None:
            info.linkname = long_link
        pax, long_name, long_link = None, None, None
        if info.isdir():
            info.name = info.name.rstrip("/")
        size = info.size if carries_data(info) else 0
        data_reader = Limited(src, size)
        yield info, data_reader
        data_reader.drain()
        _skip(src, padding(size))


def _read_exact(src: Source, n: int) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise TarFormatError("tar stream ends in the middle of a member")
    return data


def _skip(src: Source, n: int) -> None:
    if n:
        Limited(src, n).drain()


# --------------------------------------------------------------------------------------------
# Writing tar headers: ustar with PAX records only where a field does not fit, keys sorted.


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode(_ENC, _ERR) + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes,
           linkname: bytes = b"", devmajor: int = 0, devminor: int = 0) -> bytes:
    header = b"".join(
        (
            name[:100].ljust(100, b"\0"),
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b" " * 8,
            kind,
            linkname[:100].ljust(100, b"\0"),
            b"ustar\x0000",
            b"\0" * 32,
            b"\0" * 32,
            _octal(devmajor, 8),
            _octal(devminor, 8),
            b"\0" * 155,
        )
    ).ljust(BLOCK, b"\0")
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


def tar_header(info: tarfile.TarInfo) -> bytes:
    """Header bytes for one member, PAX records first when needed. Deterministic for its input."""
    name = info.name.encode(_ENC, _ERR)
    if info.isdir() and not name.endswith(b"/"):
        name += b"/"
    linkname = info.linkname.encode(_ENC, _ERR)
    records: dict[str, bytes] = {
        k: (v if isinstance(v, bytes) else str(v).encode(_ENC, _ERR)) for k, v in info.pax_headers.items()
    }
    if len(name) > 100 or not name.isascii():
        records["path"] = name
    if len(linkname) > 100 or not linkname.isascii():
        records["linkpath"] = linkname
    numbers = {
        "uid": (info.uid, 8), "gid": (info.gid, 8), "size": (info.size, 12), "mtime": (int(info.mtime), 12)
    }
    fields: dict[str, int] = {}
    for key, (value, width) in numbers.items():
        if 0 <= value < 8 ** (width - 1):
            fields[key] = value
        else:
            records[key] = str(value).encode()
            fields[key] = 0
    out = b""
    if records:
        if any(not _is_utf8(v) for v in records.values()):
            records["hdrcharset"] = b"BINARY"
        payload = b"".join(_pax_record(k, records[k]) for k in sorted(records))
        out = _ustar(b"././@PaxHeader", 0o644, 0, 0, len(payload), 0, tarfile.XHDTYPE)
        out += payload + bytes(padding(len(payload)))
    devmajor = info.devmajor if info.ischr() or info.isblk() else 0
    devminor = info.devminor if info.ischr() or info.isblk() else 0
    kind = tarfile.REGTYPE if info.type == tarfile.AREGTYPE else info.type
    return out + _ustar(name, info.mode & 0o7777, fields["uid"], fields["gid"], fields["size"],
                        fields["mtime"], kind, linkname, devmajor, devminor)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Prefixed:
    """A source that yields `head` first, then the rest of `tail`."""

    def __init__(self, head: bytes, tail: Source) -> None:
        self._head = memoryview(head)
        self._tail = tail

    def read(self, n: int) -> bytes:
        if self._head:
            first = bytes(self._head[:n])
            self._head = self._head[len(first) :]
            return first + (self._tail.read(n - len(first)) if n > len(first) else b"")
        return self._tail.read(n)

    def readinto(self, buf: memoryview) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._tail.readinto(buf)


def normalize_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.lstrip("/")
    return name.rstrip("/") or "."


def member(
    name: str,
    data: bytes | None = None,
    *,
    size: int | None = None,
    mode: int | None = None,
    mtime: int = 0,
    uid: int = 0,
    gid: int = 0,
) -> bytes:
    """One member as bytes, written by `tar_header`.

    With neither `data` nor `size` it is a directory (mode 0755 unless given). With `data` it is a
    file (mode 0644 unless given): header, data and padding. With only `size` it is the header of
    a file whose data and padding (`padding(size)` zero bytes) the caller streams after it.
    """
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid = mtime, uid, gid
    if data is None and size is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755 if mode is None else mode
        return tar_header(info)
    info.size = len(data) if data is not None else size or 0
    info.mode = 0o644 if mode is None else mode
    head = tar_header(info)
    if data is None:
        return head
    return head + data + bytes(padding(len(data)))


def tar_bytes(
    entries: Iterable[tuple[str, bytes | None]],
    *,
    mtime: int = 0,
    modes: Mapping[str, int] | None = None,
    uid: int = 0,
    gid: int = 0,
) -> bytes:
    """A whole tar in memory from (name, data) pairs in the order given; data None is a directory.

    Modes default to 0644 for files and 0755 for directories; `modes` overrides them by name.
    """
    given = modes or {}
    parts = [
        member(name, data, mode=given.get(name), mtime=mtime, uid=uid, gid=gid) for name, data in entries
    ]
    return b"".join(parts) + END_OF_ARCHIVE


def file_chunks(path: Any, size: int, *, label: str = "file") -> Iterator[bytes]:
    """The data of a file of `size` bytes as chunks, then its padding; a file that changed size
    while being read is an error rather than a corrupt archive."""
    sent = 0
    with open(path, "rb", buffering=0) as fh:
        while data := fh.read(COPY_CHUNK):
            sent += len(data)
            yield data
    if sent != size:
        raise IntegrityError(f"{label} {path} changed while being sent")
    yield bytes(padding(size))
