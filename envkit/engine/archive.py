"""Export an image to a zstd-compressed docker-archive or OCI layout and import it back, ID intact.

`docker save` streams straight into a multithreaded zstd compressor and onto disk: nothing is
held in memory and no uncompressed copy is written. The file appears under its final name only
once it is complete and on disk (temporary file beside it, fsync, rename). The image ID is the
digest of the config, which both formats carry byte for byte.

The OCI layout (`fmt="oci"`) holds the same config and the same uncompressed layers as blobs,
written index, manifest and config first so that an import can turn it back into a
docker-archive on the fly (Docker 20.10's `docker load` reads only docker-archives). Building
it needs each layer's digest before its tar header, so the layers are staged once on disk
beside the output.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import docker
import docker.errors
import requests.exceptions

from envkit.atomic import open_atomic
from envkit.engine.client import find_image, inspect_image
from envkit.engine.dockerarchive import canonical_json, load_archive, read_saved
from envkit.engine.tarstream import (
    BLOCK,
    COPY_CHUNK,
    END_OF_ARCHIVE,
    SAVE_CHUNK,
    Prefixed,
    Source,
    TarFormatError,
    buffered,
    file_chunks,
    iter_tar,
    member,
    normalize_name,
)
from envkit.errors import (
    DiskFull,
    EngineRefused,
    EngineUnreachable,
    EnvkitError,
    IntegrityError,
    Interrupted,
    MissingDependency,
    UsageError,
)
from envkit.events import Show, phases

FORMATS = ("docker-archive", "oci")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 4 << 20
MAX_JSON_BYTES = 16 << 20
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
REF_RE = re.compile(r"[a-z0-9][a-z0-9._\-/]*(:[0-9]+)?(/[a-z0-9._\-]+)*:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
# Import limits: the engine's free space less this margin (or 5% of it, whichever is more), a
# fixed cap when the engine's disk cannot be seen, and the expansion no real image reaches.
DISK_MARGIN = 2 << 30
UNKNOWN_DISK_CAP = 256 << 30
MAX_RATIO = 1000
BOMB_CHECK_AFTER = 64 << 20
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class ExportResult:
    image_id: str
    path: str
    fmt: str
    level: int
    uncompressed_bytes: int
    compressed_bytes: int
    repo_tags: tuple[str, ...]

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.uncompressed_bytes if self.uncompressed_bytes else 0.0


@dataclass(frozen=True)
class ImportResult:
    path: str
    loaded: tuple[str, ...]  # what the engine reports: tags, or IDs for untagged images
    image_ids: tuple[str, ...]


def _zstd():  # type: ignore[no-untyped-def]
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MissingDependency("the zstandard package is missing", hint="pip install zstandard") from exc
    return zstandard


def export_image(
    client: docker.DockerClient,
    image: str,
    out_path: str | os.PathLike[str],
    *,
    fmt: str = "docker-archive",
    level: int = 3,
    threads: int = -1,
    show: Show | None = None,
) -> ExportResult:
    """Write `image` as a zstd-compressed docker-archive at `out_path`, atomically.

    `threads=-1` uses every core for compression (zstd's own threads; the save stream is read
    here at the same time).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", hint=f"choose one of: {', '.join(FORMATS)}")
    say = phases(show)
    attrs = inspect_image(client, image)
    target = os.path.abspath(os.fspath(out_path))
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    zstd = _zstd()
    # A saved archive of an ID carries no tags; saving by name keeps the name in manifest.json.
    tagged = not image.startswith("sha256:") and image in (attrs.get("RepoTags") or [])
    save_ref = image if tagged else attrs["Id"]
    raw_bytes = 0
    spool = tempfile.mkdtemp(prefix=".envkit-export-", dir=directory) if fmt == "oci" else None
    try:
        say(f"exporting {image} ({attrs['Id'][7:19]}) to {target} as {fmt} with zstd -{level}")
        # The archive appears at target only once complete and fsynced; any failure removes it.
        with open_atomic(Path(target)) as raw:
            cctx = zstd.ZstdCompressor(level=level, threads=threads, write_checksum=True)
            with cctx.stream_writer(raw, closefd=False) as writer:
                saved = client.api.get_image(save_ref, chunk_size=SAVE_CHUNK)
                chunks = saved if spool is None else oci_layout(saved, spool, save_ref if tagged else None)
                for chunk in chunks:
                    writer.write(chunk)
                    raw_bytes += len(chunk)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"export of {image} interrupted; {target} was not written") from exc
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise EngineRefused(f"exporting {image} failed: {exc}") from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while exporting {image} to {target}") from exc
        raise UsageError(f"exporting {image} to {target} failed: {exc}") from exc
    finally:
        if spool is not None:
            shutil.rmtree(spool, ignore_errors=True)
    size = os.path.getsize(target)
    say(f"wrote {target}: {raw_bytes} bytes -> {size} bytes")
    return ExportResult(
        image_id=attrs["Id"],
        path=target,
        fmt=fmt,
        level=level,
        uncompressed_bytes=raw_bytes,
        compressed_bytes=size,
        repo_tags=(save_ref,) if save_ref != attrs["Id"] else (),
    )


