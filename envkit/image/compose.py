"""Compose an image from the system image the engine built and the Python layers envkit writes.

The engine builds only the small system image (apt packages, the user, envkit's files, the empty
environment); it is sealed the usual way, layer by layer, which takes seconds at that size. The
Python packages never pass through the engine's builder: `envkit.image.pylayers` streams them as
layers straight into `docker load`, together with the sealed system layers, under one config.

Layer order: the base, then NVIDIA's CUDA wheels and torch, then the system layers, then the rest
of the Python set. CUDA and torch sit directly on the base so that every image with the same
torch build shares them (same chain IDs, stored once by the engine and the registry); they touch
only the environment's directory, which no system layer does, so the stack gives the same tree
as installing in any other order.

A layer the engine already holds under the same chain is not sent at all: the digests of written
layers are remembered by what they are made of (`LayerMemo`), so an unchanged CUDA or torch layer
is neither written nor sent again. The archive puts the config and manifest after the layers,
since the config needs the digests that only streaming the layers gives; `docker load` reads the
whole archive before it looks at either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from envkit.atomic import write_bytes
from envkit.engine.client import engine_chains, image_exists, inspect_image
from envkit.engine.dockerarchive import chain_ids, load_archive, rfc3339
from envkit.engine.tarstream import END_OF_ARCHIVE, file_chunks, member
from envkit.errors import IntegrityError
from envkit.events import Show, phases
from envkit.image.pylayers import CUDA, TORCH, LayerPlan, stream_layer
from envkit.image.seal import _save_and_rewrite, human_bytes
from envkit.image.seal_policy import sealed_config
from envkit.jsonio import canonical_bytes
from envkit.state import state_root

WRITER_VERSION = 1
BELOW_SYSTEM = (CUDA, TORCH)  # groups stacked directly on the base


class LayerMemo:
    """Digests of written layers, by a key of everything that decides their bytes."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_root() / "layers"

    @staticmethod
    def key(plan: LayerPlan, wheel_digests: dict[str, str]) -> str:
        parts = [f"pylayer/{WRITER_VERSION}", plan.group, plan.prefix, str(plan.owner), str(plan.epoch)]
        parts += sorted(wheel_digests[p.name] for p in plan.wheels)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        path = self.root / f"{key}.json"
        try:
            value = json.loads(path.read_text()).get("diff_id")
        except (OSError, ValueError):
            return None
        return value if isinstance(value, str) and value.startswith("sha256:") and len(value) == 71 else None

    def put(self, key: str, diff_id: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes(self.root / f"{key}.json", json.dumps({"diff_id": diff_id}).encode())


@dataclass
class Part:
    """One layer of the composed image: a sealed system layer file, or a Python layer plan."""

    name: str
    path: str = ""
    size: int = 0
    plan: LayerPlan | None = None
    memo_key: str = ""
    diff_id: str | None = None  # known up front for system layers and remembered Python layers
    sent: bool = False


@dataclass
class ComposeResult:
    image_id: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    sent_bytes: int = 0


def compose_image(
    client: docker.DockerClient,
    system_id: str,
    plans: list[LayerPlan],
    wheel_digests: dict[str, str],
    *,
    base_ref: str,
    epoch: int,
    memo: LayerMemo | None = None,
    show: Show | None = None,
    tmp_dir: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    fresh: bool = False,
) -> ComposeResult:
    """Seal `system_id`'s layers, stack the Python layers with them and load the image; its ID.

    The system image is built on `base_ref`; the base's own layers are used as they are (they are
    the bootstrapped root filesystem the lock records). Nothing is tagged.
    """
    say = phases(show)
    memo = memo or LayerMemo()
    started = time.monotonic()
    config: dict[str, Any]
    workdir = tempfile.mkdtemp(prefix="envkit-compose-", dir=tmp_dir)
    try:
        say(f"sealing the system layers of {system_id[7:19]}")
        saved = _save_and_rewrite(client, system_id, workdir, epoch, say)
        results = list(saved.layers)
        digests = [r.diff_id if r.entries > 0 else None for r, _ in results]
        config = json.loads(sealed_config(saved.config, digests, epoch))
        base = base_diff_ids(client, base_ref)
        base_layers = len(base)
        system = [Part(f"system-{i}", path=p, size=os.path.getsize(p), diff_id=r.diff_id)
                  for i, (r, p) in enumerate(results, 1) if r.entries > 0]
        if [p.diff_id for p in system[:base_layers]] != base:
            # The seal rewrote the base's layers: use the base's own (already on the engine).
            system = [Part(f"base-{i}", diff_id=d) for i, d in enumerate(base, 1)] + system[base_layers:]
        python = []
        for plan in plans:
            key = LayerMemo.key(plan, wheel_digests)
            # The layers below the system ones were just written again by `preload` when fresh.
            again = fresh and plan.group not in BELOW_SYSTEM
            python.append(Part(f"python-{plan.group}", plan=plan, memo_key=key,
                               diff_id=None if again else memo.get(key), size=plan.size))
        below = [p for p in python if p.plan and p.plan.group in BELOW_SYSTEM]
        above = [p for p in python if p not in below]
        parts = system[:base_layers] + below + system[base_layers:] + above
        history = _history(config["history"], base_layers, below, above, epoch)
        present = engine_chains(client)
        _mark_sent(parts, present)
        say("loading: " + ", ".join(f"{p.name} {'sent' if p.sent else 'held'}" for p in parts))
        box: dict[str, bytes] = {}
        stream = _archive(parts, lambda ids: _finish(config, history, ids, box), progress)
        loaded = load_archive(client, stream)
        image_id = "sha256:" + hashlib.sha256(box["config"]).hexdigest()
        if image_id not in loaded and not image_exists(client, image_id):
            raise IntegrityError(f"the engine loaded {loaded or 'nothing'}, expected {image_id}")
        for part in python:
            if part.diff_id:
                memo.put(part.memo_key, part.diff_id)
        return ComposeResult(
            image_id=image_id,
            layers=[{"name": p.name, "diff_id": p.diff_id, "size": p.size, "sent": p.sent} for p in parts],
            seconds=time.monotonic() - started,
            sent_bytes=sum(p.size for p in parts if p.sent),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _mark_sent(parts: list[Part], present: set[str]) -> None:
    """A layer is sent unless its digest, and those of all below it, are known and the engine holds
    that chain. Once one digest is unknown, every chain above it is new too."""
    known: list[str] = []
    for part in parts:
        if part.diff_id is None or len(known) < parts.index(part):
            part.sent = True
            continue
        known.append(part.diff_id)
        part.sent = chain_ids(known)[-1] not in present


def _history(history: list[dict[str, Any]], base_layers: int, below: list[Part], above: list[Part],
             epoch: int) -> list[dict[str, Any]]:
    """The system history with an entry for each Python layer where it sits in the stack."""
    created = rfc3339(epoch)

    def entry(part: Part) -> dict[str, Any]:
        assert part.plan is not None
        names = ", ".join(p.name.split("-", 1)[0] for p in part.plan.wheels)
        return {"created": created, "created_by": f"envkit python layer {part.plan.group}: {names}",
                "comment": "written by envkit from the locked wheels"}

    seen = 0
    split = 0
    for index, item in enumerate(history):
        if seen == base_layers:
            break
        split = index + 1
        if not item.get("empty_layer"):
            seen += 1
    return history[:split] + [entry(p) for p in below] + history[split:] + [entry(p) for p in above]


def _finish(config: dict[str, Any], history: list[dict[str, Any]], diff_ids: list[str],
            box: dict[str, bytes]) -> bytes:
    new = dict(config)
    new["history"] = history
    new["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    box["config"] = canonical_bytes(new)
    return box["config"]


def _archive(parts: list[Part], finish: Callable[[list[str]], bytes],
             progress: Callable[[str, int, int], None] | None) -> Iterator[bytes]:
    """The docker-archive: the layers to send, then the config and the manifest."""
    names = []
    for index, part in enumerate(parts):
        name = f"{index:02d}-{part.name}/layer.tar"
        names.append(name)
        if not part.sent:
            continue
        yield member(name.split("/")[0], mtime=0)
        yield member(name, size=part.size, mtime=0)
        if part.plan is None:
            yield from file_chunks(part.path, part.size, label="sealed layer")
            continue
        sha = hashlib.sha256()
        done = 0
        for chunk in stream_layer(part.plan):
            sha.update(chunk)
            done += len(chunk)
            if progress:
                progress(part.name, done, part.size)
            yield chunk
        if done != part.size:
            raise IntegrityError(f"layer {part.name} came to {done} bytes, {part.size} planned")
        digest = "sha256:" + sha.hexdigest()
        if part.diff_id and part.diff_id != digest:
            raise IntegrityError(f"layer {part.name} is {digest}, remembered as {part.diff_id}",
                                 hint="remove envkit's layer memo (its state directory, layers/)")
        part.diff_id = digest
        yield b"\0" * ((-part.size) % 512)
    config = finish([p.diff_id or "" for p in parts])
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": None, "Layers": names}],
                          separators=(",", ":")).encode()
    yield member(config_name, config, mtime=0)
    yield member("manifest.json", manifest, mtime=0)
    yield END_OF_ARCHIVE


def base_diff_ids(client: docker.DockerClient, base_ref: str) -> list[str]:
    return list((inspect_image(client, base_ref).get("RootFS") or {}).get("Layers") or [])


def preload(
    client: docker.DockerClient,
    base_ref: str,
    plans: list[LayerPlan],
    wheel_digests: dict[str, str],
    *,
    epoch: int,
    memo: LayerMemo | None = None,
    show: Show | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    fresh: bool = False,
) -> list[str]:
    """Load the layers that go directly on the base (CUDA, torch) as an untagged image of their own,
    while the engine is busy with the system part; `compose_image` then finds their chain held.

    Returns the IDs of images loaded for this (for `forget`); nothing when the engine holds them.
    `fresh` (a --no-cache build) writes and sends the layers even so, so that their digests are
    computed again from the wheels rather than remembered.
    """
    say = phases(show)
    memo = memo or LayerMemo()
    base = base_diff_ids(client, base_ref)
    parts = [Part(f"base-{i}", diff_id=d) for i, d in enumerate(base, 1)]
    for plan in plans:
        if plan.group in BELOW_SYSTEM:
            key = LayerMemo.key(plan, wheel_digests)
            parts.append(Part(f"python-{plan.group}", plan=plan, memo_key=key,
                              diff_id=None if fresh else memo.get(key), size=plan.size))
    if len(parts) == len(base):
        return []
    _mark_sent(parts, engine_chains(client))
    if not any(p.sent for p in parts):
        say("CUDA and torch layers: already on the engine")
        return []
    created = rfc3339(epoch)
    config = {"architecture": "amd64", "os": "linux", "created": created, "config": {},
              "history": [{"created": created, "created_by": p.name} for p in parts]}
    say("CUDA and torch layers: writing them from the wheels into the engine")
    box: dict[str, bytes] = {}
    loaded = load_archive(client, _archive(parts, lambda ids: _finish(config, config["history"], ids, box),
                                           progress))
    for part in parts:
        if part.memo_key and part.diff_id:
            memo.put(part.memo_key, part.diff_id)
    image_id = "sha256:" + hashlib.sha256(box["config"]).hexdigest()
    return [image_id] if image_id in loaded or image_exists(client, image_id) else []


def forget(client: docker.DockerClient, image_ids: list[str], *, keep: str) -> None:
    """Remove the untagged helper images `preload` loaded; their layers stay with the image."""
    for image_id in image_ids:
        if image_id == keep:
            continue
        try:
            if not client.api.inspect_image(image_id).get("RepoTags"):
                client.api.remove_image(image_id, noprune=False)
        except docker.errors.DockerException:
            continue


__all__ = ["ComposeResult", "LayerMemo", "base_diff_ids", "compose_image", "forget", "human_bytes", "preload"]
