"""Explain how two images differ: config, labels, env, Python and apt packages, then layer files.

Either side may be an image (ID or tag) in the engine or a snapshot manifest (a file `envkit
snapshot` wrote, read and digest-checked through `record.manifest`, or a Manifest). Images are read
with `docker save`, streamed: every layer's files are hashed on the way through, and package
lists come from the merged filesystem (`*.dist-info/METADATA`, `var/lib/dpkg/status`), so
nothing needs to run inside the image. Layers are compared by position, which matches the
template's logical layers (base, system packages, Python environment, the image's own files).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import docker
import docker.errors
from packaging.utils import canonicalize_name

from envkit.engine.client import find_image, inspect_image
from envkit.engine.dockerarchive import read_saved, save_stream
from envkit.engine.tarstream import COPY_CHUNK, iter_tar, normalize_name
from envkit.errors import UsageError
from envkit.record.manifest import Manifest, read_manifest
from envkit.untrusted import clean

SUMMARY_LIMIT = 10
_METADATA_MAX = 1 << 20

_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


@dataclass(frozen=True)
class FileEntry:
    path: str
    kind: str
    size: int = 0
    sha256: str | None = None
    mode: int = 0
    uid: int = 0
    gid: int = 0
    link: str = ""
    mtime: int = 0

    def content_key(self) -> tuple[Any, ...]:
        return (self.kind, self.size, self.sha256, self.mode, self.uid, self.gid, self.link)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, "size": self.size}
        if self.sha256:
            out["sha256"] = self.sha256
        if self.link:
            out["link"] = self.link
        return out


@dataclass
class LayerView:
    digest: str
    files: dict[str, FileEntry] | None = None  # None: not available (a manifest)


@dataclass
class ImageView:
    ref: str
    source: str  # "image" or "manifest"
    image_id: str | None
    config: dict[str, Any]
    python_packages: dict[str, str]
    apt_packages: dict[str, str]
    layers: list[LayerView]


@dataclass(frozen=True)
class Change:
    key: str
    a: Any = None
    b: Any = None

    @property
    def kind(self) -> str:
        if self.a is None:
            return "added"
        if self.b is None:
            return "removed"
        return "changed"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class FileChange:
    path: str
    a: FileEntry
    b: FileEntry

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "a": self.a.to_dict(), "b": self.b.to_dict()}


@dataclass
class LayerDiff:
    index: int
    a_digest: str | None
    b_digest: str | None
    files_available: bool = True
    added: list[FileEntry] = field(default_factory=list)
    removed: list[FileEntry] = field(default_factory=list)
    changed: list[FileChange] = field(default_factory=list)
    mtime_only: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        return self.a_digest == self.b_digest

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "a_digest": self.a_digest,
            "b_digest": self.b_digest,
            "same": self.same,
            "files_available": self.files_available,
            "counts": dict(self.counts),
            "mtime_only": self.mtime_only,
            "added": [f.to_dict() for f in self.added],
            "removed": [f.to_dict() for f in self.removed],
            "changed": [c.to_dict() for c in self.changed],
        }


@dataclass
class ImageDiff:
    a: str
    b: str
    a_id: str | None
    b_id: str | None
    identical: bool
    config: list[Change] = field(default_factory=list)
    labels: list[Change] = field(default_factory=list)
    env: list[Change] = field(default_factory=list)
    python_packages: list[Change] = field(default_factory=list)
    apt_packages: list[Change] = field(default_factory=list)
    layers: list[LayerDiff] = field(default_factory=list)
    files_listed: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"ref": self.a, "image_id": self.a_id},
            "b": {"ref": self.b, "image_id": self.b_id},
            "identical": self.identical,
            "config": [c.to_dict() for c in self.config],
            "labels": [c.to_dict() for c in self.labels],
            "env": [c.to_dict() for c in self.env],
            "python_packages": [c.to_dict() for c in self.python_packages],
            "apt_packages": [c.to_dict() for c in self.apt_packages],
            "layers": [layer.to_dict() for layer in self.layers],
            "files_listed": self.files_listed,
            "notes": list(self.notes),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, default=str)

    def headline(self) -> str:
        """One line naming what differs, for error messages and logs."""
        if self.identical:
            return f"{self.a} and {self.b} are identical ({self.a_id})"
        parts = []
        for label, changes in (
            ("config", self.config),
            ("labels", self.labels),
            ("env", self.env),
            ("Python packages", self.python_packages),
            ("apt packages", self.apt_packages),
        ):
            if changes:
                parts.append(f"{len(changes)} {label}")
        layers = [layer for layer in self.layers if not layer.same]
        if layers:
            parts.append(f"{len(layers)} layers")
        return f"{self.a} and {self.b} differ: " + (", ".join(parts) if parts else "image IDs only")


# --------------------------------------------------------------------------------------------
# Collecting one side.


def is_manifest_ref(ref: str) -> bool:
    return ref.endswith(".json") or os.path.isfile(ref)


def load_manifest(ref: str | Manifest) -> ImageView:
    """A snapshot manifest (a file, digest-checked: an edited one is exit 5) as one side of a diff."""
    if isinstance(ref, Manifest):
        return manifest_view(ref, ref.image.id)
    if not os.path.isfile(ref):
        raise UsageError(f"manifest {ref} not found")
    return manifest_view(read_manifest(Path(ref)), ref)


def manifest_view(manifest: Manifest, name: str) -> ImageView:
    """What a manifest records of its image: ID, layers, env and labels, its Python and apt sets."""
    return ImageView(
        ref=name,
        source="manifest",
        image_id=manifest.image.id,
        config={"config": {"Env": list(manifest.env), "Labels": dict(manifest.labels)}},
        python_packages={
            canonicalize_name(pkg): package.version
            for pkg, package in manifest.python_packages.items() if package.version is not None
        },
        apt_packages=dict(manifest.apt_packages),
        layers=[LayerView(digest=digest) for digest in manifest.image.layers],
    )


def _norm_pkg(name: str) -> str:
    return str(canonicalize_name(name))


def inspect_or_usage(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    """Inspect an image by ID or tag, or by catalog name (``pytorch-cuda:2.8`` is the image tagged
    ``envkit/pytorch-cuda:2.8``); a missing one is a usage error naming it (exit 2)."""
    attrs = find_image(client, ref)
    if attrs is not None:
        return attrs
    tagged = _catalog_tag(ref)
    if tagged is not None:
        attrs = find_image(client, tagged)
        if attrs is None:
            raise UsageError(f"image {ref} ({tagged}) not found", hint=f"build it first: envkit build {ref}")
        return attrs
    return inspect_image(client, ref)


def _catalog_tag(ref: str) -> str | None:
    from envkit.spec.catalog import image_ref_for

    try:
        tagged = image_ref_for(ref)
    except UsageError:
        return None
    return tagged if tagged != ref else None


def collect_image(client: docker.DockerClient, ref: str, *, attrs: dict[str, Any] | None = None) -> ImageView:
    """Read an image's config, every layer's file list and its package lists (one `docker save`)."""
    attrs = attrs or inspect_or_usage(client, ref)
    image_id = attrs["Id"]
    saved = read_saved(save_stream(client, image_id), lambda _member, _info, data: scan_layer(data))
    config = saved.config
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    ordered = saved.layers
    layers = [LayerView(digest=d, files=layer.files) for d, layer in zip(diff_ids, ordered, strict=True)]
    merged = merge_captured(ordered)
    return ImageView(
        ref=ref,
        source="image",
        image_id=image_id,
        config=config,
        python_packages=python_packages_from(merged),
        apt_packages=apt_packages_from(merged.get("var/lib/dpkg/status", b"")),
        layers=layers,
    )


@dataclass
class _ScannedLayer:
    files: dict[str, FileEntry]
    captured: dict[str, bytes]
    whiteouts: list[str]
    opaque_dirs: list[str]


def _wanted(name: str) -> bool:
    return name == "var/lib/dpkg/status" or (
        name.endswith("/METADATA") and posixpath.basename(posixpath.dirname(name)).endswith(".dist-info")
    )


def scan_layer(src: Any) -> _ScannedLayer:
    """List one layer tar: every member with size and sha256; keep package metadata files."""
    files: dict[str, FileEntry] = {}
    captured: dict[str, bytes] = {}
    whiteouts: list[str] = []
    opaque: list[str] = []
    view = memoryview(bytearray(COPY_CHUNK))
    for info, data in iter_tar(src):
        name = normalize_name(info.name)
        base = posixpath.basename(name)
        if base == ".wh..wh..opq":
            opaque.append(posixpath.dirname(name))
        elif base.startswith(".wh."):
            whiteouts.append(posixpath.join(posixpath.dirname(name), base[4:]))
        digest = None
        if info.isreg():
            h = hashlib.sha256()
            keep = _wanted(name)
            parts: list[bytes] = []
            kept = 0
            while data.remaining:
                n = data.readinto(view[: min(len(view), data.remaining)])
                h.update(view[:n])
                if keep and kept < _METADATA_MAX:
                    parts.append(bytes(view[:n]))
                    kept += n
            digest = h.hexdigest()
            if keep:
                captured[name] = b"".join(parts)
        files[name] = FileEntry(
            path=name,
            kind="whiteout" if base.startswith(".wh.") else _KINDS.get(info.type, "other"),
            size=info.size if info.isreg() else 0,
            sha256=digest,
            mode=info.mode & 0o7777,
            uid=info.uid,
            gid=info.gid,
            link=info.linkname if (info.issym() or info.islnk()) else "",
            mtime=int(info.mtime),
        )
    return _ScannedLayer(files=files, captured=captured, whiteouts=whiteouts, opaque_dirs=opaque)


def merge_captured(layers: list[_ScannedLayer]) -> dict[str, bytes]:
    """The captured files as the merged filesystem sees them: later layers win, whiteouts delete."""
    fs: dict[str, bytes] = {}
    for layer in layers:
        for gone in layer.whiteouts:
            _delete_tree(fs, gone, keep_root=False)
        for directory in layer.opaque_dirs:
            _delete_tree(fs, directory, keep_root=True)
        fs.update(layer.captured)
    return fs


def _delete_tree(fs: dict[str, bytes], path: str, *, keep_root: bool) -> None:
    prefix = path.rstrip("/") + "/"
    for name in [n for n in fs if n.startswith(prefix) or (n == path and not keep_root)]:
        del fs[name]


def python_packages_from(fs: Mapping[str, bytes]) -> dict[str, str]:
    found: dict[str, set[str]] = {}
    parser = BytesHeaderParser()
    for name, content in fs.items():
        if not name.endswith("/METADATA"):
            continue
        headers = parser.parsebytes(content)
        pkg, version = headers.get("Name"), headers.get("Version")
        if pkg and version:
            found.setdefault(_norm_pkg(str(pkg).strip()), set()).add(str(version).strip())
    return {pkg: ", ".join(sorted(versions)) for pkg, versions in found.items()}


def apt_packages_from(status: bytes) -> dict[str, str]:
    packages: dict[str, str] = {}
    for paragraph in status.decode("utf-8", "replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = fields.get("Version", "")
    return packages


# --------------------------------------------------------------------------------------------
# Comparing.


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value


def _compare_maps(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Change]:
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va != vb:
            changes.append(Change(key, va, vb))
    return changes


def _env_map(config: Mapping[str, Any]) -> dict[str, str]:
    env = ((config.get("config") or {}).get("Env")) or []
    return dict(item.partition("=")[::2] for item in env)


def _config_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    trimmed = {k: v for k, v in config.items() if k not in ("rootfs",)}
    runtime = {k: v for k, v in (config.get("config") or {}).items() if k not in ("Env", "Labels")}
    trimmed["config"] = runtime
    trimmed.pop("container_config", None)  # the build container's own copy: noise
    out: dict[str, Any] = {}
    _flatten(trimmed, "", out)
    return {k: v for k, v in out.items() if v not in (None, "", [], {})}


def compare_layers(index: int, a: LayerView | None, b: LayerView | None) -> LayerDiff:
    diff = LayerDiff(index=index, a_digest=a.digest if a else None, b_digest=b.digest if b else None)
    if diff.same:
        diff.counts = {"added": 0, "removed": 0, "changed": 0}
        return diff
    if (a is not None and a.files is None) or (b is not None and b.files is None):
        diff.files_available = False
        return diff
    fa = a.files if a and a.files is not None else {}
    fb = b.files if b and b.files is not None else {}
    for path in sorted(set(fa) | set(fb)):
        ea, eb = fa.get(path), fb.get(path)
        if ea is None and eb is not None:
            diff.added.append(eb)
        elif eb is None and ea is not None:
            diff.removed.append(ea)
        elif ea is not None and eb is not None:
            if ea.content_key() != eb.content_key():
                diff.changed.append(FileChange(path, ea, eb))
            elif ea.mtime != eb.mtime:
                diff.mtime_only += 1
    diff.counts = {"added": len(diff.added), "removed": len(diff.removed), "changed": len(diff.changed)}
    return diff


def compare_views(a: ImageView, b: ImageView, *, files: bool = False) -> ImageDiff:
    identical = a.image_id is not None and a.image_id == b.image_id
    result = ImageDiff(a=a.ref, b=b.ref, a_id=a.image_id, b_id=b.image_id, identical=identical,
                       files_listed=files)
    if identical:
        return result
    if a.source == "manifest" or b.source == "manifest":
        # A manifest records env and labels of the image config, nothing else of it.
        result.notes.append("a manifest records only the env and labels of an image's config")
    else:
        result.config = _compare_maps(_config_fields(a.config), _config_fields(b.config))
    labels_a = (a.config.get("config") or {}).get("Labels") or {}
    labels_b = (b.config.get("config") or {}).get("Labels") or {}
    result.labels = _compare_maps(labels_a, labels_b)
    result.env = _compare_maps(_env_map(a.config), _env_map(b.config))
    result.python_packages = _compare_maps(a.python_packages, b.python_packages)
    result.apt_packages = _compare_maps(a.apt_packages, b.apt_packages)
    for i in range(max(len(a.layers), len(b.layers))):
        la = a.layers[i] if i < len(a.layers) else None
        lb = b.layers[i] if i < len(b.layers) else None
        layer = compare_layers(i, la, lb)
        if not files:
            layer.added = layer.added[:SUMMARY_LIMIT]
            layer.removed = layer.removed[:SUMMARY_LIMIT]
            layer.changed = layer.changed[:SUMMARY_LIMIT]
        result.layers.append(layer)
    if not any(layer.files_available for layer in result.layers if not layer.same):
        if any(not layer.same for layer in result.layers):
            result.notes.append("file lists need both sides to be images in the engine")
    return result


def diff_images(
    client: docker.DockerClient | None,
    a: str | Manifest,
    b: str | Manifest,
    *,
    files: bool = False,
) -> ImageDiff:
    """Compare two images or manifests. Missing images raise UsageError naming them (exit 2); a
    manifest that does not match its digest raises IntegrityError (exit 5). Two sides with one
    image ID are identical, and nothing is read from the engine for them."""
    manifests: list[ImageView | None] = []
    attrs: list[dict[str, Any] | None] = []
    for ref in (a, b):
        if isinstance(ref, Manifest) or is_manifest_ref(ref):
            manifests.append(load_manifest(ref))
            attrs.append(None)
        else:
            if client is None:
                raise UsageError(f"{ref} is not a manifest file and no Docker engine was given")
            manifests.append(None)
            attrs.append(inspect_or_usage(client, ref))
    names = [view.ref if view else str(ref) for view, ref in zip(manifests, (a, b), strict=True)]
    ids = [view.image_id if view else info["Id"] if info else None
           for view, info in zip(manifests, attrs, strict=True)]
    if ids[0] is not None and ids[0] == ids[1]:
        return ImageDiff(a=names[0], b=names[1], a_id=ids[0], b_id=ids[1], identical=True, files_listed=files)
    views: list[ImageView] = []
    for ref, view, info in zip((a, b), manifests, attrs, strict=True):
        if view is not None:
            views.append(view)
        else:
            assert client is not None and isinstance(ref, str) and info is not None
            views.append(collect_image(client, ref, attrs=info))
    return compare_views(views[0], views[1], files=files)


# --------------------------------------------------------------------------------------------
# Showing.


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return clean(json.dumps(value, sort_keys=True))
    return clean(value)


def _describe(entry: FileEntry) -> str:
    if entry.kind == "file":
        return f"{entry.size} B sha256:{(entry.sha256 or '')[:12]}"
    if entry.link:
        return f"{entry.kind} -> {clean(entry.link)}"
    return f"{entry.kind} mode {entry.mode:o} uid {entry.uid}"


def render(diff: ImageDiff, console: Any) -> None:
    """Print a diff with a rich Console."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    # Names, paths and values come from images and files other people made: cleaned of control
    # and escape sequences, and never read as rich markup.
    a, b = escape(clean(diff.a)), escape(clean(diff.b))
    a_id, b_id = escape(clean(diff.a_id or "-")), escape(clean(diff.b_id or "-"))
    if diff.identical:
        console.print(f"[green]identical[/]: {a} and {b} are {a_id}")
        return
    console.print(f"[bold]{a}[/] ({a_id})  vs  [bold]{b}[/] ({b_id})")
    sections = (
        ("Config", diff.config),
        ("Labels", diff.labels),
        ("Environment", diff.env),
        ("Python packages", diff.python_packages),
        ("apt packages", diff.apt_packages),
    )
    for title, changes in sections:
        if not changes:
            continue
        shown = changes if diff.files_listed else changes[:50]
        if console.is_terminal:
            table = Table(title=f"{title} ({len(changes)})", title_justify="left")
            table.add_column("name", overflow="fold")
            table.add_column("change")
            table.add_column("a", overflow="fold")
            table.add_column("b", overflow="fold")
            for change in shown:
                table.add_row(*(Text(cell) for cell in (clean(change.key), change.kind, _fmt(change.a),
                                                        _fmt(change.b))))
            console.print(table)
        else:  # plain lines, one per change, for logs and pipes
            console.print(f"{title} ({len(changes)}):", markup=False)
            for change in shown:
                console.print(f"  {change.kind:<8} {clean(change.key)}: {_fmt(change.a)} -> {_fmt(change.b)}",
                              markup=False, soft_wrap=True)
        if len(shown) < len(changes):
            console.print(f"  ... {len(changes) - len(shown)} more (--files or --json for all)")
    for layer in diff.layers:
        if layer.same:
            console.print(f"layer {layer.index}: same ({clean((layer.a_digest or '')[7:19])})", markup=False)
            continue
        short_a = clean((layer.a_digest or "-")[7:19]) or "-"
        short_b = clean((layer.b_digest or "-")[7:19]) or "-"
        if not layer.files_available:
            console.print(f"layer {layer.index}: {short_a} -> {short_b} (no file lists)", markup=False)
            continue
        c = layer.counts
        console.print(
            f"layer {layer.index}: {short_a} -> {short_b}: {c.get('added', 0)} added, "
            f"{c.get('removed', 0)} removed, {c.get('changed', 0)} changed"
            + (f", {layer.mtime_only} differ only in mtime" if layer.mtime_only else ""),
            markup=False,
        )
        for mark, entries in (("+", layer.added), ("-", layer.removed)):
            for entry in entries:
                line = f"  {mark} {clean(entry.path)}  {_describe(entry)}"
                console.print(line, markup=False, soft_wrap=True)
        for change in layer.changed:
            console.print(f"  ~ {clean(change.path)}  {_describe(change.a)} -> {_describe(change.b)}",
                          markup=False, soft_wrap=True)
        hidden = sum(c.values()) - len(layer.added) - len(layer.removed) - len(layer.changed)
        if hidden > 0:
            console.print(f"  ... {hidden} more (--files for all)")
    for note in diff.notes:
        console.print(f"note: {clean(note)}", markup=False)
    console.print(clean(diff.headline()), markup=False)