def oci_layout(saved_chunks: Iterator[bytes], spool: str, ref: str | None) -> Iterator[bytes]:
    """Turn a `docker save` stream into an OCI image layout tar, as chunks.

    Layers are staged in `spool` while their digests are computed; the config blob is the saved
    config byte for byte, so its digest stays the image ID.
    """
    view = memoryview(bytearray(COPY_CHUNK))

    def stage(_member: str, info: tarfile.TarInfo, data: Source) -> tuple[str, int, str]:
        path = os.path.join(spool, f"layer-{len(os.listdir(spool))}.tar")
        digest = hashlib.sha256()
        remaining = info.size
        with open(path, "wb") as fh:
            while remaining:
                n = data.readinto(view[: min(len(view), remaining)])
                digest.update(view[:n])
                fh.write(view[:n])
                remaining -= n
        return "sha256:" + digest.hexdigest(), info.size, path

    saved = read_saved(buffered(saved_chunks), stage)
    config_bytes = saved.config_bytes
    diff_ids = saved.config["rootfs"]["diff_ids"]
    layers = saved.layers
    for name, layer, diff_id in zip(saved.entry["Layers"], layers, diff_ids, strict=True):
        if layer[0] != diff_id:
            raise IntegrityError(f"layer {name} hashes to {layer[0]}, the config says {diff_id}")
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": size} for d, size, _ in layers],
    })
    descriptor: dict[str, object] = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "size": len(manifest),
    }
    if ref:
        descriptor["annotations"] = {NAME_ANNOTATION: ref, REF_ANNOTATION: ref.rpartition(":")[2]}
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]})
    yield member("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
    yield member("index.json", index)
    yield member("blobs")
    yield member("blobs/sha256")
    yield member("blobs/sha256/" + str(descriptor["digest"])[7:], manifest)
    yield member("blobs/sha256/" + config_digest[7:], config_bytes)
    written: set[str] = set()
    for digest, size, path in layers:
        if digest in written:
            continue
        written.add(digest)
        yield member("blobs/sha256/" + digest[7:], size=size)
        yield from file_chunks(path, size, label="layer file")
    yield END_OF_ARCHIVE


def _json_member(data: object, size: int, what: str) -> Any:
    """A small JSON member of an archive, parsed; anything else is an integrity failure."""
    if size > MAX_JSON_BYTES:
        raise IntegrityError(f"{what} is {size} bytes; a JSON document of an image is far smaller")
    try:
        return json.loads(data.read())  # type: ignore[attr-defined]
    except (ValueError, RecursionError):
        raise IntegrityError(f"{what} is not valid JSON") from None


def _digest_field(value: object, what: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise IntegrityError(f"{what} is not a sha256 digest: {str(value)[:80]!r}")
    return value


def _oci_index(index: object) -> tuple[str, str | None]:
    """The first manifest's digest and the image name an OCI index gives, checked."""
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests or not isinstance(manifests[0], dict):
        raise IntegrityError("the OCI index.json lists no manifest")
    descriptor = manifests[0]
    digest = _digest_field(descriptor.get("digest"), "the OCI index's manifest digest")
    annotations = descriptor.get("annotations") or {}
    ref = annotations.get(NAME_ANNOTATION) if isinstance(annotations, dict) else None
    if ref is not None and (not isinstance(ref, str) or not REF_RE.fullmatch(ref)):
        raise IntegrityError(f"the OCI index names the image {str(ref)[:80]!r}: not an image reference")
    return digest, ref


def _oci_manifest(manifest: object) -> tuple[str, list[str]]:
    """The config digest and layer digests of an OCI manifest, checked."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise IntegrityError("the OCI manifest has no config descriptor")
    config = _digest_field(manifest["config"].get("digest"), "the OCI manifest's config digest")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise IntegrityError("the OCI manifest's layers are not a list of descriptors")
    for layer in layers:
        if not str(layer.get("mediaType", OCI_LAYER)).endswith(".tar"):
            shown = str(layer.get("digest"))[:80]
            raise UsageError(f"OCI layer {shown} is compressed; only plain tar layers load")
    return config, [_digest_field(layer.get("digest"), "an OCI layer digest") for layer in layers]


def docker_archive_from_oci(src: object) -> Iterator[bytes]:
    """Turn an OCI layout tar (as `oci_layout` writes it) into a docker-archive stream."""
    index_digest = config_digest = ref = None
    layer_digests: list[str] = []
    pending: set[str] = set()
    started = False
    for info, data in iter_tar(src):  # type: ignore[arg-type]
        name = normalize_name(info.name)
        if not info.isreg():
            continue
        if name == "index.json":
            if index_digest is not None:
                raise IntegrityError("the OCI layout holds two index.json files")
            index_digest, ref = _oci_index(_json_member(data, info.size, "the OCI index.json"))
            continue
        if not name.startswith("blobs/sha256/"):
            continue
        digest = _digest_field("sha256:" + posixpath.basename(name), f"the blob name {name}")
        if digest == index_digest and config_digest is None:
            config_digest, layer_digests = _oci_manifest(_json_member(data, info.size, "the OCI manifest"))
            pending = set(layer_digests)
        elif digest == config_digest and not started:
            if info.size > MAX_JSON_BYTES:
                raise IntegrityError(f"the config blob {digest} is {info.size} bytes")
            config_bytes = data.read()
            if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != digest:
                raise IntegrityError(f"config blob {digest} does not match its digest")
            docker_manifest = [{
                "Config": digest[7:] + ".json",
                "RepoTags": [ref] if ref else None,
                "Layers": [d[7:] + "/layer.tar" for d in layer_digests],
            }]
            yield member("manifest.json", canonical_json(docker_manifest))
            yield member(digest[7:] + ".json", config_bytes)
            started = True
        elif started and digest in pending:
            pending.discard(digest)
            yield member(digest[7:])
            yield member(digest[7:] + "/layer.tar", size=info.size)
            while data.remaining:
                yield data.read(min(COPY_CHUNK, data.remaining))
            yield bytes(-info.size % BLOCK)
        else:
            raise UsageError(
                "this OCI layout does not list index, manifest and config before the layers",
                hint="import layouts written by `envkit export --format oci`",
            )
    if not started or pending:
        raise IntegrityError("the OCI layout is incomplete (missing index, manifest, config or layers)")
    yield END_OF_ARCHIVE


def open_archive(path: str | os.PathLike[str]) -> BinaryIO:
    """Open an archive for reading, decompressing zstd or gzip by their magic bytes."""
    fh = open(path, "rb")  # noqa: SIM115 - handed to the caller
    magic = fh.read(4)
    fh.seek(0)
    if magic.startswith(ZSTD_MAGIC):
        return _zstd().ZstdDecompressor().stream_reader(fh, read_size=READ_CHUNK, closefd=True)
    if magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def _chunks(reader: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = reader.read(READ_CHUNK)
        if not chunk:
            return
        yield chunk


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from rest


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``1.5T`` or a number of bytes (powers of 1024)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if value and value[-1] in _SIZE_UNITS:
        scale, value = _SIZE_UNITS[value[-1]], value[:-1]
    try:
        size = int(float(value) * scale)
    except ValueError:
        raise UsageError(f"--max-size {text!r} is not a size like 20G, 500M or a number of bytes") from None
    if size <= 0:
        raise UsageError(f"--max-size {text!r} must be positive")
    return size


def default_max_size(client: docker.DockerClient) -> int | None:
    """What the engine's disk can take: its free space less a margin, or None when it cannot be seen."""
    info = getattr(client, "info", None)
    if info is None:
        return None
    try:
        root = str(info().get("DockerRootDir") or "")
        if not root or not os.path.isdir(root):
            return None  # a remote engine: its disk is not ours to measure
        stats = os.statvfs(root)
    except (docker.errors.APIError, requests.exceptions.RequestException, OSError):
        return None
    free = stats.f_bavail * stats.f_frsize
    return max(free - max(DISK_MARGIN, free // 20), 0)


class _Guard:
    """The decompressed archive as it is read: every byte counted against the cap.

    A decompression bomb is stopped when it passes the cap, or, under the default cap, as soon as
    it has expanded beyond any real image's compression ratio; the engine then sees a cut stream
    and discards the partial load. With ``keep`` the bytes read are kept for the caller to pass on.
    """

    def __init__(
        self, src: Any, *, cap: int, compressed: int, ratio_check: bool, source: str, keep: bool
    ) -> None:
        self._src, self._cap, self._compressed = src, cap, max(compressed, 1)
        self._ratio_check, self._source, self._keep = ratio_check, source, keep
        self.total = 0
        self.last = b""
        self._pending: list[bytes] = []

    def read(self, n: int) -> bytes:
        data = self._src.read(n)
        self.total += len(data)
        if self.total > self._cap:
            raise IntegrityError(
                f"{self._source} expands beyond {self._cap} bytes; refused before it fills the engine's disk",
                hint="if the archive is genuine, raise the limit with --max-size",
            )
        if self._ratio_check and self.total > BOMB_CHECK_AFTER and self.total > self._compressed * MAX_RATIO:
            raise IntegrityError(
                f"{self._source} expands more than {MAX_RATIO}x ({self._compressed} bytes to over "
                f"{self.total}): a decompression bomb, not an image",
                hint="if the archive is genuine, pass --max-size to import it anyway",
            )
        if len(data) == BLOCK:
            self.last = data
        if self._keep and data:
            self._pending.append(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._pending)
        self._pending = []
        return out


def _safe_member(name: str) -> None:
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or any(not p.isprintable() for p in parts):
        raise IntegrityError(f"the archive holds a member named {name[:80]!r}, which no image archive has")


def _checked_docker_archive(guard: _Guard) -> Iterator[bytes]:
    """Pass a docker-archive through while reading it as tar: truncation is found, not forwarded."""
    for info, data in iter_tar(guard):
        _safe_member(normalize_name(info.name))
        while data.remaining:
            data.read(min(COPY_CHUNK, data.remaining))
            yield guard.take()
        yield guard.take()
    if guard.last != bytes(BLOCK):
        raise IntegrityError("the archive is truncated: it ends before the tar end-of-archive marker")
    while True:  # the second zero block and the padding after it
        rest = guard.read(READ_CHUNK)
        if not rest:
            break
        yield guard.take()
    yield guard.take()


def import_image(
    client: docker.DockerClient,
    path: str | os.PathLike[str],
    *,
    max_size: int | None = None,
    show: Show | None = None,
) -> ImportResult:
    """Load an archive written by `export_image` (or any docker-archive, plain, gzip or zstd).

    The decompressed size is capped (``max_size``, by default what the engine's disk can hold less
    a margin) and the stream is read as tar on its way to the engine: a decompression bomb, a
    truncated file or a malformed OCI layout ends in IntegrityError (exit 5), never a full disk.
    """
    say = phases(show)
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise UsageError(f"archive {source} not found")
    explicit = max_size is not None
    cap = max_size if max_size is not None else default_max_size(client)
    if cap is None:
        cap = UNKNOWN_DISK_CAP
    say(f"importing {source} (at most {cap} bytes once decompressed)")
    try:
        with open_archive(source) as reader:
            head = reader.read(BLOCK)
            kind = "oci" if head[:11] == b"oci-layout\0" else "docker-archive"
            say(f"{source}: {kind}")
            guard = _Guard(
                Prefixed(head, io.BufferedReader(reader, READ_CHUNK)),  # type: ignore[arg-type]
                cap=cap,
                compressed=os.path.getsize(source),
                ratio_check=not explicit,
                source=source,
                keep=kind != "oci",
            )
            stream = docker_archive_from_oci(guard) if kind == "oci" else _checked_docker_archive(guard)
            loaded = load_archive(client, stream)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"import of {source} interrupted") from exc
    except requests.exceptions.RequestException as exc:
        raise EngineUnreachable(f"lost the engine while importing {source}: {exc}") from exc
    except docker.errors.APIError as exc:
        raise IntegrityError(f"the engine refused {source}: {exc}") from exc
    except TarFormatError as exc:
        raise IntegrityError(f"{source} is not a complete image archive: {exc}") from exc
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise IntegrityError(f"{source} is truncated or not a valid gzip stream: {exc}") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    except (io.UnsupportedOperation, OSError) as exc:
        if type(exc).__name__ == "ZstdError":
            raise IntegrityError(f"{source} is not a valid zstd stream: {exc}") from exc
        raise UsageError(f"cannot read {source}: {exc}") from exc
    except EngineRefused as exc:  # the engine refused what the archive holds
        raise IntegrityError(str(exc), hint=exc.hint, details=exc.details) from exc
    except EnvkitError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "ZstdError":
            raise IntegrityError(f"{source} is not a valid zstd stream: {exc}") from exc
        raise
    found = (find_image(client, ref) for ref in loaded)
    ids = [attrs["Id"] for attrs in found if attrs is not None]
    return ImportResult(path=source, loaded=tuple(loaded), image_ids=tuple(dict.fromkeys(ids)))


@dataclass(frozen=True)
class TransferResult:
    image_id: str
    loaded: tuple[str, ...]
    bytes_streamed: int


def transfer_image(
    source: docker.DockerClient,
    target: docker.DockerClient,
    image: str,
    *,
    show: Show | None = None,
) -> TransferResult:
    """`docker save` on ``source`` streamed into `docker load` on ``target``: no file in between.

    The stream is read as tar on its way (a cut connection is a truncated archive, refused before
    the engine loads anything half), and the loaded image must have the source's ID (exit 5 if
    not). An image saved by its tag arrives with that tag, as `docker save | docker load` does.
    """
    say = phases(show)
    attrs = inspect_image(source, image)
    image_id = attrs["Id"]
    tagged = not image.startswith("sha256:") and image in (attrs.get("RepoTags") or [])
    save_ref = image if tagged else image_id
    say(f"streaming {save_ref} ({image_id[7:19]}) from this engine into the host's")
    try:
        guard = _Guard(
            buffered(source.api.get_image(save_ref, chunk_size=SAVE_CHUNK)),
            cap=UNKNOWN_DISK_CAP, compressed=1, ratio_check=False, keep=True,
            source=f"the save of {save_ref}",
        )
        loaded = load_archive(target, _checked_docker_archive(guard))
    except KeyboardInterrupt as exc:
        raise Interrupted(f"the transfer of {image} was interrupted") from exc
    except requests.exceptions.RequestException as exc:
        raise EngineUnreachable(f"lost an engine while streaming {image}: {exc}") from exc
    except docker.errors.APIError as exc:
        raise EngineRefused(f"streaming {image} failed: {exc}") from exc
    except TarFormatError as exc:
        raise IntegrityError(f"the save of {image} is not a complete image archive: {exc}") from exc
    arrived = find_image(target, image_id)
    if arrived is None:
        raise IntegrityError(
            f"the host's engine loaded {', '.join(loaded) or 'nothing'}, not {image_id}",
            hint="the stream was changed on its way; try again",
        )
    say(f"streamed {guard.total} bytes; the host holds {image_id[7:19]}")
    return TransferResult(image_id=image_id, loaded=tuple(loaded), bytes_streamed=guard.total)
