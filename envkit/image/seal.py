"""Seal an image: rewrite its layers and config so that the same inputs give the same image ID.

The classic builder stamps the build time into every file it creates, into the image config and
into its history, and leaves caches and logs behind. Sealing streams the image out of the engine
(`docker save`), rewrites each layer in one pass and loads the result back. What a sealed layer
and a sealed config are is decided in `envkit.image.seal_policy`; this module moves the image out
of the engine and back, and layers left with no entries are dropped.

Same layer content gives the same layer digest, so when only the last logical layer changes, only
that layer differs from the previous seal, and layers the engine already holds (same chain ID) are
left out of the archive sent to `docker load`. Tar headers are written by
`envkit.engine.tarstream` rather than by `tarfile`, so the bytes do not depend on the Python
version that did the sealing.

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
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from envkit.engine.client import engine_chains, image_exists, inspect_image, tag_image
from envkit.engine.dockerarchive import (
    SavedImage,
    archive_stream,
    chain_ids,
    load_archive,
    load_error,
    read_saved,
    save_stream,
)
from envkit.engine.tarstream import COPY_CHUNK, Source
from envkit.errors import (
    BuildFailed,
    DiskFull,
    EngineRefused,
    EnvkitError,
    IntegrityError,
    Interrupted,
    UsageError,
)
from envkit.events import Show, phases
from envkit.image.seal_policy import (
    SOURCE_DATE_EPOCH_LABEL,
    LayerRewrite,
    resolve_epoch,
    rewrite_layer,
    sealed_config,
)

TMPDIR_ENV = "ENVKIT_TMPDIR"
__all__ = ["SOURCE_DATE_EPOCH_LABEL", "SealResult", "SealedLayer", "human_bytes", "seal_image"]

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
                      say: Callable[[str], None]) -> SavedImage[tuple[LayerRewrite, str]]:
    """`docker save` the image and rewrite each layer into `workdir` as it streams past."""

    count = 0

    def rewrite(_member: str, info: tarfile.TarInfo, data: Source) -> tuple[LayerRewrite, str]:
        nonlocal count
        count += 1
        index = count
        say(f"rewriting layer {index} ({human_bytes(info.size)})")
        out_path = os.path.join(workdir, f"layer-{index}.tar")
        with open(out_path, "wb+", buffering=COPY_CHUNK) as out:
            result = rewrite_layer(data, out, epoch=epoch)
            out.flush()
        say(
            f"layer {index}: {result.entries} entries, {result.removed} volatile removed, "
            f"{human_bytes(result.size)}" + (" (reordered)" if result.reordered else "")
        )
        return result, out_path

    return read_saved(save_stream(client, image_id), rewrite)


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
    show: Show | None = None,
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

    Progress goes to ``show`` as phase events.
    """
    say = phases(show)
    started = time.monotonic()
    attrs = inspect_image(client, image)
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
        results, raw_config = _layers_to_seal(client, image, attrs, workdir, epoch, rewrite_layers, say)
        kept_results = [(r, path) for r, path in results if r.entries > 0]
        layer_files = [(r.diff_id, path) for r, path in kept_results]
        digests = [r.diff_id if r.entries > 0 else None for r, _ in results]
        config_bytes = sealed_config(raw_config, digests, epoch)
        new_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        existed_before = image_exists(client, new_id)
        _load_sealed(client, image, new_id, config_bytes, layer_files, epoch=epoch,
                     rewrite_layers=rewrite_layers, say=say)
        for ref in tags:
            tag_image(client, new_id, ref)
            say(f"tagged {ref} -> {new_id[7:19]}")
        tagged = True
        sealed_attrs = client.api.inspect_image(new_id)
        return SealResult(
            image_id=new_id,
            source_image_id=source_id,
            source_date_epoch=epoch,
            layers=tuple(SealedLayer(r.diff_id, r.size, r.entries, r.removed) for r, _ in kept_results),
            tags=tuple(tags),
            dropped_layers=len(results) - len(kept_results),
            unsealed_size=int(attrs.get("Size") or 0),
            sealed_size=int(sealed_attrs.get("Size") or 0),
            seconds=time.monotonic() - started,
            removed_sample=tuple(s for r, _ in results for s in r.removed_sample),
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
            raise load_error(detail) from exc
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


def _layers_to_seal(
    client: docker.DockerClient, image: str, attrs: dict[str, Any], workdir: str, epoch: int,
    rewrite_layers: bool, say: Callable[[str], None],
) -> tuple[list[tuple[LayerRewrite, str]], dict[str, Any]]:
    """Each layer as rewritten into ``workdir`` (or as built, with no file) and the raw config."""
    if rewrite_layers:
        say(f"saving {image} ({attrs['Id'][7:19]}, {human_bytes(int(attrs.get('Size') or 0))})")
        saved = _save_and_rewrite(client, attrs["Id"], workdir, epoch, say)
        return list(saved.layers), saved.config
    say(f"sealing the config of {image}; layers kept as built")
    raw_config = config_from_engine(client, attrs)
    return [(LayerRewrite(d, 0, 1, 0, 0, 0, False), "") for d in raw_config["rootfs"]["diff_ids"]], raw_config


def _load_sealed(
    client: docker.DockerClient, image: str, new_id: str, config_bytes: bytes,
    layer_files: list[tuple[str, str]], *, epoch: int, rewrite_layers: bool, say: Callable[[str], None],
) -> None:
    """``docker load`` the sealed image, sending only the layers the engine lacks, and check its ID."""
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
    if new_id not in loaded and not image_exists(client, new_id):
        raise IntegrityError(f"the engine loaded {loaded or 'nothing'}, expected {new_id}")


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
