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
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import docker
import docker.errors
import requests.exceptions

from envkit.errors import DiskFull, EngineRefused, IntegrityError, Interrupted, MissingDependency, UsageError
from envkit.image.seal import (
    BLOCK,
    COPY_CHUNK,
    END_OF_ARCHIVE,
    SAVE_CHUNK,
    IterReader,
    Prefixed,
    iter_tar,
    load_archive,
    normalize_name,
    tar_header,
)

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

Progress = Callable[[str], None]


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
    progress: Progress | None = None,
) -> ExportResult:
    """Write `image` as a zstd-compressed docker-archive at `out_path`, atomically.

    `threads=-1` uses every core for compression (zstd's own threads; the save stream is read
    here at the same time).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", hint=f"choose one of: {', '.join(FORMATS)}")
    say = progress or (lambda _msg: None)
    try:
        attrs = client.api.inspect_image(image)
    except docker.errors.ImageNotFound as exc:
        raise UsageError(f"image {image} not found") from exc
    target = os.path.abspath(os.fspath(out_path))
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    zstd = _zstd()
    fd, tmp_path = tempfile.mkstemp(prefix=".envkit-export-", suffix=".part", dir=directory)
    # A saved archive of an ID carries no tags; saving by name keeps the name in manifest.json.
    tagged = not image.startswith("sha256:") and image in (attrs.get("RepoTags") or [])
    save_ref = image if tagged else attrs["Id"]
    raw_bytes = 0
    spool = tempfile.mkdtemp(prefix=".envkit-export-", dir=directory) if fmt == "oci" else None
    try:
        say(f"exporting {image} ({attrs['Id'][7:19]}) to {target} as {fmt} with zstd -{level}")
        with os.fdopen(fd, "wb", buffering=0) as raw:
            cctx = zstd.ZstdCompressor(level=level, threads=threads, write_checksum=True)
            with cctx.stream_writer(raw, closefd=False) as writer:
                saved = client.api.get_image(save_ref, chunk_size=SAVE_CHUNK)
                chunks = saved if spool is None else oci_layout(saved, spool, save_ref if tagged else None)
                for chunk in chunks:
                    writer.write(chunk)
                    raw_bytes += len(chunk)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(directory)
    except KeyboardInterrupt as exc:
        _unlink(tmp_path)
        raise Interrupted(f"export of {image} interrupted; {target} was not written") from exc
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        _unlink(tmp_path)
        raise EngineRefused(f"exporting {image} failed: {exc}") from exc
    except OSError as exc:
        _unlink(tmp_path)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while exporting {image} to {target}") from exc
        raise UsageError(f"exporting {image} to {target} failed: {exc}") from exc
    except BaseException:
        _unlink(tmp_path)
        raise
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


def _fsync_dir(directory: str) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _entry(name: str, data: bytes | None = None, *, size: int | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    if data is None and size is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = (len(data) if data is not None else size or 0), 0o644
    head = tar_header(info)
    if data is None:
        return head
    return head + data + bytes(-len(data) % BLOCK)


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def oci_layout(saved: Iterator[bytes], spool: str, ref: str | None) -> Iterator[bytes]:
    """Turn a `docker save` stream into an OCI image layout tar, as chunks.

    Layers are staged in `spool` while their digests are computed; the config blob is the saved
    config byte for byte, so its digest stays the image ID.
    """
    small: dict[str, bytes] = {}
    links: dict[str, str] = {}
    staged: dict[str, tuple[str, int, str]] = {}  # member -> (digest, size, file)
    view = memoryview(bytearray(COPY_CHUNK))
    for info, data in iter_tar(io.BufferedReader(IterReader(saved), SAVE_CHUNK)):
        name = normalize_name(info.name)
        if info.issym():
            links[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
        elif info.isreg() and (name.endswith("layer.tar") or name.startswith("blobs/")) and info.size > BLOCK:
            path = os.path.join(spool, f"layer-{len(staged)}.tar")
            digest = hashlib.sha256()
            with open(path, "wb") as fh:
                while data.remaining:
                    n = data.readinto(view[: min(len(view), data.remaining)])
                    digest.update(view[:n])
                    fh.write(view[:n])
            staged[name] = ("sha256:" + digest.hexdigest(), info.size, path)
        elif info.isreg() and info.size <= 64 << 20:
            small[name] = data.read()
    entry = json.loads(small["manifest.json"])[0]
    config_name = normalize_name(entry["Config"])
    if config_name not in small:  # a large config blob was staged like a layer
        with open(staged[config_name][2], "rb") as fh:
            small[config_name] = fh.read()
    config_bytes = small[config_name]
    diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
    layers: list[tuple[str, int, str]] = []
    for member, diff_id in zip(entry["Layers"], diff_ids, strict=True):
        path = normalize_name(member)
        seen: set[str] = set()
        while path in links and path not in seen:
            seen.add(path)
            path = links[path]
        layer = staged[path]
        if layer[0] != diff_id:
            raise IntegrityError(f"layer {member} hashes to {layer[0]}, the config says {diff_id}")
        layers.append(layer)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = _canonical({
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
    index = _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]})
    yield _entry("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
    yield _entry("index.json", index)
    yield _entry("blobs")
    yield _entry("blobs/sha256")
    yield _entry("blobs/sha256/" + str(descriptor["digest"])[7:], manifest)
    yield _entry("blobs/sha256/" + config_digest[7:], config_bytes)
    written: set[str] = set()
    for digest, size, path in layers:
        if digest in written:
            continue
        written.add(digest)
        yield _entry("blobs/sha256/" + digest[7:], size=size)
        with open(path, "rb") as fh:
            while chunk := fh.read(COPY_CHUNK):
                yield chunk
        yield bytes(-size % BLOCK)
    yield END_OF_ARCHIVE


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
            index = json.loads(data.read())
            descriptor = index["manifests"][0]
            index_digest = descriptor["digest"]
            ref = (descriptor.get("annotations") or {}).get(NAME_ANNOTATION)
            continue
        if not name.startswith("blobs/sha256/"):
            continue
        digest = "sha256:" + posixpath.basename(name)
        if digest == index_digest and config_digest is None:
            manifest = json.loads(data.read())
            config_digest = manifest["config"]["digest"]
            for layer in manifest["layers"]:
                if not str(layer.get("mediaType", OCI_LAYER)).endswith(".tar"):
                    raise UsageError(f"OCI layer {layer['digest']} is compressed; only plain tar layers load")
            layer_digests = [layer["digest"] for layer in manifest["layers"]]
            pending = set(layer_digests)
        elif digest == config_digest and not started:
            config_bytes = data.read()
            if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != digest:
                raise IntegrityError(f"config blob {digest} does not match its digest")
            docker_manifest = [{
                "Config": digest[7:] + ".json",
                "RepoTags": [ref] if ref else None,
                "Layers": [d[7:] + "/layer.tar" for d in layer_digests],
            }]
            yield _entry("manifest.json", _canonical(docker_manifest))
            yield _entry(digest[7:] + ".json", config_bytes)
            started = True
        elif started and digest in pending:
            pending.discard(digest)
            yield _entry(digest[7:])
            yield _entry(digest[7:] + "/layer.tar", size=info.size)
            while data.remaining:
                yield data.read(min(COPY_CHUNK, data.remaining))
            yield bytes(-info.size % BLOCK)
        else:
            raise UsageError(
                "this OCI layout does not list index, manifest and config before the layers",
                hint="import layouts written by `envkit export --format oci`",
            )
    if not started or pending:
        raise UsageError("the OCI layout is incomplete (missing manifest, config or layers)")
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


def import_image(
    client: docker.DockerClient, path: str | os.PathLike[str], *, progress: Progress | None = None
) -> ImportResult:
    """Load an archive written by `export_image` (or any docker-archive, plain, gzip or zstd)."""
    say = progress or (lambda _msg: None)
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise UsageError(f"archive {source} not found")
    say(f"importing {source}")
    try:
        with open_archive(source) as reader:
            head = reader.read(BLOCK)
            kind = "oci" if head[:11] == b"oci-layout\0" else "docker-archive"
            say(f"{source}: {kind}")
            if kind == "oci":
                stream = docker_archive_from_oci(Prefixed(head, io.BufferedReader(reader, READ_CHUNK)))
            else:
                stream = _chain(head, _chunks(reader))
            loaded = load_archive(client, stream)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"import of {source} interrupted") from exc
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise EngineRefused(f"the engine refused {source}: {exc}") from exc
    except (io.UnsupportedOperation, OSError) as exc:
        raise UsageError(f"cannot read {source}: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__ == "ZstdError":
            raise IntegrityError(f"{source} is not a valid zstd stream: {exc}") from exc
        raise
    ids = []
    for ref in loaded:
        try:
            ids.append(client.api.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound:
            continue
    return ImportResult(path=source, loaded=tuple(loaded), image_ids=tuple(dict.fromkeys(ids)))
