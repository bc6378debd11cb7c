"""Seal an image: rewrite its layers and config so that the same inputs give the same image ID.

The classic builder stamps the build time into every file it creates, into the image config and
into its history, and leaves caches and logs behind. Sealing streams the image out of the engine
(`docker save`), rewrites each layer in one pass and loads the result back:

* entries in sorted order, mtimes clamped to SOURCE_DATE_EPOCH, numeric uid/gid with empty names,
  PAX records without atime/ctime, whiteouts kept;
* volatile files removed (apt lists and caches, /var/log files, the ldconfig aux-cache, /tmp,
  /root/.cache) and /etc/machine-id emptied; timestamp-based .pyc headers clamped like their sources;
* layers left with no entries dropped; a config with fixed `created` and history timestamps and
  without the builder's container, hostname and parent-image fields.

Same layer content gives the same layer digest, so when only the last logical layer changes, only
that layer differs from the previous seal, and layers the engine already holds (same chain ID) are
left out of the archive sent to `docker load`. Tar headers are written here rather than by
`tarfile`, so the bytes do not depend on the Python version that did the sealing.

Where the time goes: on Docker 20.10 `docker save` writes the whole image to the engine's own
temporary directory before sending the first byte, and `docker load` stores the whole archive
before applying it, so for a large image most of a full seal is spent in the engine. When the
build already makes its layers deterministic, `rewrite_layers=False` seals the config alone and
moves no layer data at all.

The tag moves to the sealed image only once the engine has loaded it; an interruption or a full
disk before that leaves the unsealed image and its tags as they were.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import struct
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import docker
import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from envkit.engine.dockerarchive import rfc3339
from envkit.errors import (
    BuildFailed,
    DiskFull,
    EngineRefused,
    EnvkitError,
    IntegrityError,
    Interrupted,
    UsageError,
)

SOURCE_DATE_EPOCH_LABEL = "io.envkit.source-date-epoch"
TMPDIR_ENV = "ENVKIT_TMPDIR"

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

Progress = Callable[[str], None]


class TarFormatError(IntegrityError):
    """A tar stream this module cannot read (truncated, sparse members, a bad header)."""


class _Source(Protocol):
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


class Limited:
    """At most `size` bytes of an underlying stream: the data of one tar member."""

    def __init__(self, src: _Source, size: int) -> None:
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


def _padding(size: int) -> int:
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


def iter_tar(src: _Source) -> Iterator[tuple[tarfile.TarInfo, Limited]]:
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
            data = _read_exact(src, info.size + _padding(info.size))[: info.size]
            if kind == tarfile.XGLTYPE:
                pax_global.update(_parse_pax(data))
            else:
                pax = _parse_pax(data)
            continue
        if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            data = _read_exact(src, info.size + _padding(info.size))[: info.size]
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
        has_data = kind in _DATA_TYPES or kind not in tarfile.SUPPORTED_TYPES
        size = info.size if has_data else 0
        data_reader = Limited(src, size)
        yield info, data_reader
        data_reader.drain()
        _skip(src, _padding(size))


def _read_exact(src: _Source, n: int) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise TarFormatError("tar stream ends in the middle of a member")
    return data


def _skip(src: _Source, n: int) -> None:
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
        out += payload + bytes(_padding(len(payload)))
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


# --------------------------------------------------------------------------------------------
# The layer rewriter.

DROP = "drop"
EMPTY = "empty"


def normalize_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.lstrip("/")
    return name.rstrip("/") or "."


def volatile_action(name: str, info: tarfile.TarInfo) -> str | None:
    """DROP, EMPTY or None for a normalized member name. Whiteouts are always kept."""
    base = posixpath.basename(name)
    if base.startswith(".wh."):
        return None
    parent = posixpath.dirname(name)
    if name.startswith("var/lib/apt/lists/"):
        return DROP
    if parent == "var/cache/apt" and base.endswith(".bin"):
        return DROP
    if parent == "var/cache/apt/archives" and base.endswith(".deb"):
        return DROP
    if name.startswith("var/cache/apt/archives/partial/"):
        return DROP
    if name.startswith("var/log/") and not info.isdir():
        return DROP
    if name == "var/cache/ldconfig/aux-cache":
        return DROP
    if name == "root/.cache" or name.startswith("root/.cache/"):
        return DROP
    if name.startswith("tmp/"):
        return DROP
    if name == "etc/machine-id" and info.isreg():
        return EMPTY
    return None


def sort_key(name: str) -> tuple[bytes, ...]:
    """Component-wise byte order: a directory, then its contents, siblings by name.

    This is the order a sorted directory walk gives, which is how the engine writes layers, so a
    layer straight from `docker save` is usually in order already and is rewritten in one pass.
    """
    if name == ".":
        return ()
    return tuple(part.encode(_ENC, _ERR) for part in name.split("/"))


@dataclass(frozen=True)
class LayerRewrite:
    diff_id: str
    size: int
    entries: int
    removed: int
    emptied: int
    pyc_clamped: int
    reordered: bool
    removed_sample: tuple[str, ...] = ()


@dataclass
class _Record:
    key: tuple[bytes, ...]
    seq: int
    info: tarfile.TarInfo
    data_offset: int


class _HashingWriter:
    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.pos = 0

    def write(self, data: bytes | memoryview) -> None:
        self._fh.write(data)
        self.digest.update(data)
        self.pos += len(data)


def _clamp_pyc(head: memoryview, epoch: int) -> bool:
    """Clamp the source mtime in a timestamp-based .pyc header the way the source is clamped."""
    if len(head) < 16 or bytes(head[2:4]) != b"\r\n":
        return False
    (flags,) = struct.unpack_from("<I", head, 4)
    if flags != 0:
        return False  # hash-based (PEP 552): nothing time-dependent
    (mtime,) = struct.unpack_from("<I", head, 8)
    if mtime <= epoch:
        return False
    struct.pack_into("<I", head, 8, epoch & 0xFFFFFFFF)
    return True


def _clean_info(info: tarfile.TarInfo, name: str, epoch: int, *, emptied: bool) -> tarfile.TarInfo:
    new = tarfile.TarInfo(name)
    new.type = info.type
    new.mode = info.mode & 0o7777
    new.uid, new.gid = info.uid, info.gid
    new.uname = new.gname = ""
    new.mtime = min(int(info.mtime), epoch)
    new.linkname = info.linkname
    new.devmajor, new.devminor = info.devmajor, info.devminor
    has_data = info.type in _DATA_TYPES or info.type not in tarfile.SUPPORTED_TYPES
    new.size = 0 if emptied or not has_data else info.size
    new.pax_headers = dict(sorted(info.pax_headers.items()))
    return new


def rewrite_layer(src: _Source, dst: BinaryIO, *, epoch: int, sample: int = 20) -> LayerRewrite:
    """Rewrite one layer tar from `src` into `dst` (seekable, empty) and return its digest.

    One pass when the input is already in order; otherwise the rewritten members are copied
    once more into sorted order, which needs `dst` to be a real file.
    """
    out = _HashingWriter(dst)
    records: list[_Record] = []
    dropped: set[str] = set()
    removed_sample: list[str] = []
    removed = emptied = pyc_clamped = 0
    in_order = True
    prev_key: tuple[bytes, ...] | None = None
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    for seq, (info, data) in enumerate(iter_tar(src)):
        name = normalize_name(info.name)
        action = volatile_action(name, info)
        if action is None and info.islnk():
            target = normalize_name(info.linkname)
            if target in dropped:
                action = DROP  # the file it links to is volatile, so is the link
            info.linkname = target
        if action == DROP:
            dropped.add(name)
            removed += 1
            if len(removed_sample) < sample:
                removed_sample.append(name)
            continue
        new = _clean_info(info, name, epoch, emptied=action == EMPTY)
        emptied += action == EMPTY
        key = sort_key(name)
        if prev_key is not None and key <= prev_key:
            in_order = False
        prev_key = key
        out.write(tar_header(new))
        records.append(_Record(key, seq, new, out.pos))
        remaining = new.size
        first = True
        while remaining:
            n = data.readinto(view[: min(len(view), remaining)])
            chunk = view[:n]
            if first and name.endswith(".pyc"):
                pyc_clamped += _clamp_pyc(chunk, epoch)
            first = False
            out.write(chunk)
            remaining -= n
        out.write(ZERO_BLOCK[: _padding(new.size)])
    out.write(END_OF_ARCHIVE)
    if in_order:
        digest, size = "sha256:" + out.digest.hexdigest(), out.pos
    else:
        digest, size = _resort(records, dst)
    return LayerRewrite(
        diff_id=digest,
        size=size,
        entries=len(records),
        removed=removed,
        emptied=emptied,
        pyc_clamped=pyc_clamped,
        reordered=not in_order,
        removed_sample=tuple(removed_sample),
    )


def _resort(records: list[_Record], fh: BinaryIO) -> tuple[str, int]:
    """Rewrite `fh` (holding the members in input order) in sorted order, in place via a copy."""
    fh.flush()
    latest: dict[tuple[bytes, ...], _Record] = {}
    for rec in records:
        latest[rec.key] = rec  # a name given twice: the later member wins, as on extraction
    ordered = sorted(latest.values(), key=lambda r: r.key)
    _fix_hardlink_order(ordered)
    src_path = getattr(fh, "name", None)
    if not isinstance(src_path, str):
        raise TypeError("reordering a layer needs a named file")
    tmp_path = src_path + ".sorted"
    with open(src_path, "rb", buffering=0) as src, open(tmp_path, "wb", buffering=COPY_CHUNK) as dst:
        out = _HashingWriter(dst)
        buf = memoryview(bytearray(COPY_CHUNK))
        for rec in ordered:
            out.write(tar_header(rec.info))
            src.seek(rec.data_offset)
            remaining = rec.info.size
            while remaining:
                n = src.readinto(buf[: min(len(buf), remaining)])
                if not n:
                    raise TarFormatError("rewritten layer is shorter than expected")
                out.write(buf[:n])
                remaining -= n
            out.write(ZERO_BLOCK[: _padding(rec.info.size)])
        out.write(END_OF_ARCHIVE)
    os.replace(tmp_path, src_path)
    return "sha256:" + out.digest.hexdigest(), out.pos


def _fix_hardlink_order(ordered: list[_Record]) -> None:
    """After sorting, a hard link may come before the file it names; make the first one the file."""
    position = {rec.info.name: i for i, rec in enumerate(ordered)}
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(ordered):
        if rec.info.islnk() and rec.info.linkname in position:
            groups.setdefault(rec.info.linkname, []).append(i)
    for target, links in groups.items():
        t = position[target]
        first = min([t, *links])
        if first == t:
            continue
        holder = ordered[t]
        head = ordered[first]
        data_info, data_offset = holder.info, holder.data_offset
        new_head = _retype(data_info, head.info.name)
        ordered[first] = _Record(head.key, head.seq, new_head, data_offset)
        for i in [t, *links]:
            if i == first:
                continue
            rec = ordered[i]
            link = _retype(rec.info, rec.info.name, link_to=head.info.name)
            ordered[i] = _Record(rec.key, rec.seq, link, 0)


def _retype(info: tarfile.TarInfo, name: str, *, link_to: str | None = None) -> tarfile.TarInfo:
    new = tarfile.TarInfo(name)
    new.mode, new.uid, new.gid, new.mtime = info.mode, info.uid, info.gid, info.mtime
    new.uname = new.gname = ""
    new.pax_headers = dict(info.pax_headers)
    if link_to is None:
        new.type, new.size = info.type, info.size
    else:
        new.type, new.size, new.linkname = tarfile.LNKTYPE, 0, link_to
    return new


# --------------------------------------------------------------------------------------------
# The image: save, rewrite, new config, load, tag.


@dataclass(frozen=True)
class SealedLayer:
    diff_id: str
    size: int
    entries: int
    removed: int


@dataclass(frozen=True)
class SealResult:
    image_id: str
    source_image_id: str
    source_date_epoch: int
    layers: tuple[SealedLayer, ...]
    tags: tuple[str, ...]
    dropped_layers: int = 0
    unsealed_size: int = 0
    sealed_size: int = 0
    seconds: float = 0.0
    removed_sample: tuple[str, ...] = field(default=())

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "source_image_id": self.source_image_id,
            "source_date_epoch": self.source_date_epoch,
            "layers": [vars(layer) for layer in self.layers],
            "tags": list(self.tags),
            "dropped_layers": self.dropped_layers,
            "unsealed_size": self.unsealed_size,
            "sealed_size": self.sealed_size,
            "seconds": round(self.seconds, 3),
            "removed_sample": list(self.removed_sample),
        }


def resolve_epoch(attrs: dict[str, Any], image: str, source_date_epoch: int | None) -> int:
    if source_date_epoch is not None:
        epoch = source_date_epoch
    else:
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        raw = labels.get(SOURCE_DATE_EPOCH_LABEL)
        if raw is None:
            raise UsageError(
                f"{image}: no SOURCE_DATE_EPOCH to seal with",
                hint=f"pass --source-date-epoch (or set SOURCE_DATE_EPOCH), or build the image with "
                f"the {SOURCE_DATE_EPOCH_LABEL} label",
            )
        try:
            epoch = int(str(raw).strip())
        except ValueError as exc:
            raise UsageError(f"{image}: label {SOURCE_DATE_EPOCH_LABEL}={raw!r} is not an integer") from exc
    if epoch < 0:
        raise UsageError(f"SOURCE_DATE_EPOCH must be >= 0, got {epoch}")
    return epoch


_SOURCE_HASH = re.compile(r"\b(dir|file|multi):[0-9a-f]{64}\b")
# The classic builder prefixes a RUN's history with "|N " whenever the build was given build args,
# N counting the declared ones it then lists; proxy variables are never listed, so a build with
# only those says "|0 ". Whether the builder had a proxy must not change the image.
_NO_BUILD_ARGS = re.compile(r"^\|0 ")
EMPTY_LAYER_DIGEST = "sha256:" + hashlib.sha256(END_OF_ARCHIVE).hexdigest()


def sealed_config(config: dict[str, Any], layer_digests: list[str | None], epoch: int) -> bytes:
    """The new image config, serialized canonically: its sha256 is the image ID.

    `layer_digests[i]` is the sealed digest of the i-th original layer, or None when the rewrite
    left it empty (it is dropped and its history entry marked empty_layer).
    """
    created = rfc3339(epoch)
    new = {k: v for k, v in config.items() if k not in ("container", "container_config", "docker_version")}
    new["created"] = created
    runtime = dict(new.get("config") or {})
    runtime["Hostname"] = ""
    runtime["Domainname"] = ""
    runtime["Image"] = ""  # the builder's parent image: a different ID on every build
    new["config"] = runtime
    history = config.get("history") or []
    layer_entries = [h for h in history if not h.get("empty_layer")]
    new_history: list[dict[str, Any]] = []
    if len(layer_entries) == len(layer_digests):
        layer_no = 0
        for entry in history:
            item = {k: v for k, v in entry.items() if k in ("created_by", "comment", "author", "empty_layer")}
            item["created"] = created
            if "created_by" in item:
                item["created_by"] = _NO_BUILD_ARGS.sub("", str(item["created_by"]))
            if not entry.get("empty_layer"):
                digest = layer_digests[layer_no]
                if digest is None:
                    item["empty_layer"] = True
                # COPY/ADD name their source by a hash of the files before sealing (volatile files
                # and all); the sealed layer's digest names what the layer actually holds.
                sealed_hex = (digest or EMPTY_LAYER_DIGEST).split(":", 1)[1]
                item["created_by"] = _SOURCE_HASH.sub(
                    lambda m, h=sealed_hex: f"{m.group(1)}:{h}", str(item.get("created_by", ""))
                )
                layer_no += 1
            new_history.append(item)
    else:
        # History that does not match the layers (hand-made images): one plain entry per layer.
        new_history = [{"created": created, "created_by": ""} for d in layer_digests if d is not None]
    new["history"] = new_history
    new["rootfs"] = {"type": "layers", "diff_ids": [d for d in layer_digests if d is not None]}
    return json.dumps(new, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class _SavedImage:
    config: dict[str, Any]
    layer_paths: list[str]
    rewrites: dict[str, tuple[LayerRewrite, str]]  # member path -> (result, file on disk)


def _tmp_root(tmp_dir: str | os.PathLike[str] | None) -> str:
    return os.fspath(tmp_dir or os.environ.get(TMPDIR_ENV) or tempfile.gettempdir())


def _check_space(root: str, needed: int) -> None:
    free = shutil.disk_usage(root).free
    margin = 64 << 20
    if free < needed + margin:
        raise DiskFull(
            f"not enough disk space to seal: {human_bytes(needed)} needed in {root}, "
            f"{human_bytes(free)} free",
            hint=f"free some space or point {TMPDIR_ENV} at a larger disk",
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _save_and_rewrite(client: docker.DockerClient, image_id: str, workdir: str, epoch: int,
                      progress: Progress) -> _SavedImage:
    small: dict[str, bytes] = {}
    links: dict[str, str] = {}
    rewrites: dict[str, tuple[LayerRewrite, str]] = {}
    stream = io.BufferedReader(IterReader(client.api.get_image(image_id, chunk_size=SAVE_CHUNK)), SAVE_CHUNK)
    for info, data in iter_tar(stream):
        name = normalize_name(info.name)
        if info.issym():
            links[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
            continue
        if not info.isreg():
            continue
        if name.endswith("layer.tar") or name.startswith("blobs/"):
            head = data.read(min(BLOCK, data.remaining))
            if head[:1] in (b"{", b"["):
                small[name] = head + data.read()
                continue
            index = len(rewrites) + 1
            progress(f"rewriting layer {index} ({human_bytes(info.size)})")
            out_path = os.path.join(workdir, f"layer-{index}.tar")
            with open(out_path, "wb+", buffering=COPY_CHUNK) as out:
                result = rewrite_layer(Prefixed(head, data), out, epoch=epoch)
                out.flush()
            rewrites[name] = (result, out_path)
            progress(
                f"layer {index}: {result.entries} entries, {result.removed} volatile removed, "
                f"{human_bytes(result.size)}" + (" (reordered)" if result.reordered else "")
            )
        elif info.size <= 64 << 20:
            small[name] = data.read()
    if "manifest.json" not in small:
        raise IntegrityError("docker save returned no manifest.json")
    manifest = json.loads(small["manifest.json"])
    if len(manifest) != 1:
        raise IntegrityError(f"docker save returned {len(manifest)} images, expected one")
    entry = manifest[0]
    config = json.loads(small[normalize_name(entry["Config"])])
    paths = []
    for layer in entry["Layers"]:
        path = normalize_name(layer)
        seen = set()
        while path in links and path not in seen:
            seen.add(path)
            path = links[path]
        if path not in rewrites:
            raise IntegrityError(f"docker save archive lacks layer {layer}")
        paths.append(path)
    return _SavedImage(config=config, layer_paths=paths, rewrites=rewrites)


class Prefixed:
    """A source that yields `head` first, then the rest of `tail`."""

    def __init__(self, head: bytes, tail: _Source) -> None:
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


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The engine's chain ID of each layer: it names a layer together with everything below it."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if chains:
            diff_id = "sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest()
        chains.append(diff_id)
    return chains


def engine_chains(client: docker.DockerClient) -> set[str]:
    """Chain IDs of every layer stack the engine holds (from all images, intermediate ones too)."""
    chains: set[str] = set()
    for item in client.api.images(all=True):
        try:
            layers = (client.api.inspect_image(item["Id"]).get("RootFS") or {}).get("Layers") or []
        except docker.errors.NotFound:
            continue
        chains.update(chain_ids(layers))
    return chains


def archive_stream(config_bytes: bytes, layer_files: list[tuple[str, str]], *, epoch: int,
                   repo_tags: list[str] | None = None, present: Collection[str] = ()) -> Iterator[bytes]:
    """A docker-archive (manifest.json, config, layers) as chunks, read from the layer files.

    `layer_files` lists (diff_id, path) in rootfs order; a diff_id given twice is stored once.
    Layers whose chain ID is in `present` are left out: `docker load` takes a layer stack the
    engine already holds from its store and never opens that file, so an unchanged layer costs
    nothing to load.
    """
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    members: list[tuple[str, str]] = []
    stored: set[str] = set()
    layer_names = []
    chains = chain_ids(d for d, _ in layer_files)
    for (diff_id, path), chain in zip(layer_files, chains, strict=True):
        member = diff_id.split(":", 1)[1] + "/layer.tar"
        layer_names.append(member)
        if member not in stored and chain not in present:
            stored.add(member)
            members.append((member, path))
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}], separators=(",", ":")
    ).encode()

    def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.type = size, epoch, kind
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        return tar_header(info)

    for name, blob in (("manifest.json", manifest), (config_name, config_bytes)):
        yield header(name, len(blob)) + blob + bytes(_padding(len(blob)))
    for member, path in members:
        size = os.path.getsize(path)
        yield header(posixpath.dirname(member), 0, tarfile.DIRTYPE)
        yield header(member, size)
        with open(path, "rb", buffering=0) as fh:
            sent = 0
            while True:
                chunk = fh.read(COPY_CHUNK)
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
        if sent != size:
            raise IntegrityError(f"layer file {path} changed while being sent")
        yield bytes(_padding(size))
    yield END_OF_ARCHIVE


def load_archive(client: docker.DockerClient, chunks: Iterable[bytes]) -> list[str]:
    """`docker load` a stream; return what the engine reports loaded (IDs or tags)."""
    loaded: list[str] = []
    try:
        for message in client.api.load_image(chunks):
            if "errorDetail" in message or "error" in message:
                detail = (message.get("errorDetail") or {}).get("message") or message.get("error")
                raise _load_error(str(detail))
            text = str(message.get("stream") or "").strip()
            for prefix in ("Loaded image ID: ", "Loaded image: "):
                if text.startswith(prefix):
                    loaded.append(text[len(prefix) :].strip())
    except docker.errors.APIError as exc:
        raise _load_error(str(exc.explanation or exc)) from exc
    return loaded


def _load_error(detail: str) -> EnvkitError:
    if "no space left" in detail.lower():
        return DiskFull(f"the engine ran out of disk space loading the image: {detail}")
    return EngineRefused(f"the engine refused the image: {detail}")


def _tags_to_move(attrs: dict[str, Any], image: str, tag: str | None) -> list[str]:
    if tag:
        return [tag]
    repo_tags = [t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"]
    repo, explicit = parse_repository_tag(image)
    wanted = f"{repo}:{explicit or 'latest'}"
    for candidate in repo_tags:
        if candidate == wanted or candidate == f"docker.io/library/{wanted}" or candidate == image:
            return [candidate]
    return repo_tags


def _tag(client: docker.DockerClient, image_id: str, ref: str) -> None:
    repo, tag = parse_repository_tag(ref)
    client.api.tag(image_id, repo, tag or "latest", force=True)


def _inspect(client: docker.DockerClient, image: str) -> dict[str, Any]:
    try:
        return client.api.inspect_image(image)
    except docker.errors.ImageNotFound as exc:
        raise UsageError(f"image {image} not found", hint="list images with `docker images`") from exc


def config_from_engine(client: docker.DockerClient, attrs: dict[str, Any]) -> dict[str, Any]:
    """An image config rebuilt from `docker inspect` and the history API, without `docker save`.

    Used when the layers are kept as built; which history entries made a layer is read from
    their sizes, or from the layer counts of the builder's intermediate images.
    """
    history = list(reversed(client.api.history(attrs["Id"])))
    diff_ids = list((attrs.get("RootFS") or {}).get("Layers") or [])
    flags = _layer_flags(client, history, len(diff_ids), attrs["Id"])
    items = []
    for entry, makes_layer in zip(history, flags, strict=True):
        item: dict[str, Any] = {"created_by": entry.get("CreatedBy") or ""}
        if entry.get("Comment"):
            item["comment"] = entry["Comment"]
        if not makes_layer:
            item["empty_layer"] = True
        items.append(item)
    config: dict[str, Any] = {
        "architecture": attrs.get("Architecture") or "amd64",
        "os": attrs.get("Os") or "linux",
        "config": attrs.get("Config") or {},
        "history": items,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    for key, field_name in (("variant", "Variant"), ("author", "Author")):
        if attrs.get(field_name):
            config[key] = attrs[field_name]
    return config


def _layer_flags(client: docker.DockerClient, history: list[dict[str, Any]], layers: int,
                 image_id: str) -> list[bool]:
    by_size = [int(entry.get("Size") or 0) > 0 for entry in history]
    if sum(by_size) == layers:
        return by_size
    flags: list[bool] = []
    previous = 0
    for entry, sized in zip(history, by_size, strict=True):
        ref = entry.get("Id") or "<missing>"
        if ref == "<missing>":
            flags.append(sized)
            previous += sized
            continue
        count = len((client.api.inspect_image(ref).get("RootFS") or {}).get("Layers") or [])
        flags.append(count > previous)
        previous = count
    if sum(flags) == layers:
        return flags
    raise UsageError(
        f"{image_id[7:19]}: cannot tell which history entries made its {layers} layers",
        hint="seal it with its layers rewritten (the default)",
    )


def seal_image(
    client: docker.DockerClient,
    image: str,
    *,
    source_date_epoch: int | None = None,
    tag: str | None = None,
    progress: Progress | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    rewrite_layers: bool = True,
) -> SealResult:
    """Rewrite `image` into deterministic layers and config, load it and move its tag(s) to it.

    `tag` names the tag to point at the sealed image; by default the tag given as `image` moves
    (or every tag of the image when `image` is an ID). Temporary files go under `tmp_dir`, else
    $ENVKIT_TMPDIR, else the system temporary directory, and are removed in every case.

    `rewrite_layers=False` seals the config only and keeps the layers as built: no `docker save`,
    and the load sends no layer data, so it takes seconds whatever the image size. It gives the
    same ID for two builds only if the build itself made the layers deterministic (clamped mtimes,
    volatile files removed in the same step); the config it writes is rebuilt from the engine's
    inspect and history data, so its ID differs from a full seal of the same image.
    """
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    attrs = _inspect(client, image)
    source_id = attrs["Id"]
    epoch = resolve_epoch(attrs, image, source_date_epoch)
    tags = _tags_to_move(attrs, image, tag)
    root = _tmp_root(tmp_dir)
    os.makedirs(root, exist_ok=True)
    if rewrite_layers:
        _check_space(root, int(attrs.get("Size") or 0))
    workdir = tempfile.mkdtemp(prefix="envkit-seal-", dir=root)
    new_id: str | None = None
    existed_before = False
    tagged = False
    try:
        if rewrite_layers:
            say(f"saving {image} ({source_id[7:19]}, {human_bytes(int(attrs.get('Size') or 0))})")
            saved = _save_and_rewrite(client, source_id, workdir, epoch, say)
            results = [saved.rewrites[p] for p in saved.layer_paths]
            raw_config = saved.config
        else:
            say(f"sealing the config of {image}; layers kept as built")
            raw_config = config_from_engine(client, attrs)
            results = [
                (LayerRewrite(d, 0, 1, 0, 0, 0, False), "") for d in raw_config["rootfs"]["diff_ids"]
            ]
        kept_results = [(r, path) for r, path in results if r.entries > 0]
        layer_files = [(r.diff_id, path) for r, path in kept_results]
        digests = [r.diff_id if r.entries > 0 else None for r, _ in results]
        config_bytes = sealed_config(raw_config, digests, epoch)
        new_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        existed_before = _exists(client, new_id)
        present = engine_chains(client)
        needed = [c for c in chain_ids(d for d, _ in layer_files) if c not in present]
        if needed and not rewrite_layers:
            raise BuildFailed(f"the engine no longer holds the layers of {image}")
        say(f"loading sealed image {new_id[7:19]} "
            f"({len(needed)} of {len(layer_files)} layers new to the engine)")
        try:
            stream = archive_stream(config_bytes, layer_files, epoch=epoch, present=present)
            loaded = load_archive(client, stream)
        except EnvkitError as exc:
            if len(needed) == len(layer_files) or not rewrite_layers or "disk space" in exc.message:
                raise
            # A layer stack removed between the check and the load: send every layer.
            say("loading again with every layer")
            loaded = load_archive(client, archive_stream(config_bytes, layer_files, epoch=epoch))
        if new_id not in loaded and not _exists(client, new_id):
            raise IntegrityError(f"the engine loaded {loaded or 'nothing'}, expected {new_id}")
        for ref in tags:
            _tag(client, new_id, ref)
            say(f"tagged {ref} -> {new_id[7:19]}")
        tagged = True
        sealed_attrs = client.api.inspect_image(new_id)
        layers = tuple(SealedLayer(r.diff_id, r.size, r.entries, r.removed) for r, _ in kept_results)
        sample = tuple(s for r, _ in results for s in r.removed_sample)
        return SealResult(
            image_id=new_id,
            source_image_id=source_id,
            source_date_epoch=epoch,
            layers=layers,
            tags=tuple(tags),
            dropped_layers=len(results) - len(kept_results),
            unsealed_size=int(attrs.get("Size") or 0),
            sealed_size=int(sealed_attrs.get("Size") or 0),
            seconds=time.monotonic() - started,
            removed_sample=sample,
        )
    except EnvkitError as exc:
        if not tagged and exc.hint is None:
            exc.hint = f"{', '.join(tags) or image} still points at the unsealed image {source_id[7:19]}"
        raise
    except KeyboardInterrupt as exc:
        _forget_untagged(client, new_id, existed_before, tagged)
        raise Interrupted(
            f"sealing {image} interrupted; {', '.join(tags) or image} still points at the unsealed "
            f"image {source_id[7:19]}",
        ) from exc
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        _forget_untagged(client, new_id, existed_before, tagged)
        detail = str(exc)
        if "no space left" in detail.lower():
            raise _load_error(detail) from exc
        raise EngineRefused(f"sealing {image} failed: {detail}",
                          hint=f"{', '.join(tags) or image} still points at the unsealed image") from exc
    except OSError as exc:
        _forget_untagged(client, new_id, existed_before, tagged)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(
                f"disk full while sealing {image} (temporary files in {root}); "
                f"{', '.join(tags) or image} still points at the unsealed image {source_id[7:19]}",
                hint=f"free some space or point {TMPDIR_ENV} at a larger disk",
            ) from exc
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def _forget_untagged(
    client: docker.DockerClient, new_id: str | None, existed_before: bool, tagged: bool
) -> None:
    """Remove a sealed image that was loaded but never tagged, unless it was there before."""
    if new_id is None or existed_before or tagged:
        return
    try:
        attrs = client.api.inspect_image(new_id)
        if not attrs.get("RepoTags"):
            client.api.remove_image(new_id, noprune=False)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        pass
