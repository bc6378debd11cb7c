"""The sealing policy: what a deterministic layer and a deterministic image config are.

A layer is rewritten in one pass into sorted entry order with mtimes clamped to SOURCE_DATE_EPOCH,
numeric uid/gid with empty names, PAX records without atime/ctime and whiteouts kept; volatile
files (apt lists and caches, /var/log files, the ldconfig aux-cache, /tmp, /root/.cache) are
removed, /etc/machine-id emptied and timestamp-based .pyc headers clamped like their sources.
The config gets fixed `created` and history timestamps and loses the builder's container,
hostname and parent-image fields. Nothing here talks to the engine; `envkit.image.seal` does.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import struct
import tarfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from envkit.engine.dockerarchive import rfc3339
from envkit.engine.tarstream import (
    COPY_CHUNK,
    END_OF_ARCHIVE,
    ZERO_BLOCK,
    Source,
    TarFormatError,
    carries_data,
    iter_tar,
    normalize_name,
    padding,
    tar_header,
)
from envkit.errors import UsageError
from envkit.jsonio import canonical_bytes
from envkit.labels import SOURCE_DATE_EPOCH as SOURCE_DATE_EPOCH_LABEL

# Bumped whenever sealing the same unsealed image would give another result, so that records of
# earlier seals (envkit.image.sealcache) are not taken for this policy's.
POLICY_VERSION = 2
DROP = "drop"
EMPTY = "empty"


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
    return tuple(part.encode("utf-8", "surrogateescape") for part in name.split("/"))


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
    new.size = 0 if emptied or not carries_data(info) else info.size
    new.pax_headers = dict(sorted(info.pax_headers.items()))
    return new


def rewrite_layer(src: Source, dst: BinaryIO, *, epoch: int, sample: int = 20) -> LayerRewrite:
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
        out.write(ZERO_BLOCK[: padding(new.size)])
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
            out.write(ZERO_BLOCK[: padding(rec.info.size)])
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


# Not \b: with --chown the classic builder writes "COPY --chown=1000:1000dir:<hash> in ...".
_SOURCE_HASH = re.compile(r"(?<![A-Za-z])(dir|file|multi):[0-9a-f]{64}\b")
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
    return canonical_bytes(new)
