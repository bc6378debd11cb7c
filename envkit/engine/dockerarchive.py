"""The docker-archive format: what `docker save` writes and `docker load` reads.

One reader (`read_saved`: manifest.json, the config, each layer handed to the caller in one pass
over the stream), one writer (`archive_stream`) and one `load_archive`. An image ID is the sha256
of its config bytes, so writing the config ourselves (fixed ``created``, canonical JSON) gives an
ID that depends only on the layers and the config we chose; ``docker import`` would stamp the
current time into it instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

import docker
import docker.errors

from envkit import digests
from envkit.engine.tarstream import (
    BLOCK,
    END_OF_ARCHIVE,
    SAVE_CHUNK,
    Prefixed,
    Source,
    buffered,
    carries_data,
    file_chunks,
    iter_tar,
    member,
    normalize_name,
    padding,
    tar_header,
)
from envkit.errors import DiskFull, EngineRefused, EnvkitError, IntegrityError
from envkit.jsonio import canonical_bytes

# Members of a saved archive other than layers are read into memory up to this size.
SMALL_MEMBER_MAX = 64 << 20

T = TypeVar("T")


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(value: Any) -> bytes:
    return canonical_bytes(value)


def sha256_file(path: Path) -> str:
    return "sha256:" + digests.sha256_file(path)


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The engine's chain ID of each layer: it names a layer together with everything below it."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if chains:
            diff_id = "sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest()
        chains.append(diff_id)
    return chains


# --------------------------------------------------------------------------------------------
# Reading what `docker save` sends.


def save_stream(client: docker.DockerClient, ref: str) -> io.BufferedReader:
    """`docker save` of one image as a buffered reader, for `read_saved` or `iter_tar`."""
    return buffered(client.api.get_image(ref, chunk_size=SAVE_CHUNK))


@dataclass
class SavedImage(Generic[T]):
    """One saved image: its manifest entry, its config bytes and what the caller made of each layer."""

    entry: dict[str, Any]
    config_bytes: bytes
    members: list[str]  # the layer member of each rootfs layer, links followed, in rootfs order
    layers: list[T]  # the caller's result for each of those members (repeated when one is shared)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_bytes)


LayerHandler = Callable[[str, Any, Source], T]


def read_saved(src: Source, on_layer: LayerHandler[T]) -> SavedImage[T]:
    """Read a docker-archive (the legacy layout or the OCI one Docker 25 writes) in one pass.

    `on_layer(member, info, data)` is called for each layer tar as it streams past and may read
    as much of `data` as it wants. Layer members are told from JSON blobs by their first byte.
    """
    small: dict[str, bytes] = {}
    links: dict[str, str] = {}
    handled: dict[str, T] = {}
    for info, data in iter_tar(src):
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
            else:
                handled[name] = on_layer(name, info, Prefixed(head, data))
        elif info.size <= SMALL_MEMBER_MAX:
            small[name] = data.read()
    if "manifest.json" not in small:
        raise IntegrityError("docker save returned no manifest.json")
    manifest = json.loads(small["manifest.json"])
    if len(manifest) != 1:
        raise IntegrityError(f"docker save returned {len(manifest)} images, expected one")
    entry = manifest[0]
    config_bytes = small.get(normalize_name(entry["Config"]))
    if config_bytes is None:
        raise IntegrityError(f"docker save archive lacks config {entry['Config']}")
    members: list[str] = []
    for layer in entry["Layers"]:
        path = normalize_name(layer)
        seen: set[str] = set()
        while path in links and path not in seen:
            seen.add(path)
            path = links[path]
        if path not in handled:
            raise IntegrityError(f"docker save archive lacks layer {layer}")
        members.append(path)
    return SavedImage(entry=entry, config_bytes=config_bytes, members=members,
                      layers=[handled[m] for m in members])


# --------------------------------------------------------------------------------------------
# Writing and loading.


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
        name = diff_id.split(":", 1)[1] + "/layer.tar"
        layer_names.append(name)
        if name not in stored and chain not in present:
            stored.add(name)
            members.append((name, path))
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}], separators=(",", ":")
    ).encode()
    for name, blob in (("manifest.json", manifest), (config_name, config_bytes)):
        yield member(name, blob, mtime=epoch)
    for name, path in members:
        size = os.path.getsize(path)
        yield member(posixpath.dirname(name), mtime=epoch)
        yield member(name, size=size, mtime=epoch)
        yield from file_chunks(path, size, label="layer file")
    yield END_OF_ARCHIVE


def load_archive(client: docker.DockerClient, chunks: Iterable[bytes]) -> list[str]:
    """`docker load` a stream; return what the engine reports loaded (IDs or tags)."""
    loaded: list[str] = []
    try:
        for message in client.api.load_image(chunks):
            if "errorDetail" in message or "error" in message:
                detail = (message.get("errorDetail") or {}).get("message") or message.get("error")
                raise load_error(str(detail))
            text = str(message.get("stream") or "").strip()
            for prefix in ("Loaded image ID: ", "Loaded image: "):
                if text.startswith(prefix):
                    loaded.append(text[len(prefix) :].strip())
    except docker.errors.APIError as exc:
        raise load_error(str(exc.explanation or exc)) from exc
    return loaded


# Annotations through which an OCI index (newer `docker save`) names tags that `docker load` sets.
_TAG_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


def _untag_small(name: str, data: bytes) -> bytes:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"the archive's {name} is not JSON: {exc}") from None
    if name == "manifest.json" and isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict):
                entry["RepoTags"] = None
    elif name == "index.json" and isinstance(value, dict):
        for entry in value.get("manifests") or []:
            annotations = entry.get("annotations") if isinstance(entry, dict) else None
            if isinstance(annotations, dict):
                for key in _TAG_ANNOTATIONS:
                    annotations.pop(key, None)
    return json.dumps(value, sort_keys=True).encode()


def without_tags(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A docker-archive stream with every tag it names removed, so `docker load` moves no tag.

    ``manifest.json``'s RepoTags are emptied, an OCI ``index.json``'s name annotations dropped
    and the legacy ``repositories`` file left out; layers pass through as they are.
    """
    src = buffered(chunks)
    for info, data in iter_tar(src):
        name = normalize_name(info.name)
        if name == "repositories":
            continue
        if name in ("manifest.json", "index.json") and info.isfile():
            if info.size > SMALL_MEMBER_MAX:
                raise IntegrityError(f"the archive's {name} is larger than {SMALL_MEMBER_MAX >> 20} MB")
            yield member(name, _untag_small(name, data.read(info.size)), mtime=int(info.mtime))
            continue
        yield tar_header(info)
        size = remaining = info.size if carries_data(info) else 0
        while remaining:
            block = data.read(min(remaining, SAVE_CHUNK))
            if not block:
                raise IntegrityError(f"the archive ends inside {name}")
            remaining -= len(block)
            yield block
        yield bytes(padding(size))
    yield END_OF_ARCHIVE


def load_error(detail: str) -> EnvkitError:
    if "no space left" in detail.lower():
        return DiskFull(f"the engine ran out of disk space loading the image: {detail}")
    return EngineRefused(f"the engine refused the image: {detail}")


def load_image(
    client: docker.DockerClient,
    config: dict[str, Any],
    layers: list[tuple[str, Path]],
    repo_tags: list[str],
    *,
    mtime: int = 0,
) -> str:
    """Load an image made of `config` (written canonically) and its (diff_id, layer tar) pairs,
    streamed straight to the engine; return the image ID."""
    config_bytes = canonical_json(config)
    files = [(diff_id, os.fspath(path)) for diff_id, path in layers]
    load_archive(client, archive_stream(config_bytes, files, epoch=mtime, repo_tags=repo_tags))
    return "sha256:" + hashlib.sha256(config_bytes).hexdigest()
