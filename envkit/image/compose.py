"""Compose an image from the system image the engine built and the Python layers envkit writes.

The engine builds only the small system image (apt packages, the user, envkit's files, the empty
environment); it is sealed the usual way, layer by layer, which takes seconds at that size. The
Python packages never pass through the engine's builder: `envkit.image.pylayers` streams them as
layers straight into the engine (`preload`, while the system part builds), and `compose_image`
stacks them with the sealed system layers under one config.

Layer order (`python_stack`): NVIDIA's CUDA wheels, the sealed base, torch, the system layers,
then the rest of the Python set. Every image with the same torch build and base shares the first
three (same chain IDs, stored once by the engine and the registry); images with the same system
part share it too, so a change to a small Python dependency changes only the top layer. The Python
layers touch only the environment's files, which no system layer writes (the system part makes
the empty environment), so the stack gives the same tree as installing in any other order.

The sealed system part is remembered by its recipe (`SystemMemo`): the Dockerfile's instructions
without the labels, its files and the base. A later build with the same recipe, another name or
another Python lock, builds nothing on the engine when the engine still holds those layers; the
labels are set by `relabel` on both paths, so either gives the same image.

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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
import docker.errors

from envkit.atomic import write_bytes
from envkit.engine.archive import DIGEST_RE
from envkit.engine.client import engine_chains, image_exists, inspect_image
from envkit.engine.dockerarchive import chain_ids, load_archive, load_error, rfc3339
from envkit.engine.tarstream import END_OF_ARCHIVE, file_chunks, member
from envkit.errors import IntegrityError
from envkit.events import Show, phases
from envkit.image.pylayers import CUDA, TORCH, LayerPlan, stream_layer
from envkit.image.seal import _save_and_rewrite
from envkit.image.seal_policy import sealed_config
from envkit.jsonio import canonical_bytes
from envkit.state import state_root

WRITER_VERSION = 1


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


SYSTEM_MEMO_VERSION = 1


@dataclass
class SystemPart:
    """The sealed system part: its config, the sealed base layers and the layers above the base.
    Parts carry their files when the engine has just built them; remembered ones carry only digests."""

    config: dict[str, Any]
    base: list[Part]
    layers: list[Part]

    def to_json(self) -> dict[str, Any]:
        return {"version": SYSTEM_MEMO_VERSION, "config": self.config,
                "base": [p.diff_id for p in self.base], "layers": [p.diff_id for p in self.layers]}


class SystemMemo:
    """Sealed system parts by the digest of their recipe (`envkit.image.build.system_key`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_root() / "systems"

    def get(self, key: str) -> SystemPart | None:
        """The remembered part, or None; a file that is not exactly what `put` writes is ignored."""
        try:
            data = json.loads((self.root / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != SYSTEM_MEMO_VERSION:
            return None
        config, base, layers = data.get("config"), data.get("base"), data.get("layers")
        if not isinstance(config, dict) or not isinstance(base, list) or not isinstance(layers, list):
            return None
        digests = [*base, *layers]
        if not digests or not all(isinstance(d, str) and DIGEST_RE.fullmatch(d) for d in digests):
            return None
        rootfs = config.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("diff_ids") != digests:
            return None
        return SystemPart(
            config=config,
            base=[Part(f"base-{i}", diff_id=d) for i, d in enumerate(base, 1)],
            layers=[Part(f"system-{i}", diff_id=d) for i, d in enumerate(layers, len(base) + 1)],
        )

    def put(self, key: str, part: SystemPart) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes(self.root / f"{key}.json", canonical_bytes(part.to_json()))


class SystemNotHeld(Exception):
    """A remembered system part whose layers the engine no longer holds where the image needs them."""


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


def seal_system(client: docker.DockerClient, system_id: str, *, base_ref: str, epoch: int, workdir: str,
                show: Show | None = None) -> SystemPart:
    """Seal the layers of the system image the engine built on `base_ref` into `workdir`.

    Every layer is sealed, the base's too (as `preload` seals it), so that sealing the composed
    image again (a drift layer on top) gives the same layers: the seal is idempotent."""
    say = phases(show)
    say(f"sealing the system layers of {system_id[7:19]}")
    saved = _save_and_rewrite(client, system_id, workdir, epoch, say)
    results = list(saved.layers)
    digests = [r.diff_id if r.entries > 0 else None for r, _ in results]
    config = json.loads(sealed_config(saved.config, digests, epoch))
    base_layers = len(base_diff_ids(client, base_ref))
    sealed = [(r, p) for r, p in results if r.entries > 0]
    return SystemPart(
        config=config,
        base=[Part(f"base-{i}", path=p, size=os.path.getsize(p), diff_id=r.diff_id)
              for i, (r, p) in enumerate(sealed[:base_layers], 1)],
        layers=[Part(f"system-{i}", path=p, size=os.path.getsize(p), diff_id=r.diff_id)
                for i, (r, p) in enumerate(sealed[base_layers:], base_layers + 1)],
    )


def relabel(config: dict[str, Any], base_labels: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    """`config` with the base's labels and `labels` as its labels, and its LABEL history entry
    written by envkit. The engine's build and a remembered system part both go through here, so
    the image does not depend on which of the two gave the config."""
    new = dict(config)
    runtime = dict(new.get("config") or {})
    runtime["Labels"] = {**base_labels, **labels}
    new["config"] = runtime
    history = [dict(item) for item in new.get("history") or []]
    marker = "#(nop)  LABEL "
    for item in reversed(history):
        text = str(item.get("created_by", ""))
        if marker in text:
            prefix = text.split(marker, 1)[0]
            item["created_by"] = prefix + marker + " ".join(f"{k}={v}" for k, v in labels.items())
            break
    new["history"] = history
    return new


def compose_image(
    client: docker.DockerClient,
    system: SystemPart,
    plans: list[LayerPlan],
    wheel_digests: dict[str, str],
    *,
    labels: dict[str, str],
    base_ref: str,
    memo: LayerMemo | None = None,
    show: Show | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ComposeResult:
    """Stack the Python layers with the sealed system part and load the image; its ID.

    Nothing is tagged. A remembered system part (no files) whose layers would have to be sent
    raises SystemNotHeld before anything is loaded; the caller builds it on the engine then."""
    say = phases(show)
    memo = memo or LayerMemo()
    started = time.monotonic()
    base_labels = dict(inspect_image(client, base_ref).get("Config", {}).get("Labels") or {})
    config = relabel(system.config, base_labels, labels)
    python = python_parts(plans, wheel_digests, memo, fresh=False)
    below, above = python_stack(python, system.base)
    parts = below + system.layers + above
    history = _history(config["history"], len(system.base), below, above)
    _mark_sent(parts, engine_chains(client))
    missing = [p.name for p in parts if p.sent and p.plan is None and not p.path]
    if missing:
        raise SystemNotHeld(", ".join(missing))
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


def _mark_sent(parts: list[Part], present: set[str]) -> None:
    """A layer is sent unless its digest, and those of all below it, are known and the engine holds
    that chain. Once one digest is unknown, every chain above it is new too."""
    known: list[str] = []
    for index, part in enumerate(parts):
        if part.diff_id is None or len(known) < index:
            part.sent = True
            continue
        known.append(part.diff_id)
        part.sent = chain_ids(known)[-1] not in present


def _history(history: list[dict[str, Any]], base_layers: int, below: list[Part],
             above: list[Part]) -> list[dict[str, Any]]:
    """The system image's history with the Python layers' entries where they sit: those of `below`
    around the base's own entries, those of `above` after the last system layer's entry."""
    created = history[0].get("created") if history else None

    def entry(part: Part) -> dict[str, Any]:
        assert part.plan is not None
        names = ", ".join(p.name.split("-", 1)[0] for p in part.plan.wheels)
        item = {"created_by": f"envkit python layer {part.plan.group}: {names}",
                "comment": "written by envkit from the locked wheels"}
        return {"created": created, **item} if created else item

    seen = 0
    split = 0
    for index, item in enumerate(history):
        if seen == base_layers:
            break
        split = index + 1
        if not item.get("empty_layer"):
            seen += 1
    base_entries, system = history[:split], history[split:]
    out: list[dict[str, Any]] = []
    for part in below:
        if part.plan is not None:
            out.append(entry(part))
        elif base_entries:
            out.extend(base_entries)
            base_entries = []
    out += base_entries
    last = max((i for i, item in enumerate(system) if not item.get("empty_layer")), default=-1)
    return out + system[: last + 1] + [entry(p) for p in above] + system[last + 1:]


def _finish(config: dict[str, Any], history: list[dict[str, Any]], diff_ids: list[str],
            box: dict[str, bytes]) -> bytes:
    new = dict(config)
    new["history"] = history
    new["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    box["config"] = canonical_bytes(new)
    return box["config"]


def _written(part: Part, progress: Callable[[str, int, int], None] | None, *,
             digest: bool = True) -> Iterator[bytes]:
    """A Python layer's bytes as envkit writes them, reporting progress; at the end its size must
    be the planned one and, with `digest`, its digest the remembered one if any, and
    `part.diff_id` becomes it. (`docker import` computes the digest itself: see `_import_layer`.)"""
    assert part.plan is not None
    sha = hashlib.sha256() if digest else None
    done = 0
    for chunk in stream_layer(part.plan):
        if sha is not None:
            sha.update(chunk)
        done += len(chunk)
        if progress:
            progress(part.name, done, part.size)
        yield chunk
    if done != part.size:
        raise IntegrityError(f"layer {part.name} came to {done} bytes, {part.size} planned")
    if sha is not None:
        _check_remembered(part, "sha256:" + sha.hexdigest())


def _check_remembered(part: Part, digest: str) -> None:
    if part.diff_id and part.diff_id != digest:
        raise IntegrityError(f"layer {part.name} is {digest}, remembered as {part.diff_id}",
                             hint="remove envkit's layer memo (its state directory, layers/)")
    part.diff_id = digest


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
        yield from _written(part, progress)
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


def python_parts(plans: list[LayerPlan], wheel_digests: dict[str, str], memo: LayerMemo, *,
                 fresh: bool) -> list[Part]:
    out = []
    for plan in plans:
        key = LayerMemo.key(plan, wheel_digests)
        out.append(Part(f"python-{plan.group}", plan=plan, memo_key=key,
                        diff_id=None if fresh else memo.get(key), size=plan.size))
    return out


def python_stack(python: list[Part], base: list[Part]) -> tuple[list[Part], list[Part]]:
    """The layers below the system ones (CUDA, the base, torch) and those above (the rest of the
    Python set).

    The CUDA layer, the largest, is at the very bottom because a layer with no parent can be given
    to the engine with `docker import`, which stores it in one pass, where `docker load` writes every
    byte twice. It and the base touch different paths, so the order changes nothing in the tree.
    The rest of the Python set, which changes most often, is on top: a new version of a small
    dependency leaves every layer below it, the system part's included, as it was."""
    cuda = [p for p in python if p.plan is not None and p.plan.group == CUDA]
    torch = [p for p in python if p.plan is not None and p.plan.group == TORCH]
    rest = [p for p in python if p not in cuda and p not in torch]
    return cuda + base + torch, rest


class Importing:
    """`docker import` of the CUDA layer, running in a thread of its own (`start_import`)."""

    def __init__(self, client: docker.DockerClient, part: Part,
                 progress: Callable[[str, int, int], None] | None) -> None:
        self.part = part
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(client, progress), name="envkit-import",
                                        daemon=True)
        self._thread.start()

    def _run(self, client: docker.DockerClient, progress: Callable[[str, int, int], None] | None) -> None:
        try:
            self._outcome["id"] = _import_layer(client, self.part, progress)
        except BaseException as exc:  # re-raised in the caller's thread by join()
            self._outcome["error"] = exc

    def join(self) -> str:
        """The imported image's ID, once the import is over; its failure, if it failed."""
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return str(self._outcome["id"])


def start_import(
    client: docker.DockerClient,
    plan: LayerPlan,
    wheel_digests: dict[str, str],
    *,
    memo: LayerMemo | None = None,
    show: Show | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    fresh: bool = False,
) -> Importing | None:
    """Start importing the CUDA layer unless the engine holds it (None then). It has no parent, so
    it can go in as soon as its wheels are there, before the others are even downloaded."""
    part = python_parts([plan], wheel_digests, memo or LayerMemo(), fresh=fresh)[0]
    _mark_sent([part], engine_chains(client))
    if not part.sent:
        return None
    phases(show)(f"Python layers: importing {part.name} while the others are fetched and streamed")
    return Importing(client, part, progress)


def seal_base(client: docker.DockerClient, base_ref: str, *, epoch: int, workdir: Path,
              show: Show | None = None) -> list[Part]:
    """The base image's layers, sealed into `workdir` (what `preload` stacks between CUDA and torch)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sealed = _save_and_rewrite(client, base_ref, str(workdir), epoch, phases(show)).layers
    return [Part(f"base-{i}", path=p, size=os.path.getsize(p), diff_id=r.diff_id)
            for i, (r, p) in enumerate(sealed, 1) if r.entries > 0]


def preload(
    client: docker.DockerClient,
    plans: list[LayerPlan],
    wheel_digests: dict[str, str],
    base_parts: list[Part],
    *,
    epoch: int,
    importing: Importing | None = None,
    memo: LayerMemo | None = None,
    show: Show | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    fresh: bool = False,
) -> list[str]:
    """Put the layers below the system part (CUDA, the base, torch) into the engine as untagged
    images of their own while it builds the system part; `compose_image` then finds their chain
    held. The CUDA layer comes by `importing` (`start_import`), which must have been started for
    these plans if the engine lacked it; the others stream into `docker load` meanwhile.

    Returns the IDs of the helper images (for `forget`); nothing when the engine holds them all.
    `fresh` (a --no-cache build) writes and sends the layers even so, so that their digests are
    computed again from the wheels rather than remembered.
    """
    say = phases(show)
    memo = memo or LayerMemo()
    python = python_parts(plans, wheel_digests, memo, fresh=fresh)
    if importing is not None:  # the import thread fills in that part's digest
        python = [importing.part if p.memo_key == importing.part.memo_key else p for p in python]
    if not python:
        return []
    parts, _ = python_stack(python, base_parts)
    # Taken now: a CUDA layer still on its way in is not in it, so every layer above it is sent.
    _mark_sent(parts, engine_chains(client))
    helpers: list[str] = []
    if importing is None and not any(p.sent for p in parts):
        say("Python layers: already on the engine")
        return []
    cuda = importing.part if importing is not None else None

    def wait_for_import() -> None:
        if importing is not None:
            helpers.append(importing.join())

    created = rfc3339(epoch)
    config = {"architecture": "amd64", "os": "linux", "created": created, "config": {},
              "history": [{"created": created, "created_by": p.name} for p in parts]}
    box: dict[str, bytes] = {}

    def finish(ids: list[str]) -> bytes:
        wait_for_import()  # docker load looks for the bottom layer only once it has the manifest
        if cuda is not None:
            ids = [cuda.diff_id or ""] + ids[1:]
        return _finish(config, config["history"], ids, box)

    first = 1 if cuda is not None else 0
    if any(p.sent for p in parts[first:]):
        to_send = [replace(p) for p in parts]
        if cuda is not None:
            to_send[0].sent = False  # the import brings it
        loaded = load_archive(client, _archive(to_send, finish, progress))
        for part, sent in zip(parts[first:], to_send[first:], strict=True):
            part.diff_id = sent.diff_id
        image_id = "sha256:" + hashlib.sha256(box["config"]).hexdigest()
        if image_id in loaded or image_exists(client, image_id):
            helpers.append(image_id)
    else:
        wait_for_import()
    for part in parts:
        if part.memo_key and part.diff_id:
            memo.put(part.memo_key, part.diff_id)
    return helpers


def _import_layer(client: docker.DockerClient, part: Part,
                  progress: Callable[[str, int, int], None] | None) -> str:
    """`docker import` one Python layer as a parentless image; its ID. Sets `part.diff_id` to the
    digest the engine computed of the bytes envkit sent (hashing them here as well would only
    spend a core's time on the same answer), checked against the remembered one if any."""
    try:
        answer = client.api.import_image_from_stream(_written(part, progress, digest=False))
    except docker.errors.APIError as exc:
        raise load_error(str(exc.explanation or exc)) from exc
    image_id = ""
    for line in str(answer).splitlines():
        try:
            status = json.loads(line).get("status", "")
        except ValueError:
            continue
        if str(status).startswith("sha256:"):
            image_id = str(status)
    layers = (inspect_image(client, image_id).get("RootFS") or {}).get("Layers") if image_id else None
    if not isinstance(layers, list) or len(layers) != 1 or not DIGEST_RE.fullmatch(str(layers[0])):
        raise IntegrityError(f"the engine imported {part.name} as {layers}, one layer expected")
    _check_remembered(part, str(layers[0]))
    return image_id


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


__all__ = [
    "ComposeResult", "Importing", "LayerMemo", "SystemMemo", "SystemNotHeld", "SystemPart", "base_diff_ids",
    "compose_image", "forget", "preload", "relabel", "seal_base", "seal_system", "start_import",
]
