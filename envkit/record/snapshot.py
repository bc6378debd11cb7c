"""Manifests: the whole definition of an environment, and restoring an image from one.

A manifest carries the spec and lock (enough to rebuild with no catalog), what the image holds
(layers, apt and Python packages, torch/CUDA/cuDNN/NCCL, env, labels) and a digest over its own
canonical JSON, so an edited or truncated manifest is refused before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envkit import __version__
from envkit.atomic import write_text
from envkit.errors import IntegrityError, UsageError
from envkit.record.drift import Drift

# 2 added the optional `drift` (a running container's changes, `snapshot --container`); 1 still reads.
SCHEMA_VERSION = 2

# Runs inside the image with its own Python (standard library only): installed distributions with
# a hash of each RECORD (which lists every installed file's hash), and dpkg's package list.
COLLECT_SCRIPT = r"""
import glob, hashlib, json, os, re, subprocess
out = {"python": {}, "apt": {}}
for site in sorted(glob.glob("/opt/venv/lib/python3*/site-packages")):
    for dist in sorted(glob.glob(site + "/*.dist-info")):
        name = version = None
        with open(os.path.join(dist, "METADATA"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
        record = os.path.join(dist, "RECORD")
        digest = None
        if os.path.exists(record):
            with open(record, "rb") as fh:
                digest = "sha256:" + hashlib.sha256(fh.read()).hexdigest()
        if name:
            key = re.sub(r"[-_.]+", "-", name).lower()
            out["python"][key] = {"version": version, "record_sha256": digest}
try:
    text = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
                          capture_output=True, text=True, check=True).stdout
    out["apt"] = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
except (OSError, subprocess.CalledProcessError):
    pass
print(json.dumps(out, sort_keys=True))
"""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRecord(_Strict):
    id: str
    layers: list[str]
    tags: list[str]
    size: int


class PythonPackage(_Strict):
    version: str | None
    record_sha256: str | None = None
    lock_version: str | None = None
    lock_hashes: list[str] = Field(default_factory=list)


class StackVersions(_Strict):
    torch: str | None
    cuda: str | None
    cudnn: str | None
    nccl: str | None
    python: str | None
    arch_list: list[str]


class Manifest(_Strict):
    schema_version: int
    envkit_version: str
    source: str
    image: ImageRecord
    spec: dict[str, Any]
    spec_digest: str
    lock: dict[str, Any]
    base: dict[str, Any]
    source_date_epoch: int
    apt_packages: dict[str, str]
    python_packages: dict[str, PythonPackage]
    lock_mismatches: list[str]
    stack: StackVersions
    env: list[str]
    labels: dict[str, str]
    host: dict[str, Any] | None = None
    verify_report: dict[str, Any] | None = None
    drift: Drift | None = None
    digest: str = ""


def canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_digest(data: dict[str, Any]) -> str:
    body = {key: value for key, value in data.items() if key != "digest"}
    return "sha256:" + hashlib.sha256(canonical(body).encode()).hexdigest()


def seal_manifest(manifest: Manifest) -> Manifest:
    data = manifest.model_dump(mode="json")
    data["digest"] = content_digest(data)
    return Manifest.model_validate(data)


def write_manifest(path: Path, manifest: Manifest) -> None:
    sealed = seal_manifest(manifest)
    text = json.dumps(sealed.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    write_text(path, text)


def read_manifest(path: Path) -> Manifest:
    """Load a manifest, refusing a newer schema (exit 2) or content that does not match its digest (5)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror}") from None
    return parse_manifest(text, str(path))


def parse_manifest(text: str, path: str) -> Manifest:
    """A manifest from its JSON text; ``path`` names where it came from in messages."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise IntegrityError(f"{path} is not valid JSON (truncated or edited?): {exc}") from None
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} is not a manifest object")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise IntegrityError(f"{path} has no schema_version")
    if version > SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema_version {version}; this envkit ({__version__}) reads up to {SCHEMA_VERSION}",
            hint="upgrade envkit to restore this manifest",
        )
    recorded = data.get("digest", "")
    actual = content_digest(data)
    if recorded != actual:
        raise IntegrityError(
            f"{path} does not match its digest (recorded {recorded or 'none'}, content {actual}): "
            "it was edited or truncated after it was written"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise IntegrityError(f"{path} does not follow manifest schema {version}: {problem}") from None


def collect_packages(client: docker.DockerClient, image_id: str) -> dict[str, Any]:
    try:
        output = client.containers.run(
            image_id, ["python3", "-c", COLLECT_SCRIPT], remove=True, user="0", network_disabled=True,
            entrypoint="",
        )
    except docker.errors.ContainerError as exc:
        raise UsageError(f"could not read the packages of {image_id[:19]}: {exc}") from None
    return json.loads(output.decode().strip().splitlines()[-1])


def _lock_index(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    packages = lock.get("packages") or {}
    return {re.sub(r"[-_.]+", "-", name).lower(): value for name, value in packages.items()}


def _lock_entry(value: Any) -> tuple[str | None, list[str]]:
    if isinstance(value, dict):
        return value.get("version"), list(value.get("hashes") or [])
    if isinstance(value, (list, tuple)) and value:
        return value[0], list(value[1]) if len(value) > 1 else []
    return None, []


def python_packages_against_lock(
    installed: dict[str, dict[str, Any]], lock: dict[str, Any]
) -> tuple[dict[str, PythonPackage], list[str]]:
    locked = _lock_index(lock)
    packages: dict[str, PythonPackage] = {}
    mismatches: list[str] = []
    for name in sorted(installed):
        version = installed[name].get("version")
        lock_version, hashes = _lock_entry(locked.get(name))
        packages[name] = PythonPackage(
            version=version,
            record_sha256=installed[name].get("record_sha256"),
            lock_version=lock_version,
            lock_hashes=hashes,
        )
        if locked and lock_version is None and name not in ("pip", "setuptools", "wheel"):
            mismatches.append(f"{name} {version}: installed but not in the lock")
        elif lock_version is not None and lock_version != version:
            mismatches.append(f"{name}: installed {version}, lock {lock_version}")
    for name in sorted(set(locked) - set(installed)):
        mismatches.append(f"{name}: in the lock but not installed")
    return packages, mismatches


def _spec_and_lock_from_labels(labels: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Find the catalog spec and lock an envkit image was built from (its labels name them)."""
    from envkit.spec.catalog import load

    name = labels.get("io.envkit.name")
    if not name:
        raise UsageError("this image carries no io.envkit.name label; snapshot an envkit-built image or NAME")
    ref = load(name)
    if ref.spec.digest() != labels.get("io.envkit.spec-digest"):
        raise IntegrityError(
            f"the catalog spec of {name} changed since this image was built "
            f"(image {labels.get('io.envkit.spec-digest')}, catalog {ref.spec.digest()})",
            hint=f"rebuild with `envkit build {name}` and snapshot again",
        )
    lock = json.loads(ref.lock_path.read_text()) if ref.lock_path.is_file() else {}
    return ref.spec.model_dump(mode="json"), lock, ref.display


def snapshot(
    client: docker.DockerClient,
    target: str,
    *,
    host: dict[str, Any] | None = None,
    verify_report: dict[str, Any] | None = None,
) -> Manifest:
    from envkit.spec.catalog import image_ref_for

    image_ref = image_ref_for(target)
    try:
        attrs = client.api.inspect_image(image_ref)
    except docker.errors.ImageNotFound:
        hint = f"build it first: envkit build {target}"
        raise UsageError(f"image {image_ref} not found", hint=hint) from None
    config = attrs.get("Config") or {}
    labels = dict(config.get("Labels") or {})
    spec, lock, source = _spec_and_lock_from_labels(labels)
    found = collect_packages(client, attrs["Id"])
    packages, mismatches = python_packages_against_lock(found["python"], lock)
    arch = labels.get("io.envkit.arch-list", "")
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        envkit_version=__version__,
        source=source,
        image=ImageRecord(
            id=attrs["Id"],
            layers=list((attrs.get("RootFS") or {}).get("Layers") or []),
            tags=sorted(attrs.get("RepoTags") or []),
            size=int(attrs.get("Size") or 0),
        ),
        spec=spec,
        spec_digest=labels.get("io.envkit.spec-digest", ""),
        lock=lock,
        base=dict(lock.get("base") or {"ref": labels.get("org.opencontainers.image.base.name", "")}),
        source_date_epoch=int(labels.get("io.envkit.source-date-epoch", spec.get("source_date_epoch", 0))),
        apt_packages=dict(sorted(found["apt"].items())),
        python_packages=packages,
        lock_mismatches=mismatches,
        stack=StackVersions(
            torch=labels.get("io.envkit.torch"),
            cuda=labels.get("io.envkit.cuda"),
            cudnn=labels.get("io.envkit.cudnn"),
            nccl=labels.get("io.envkit.nccl"),
            python=labels.get("io.envkit.python"),
            arch_list=[a for a in arch.split(",") if a],
        ),
        env=list(config.get("Env") or []),
        labels=dict(sorted(labels.items())),
        host=host,
        verify_report=verify_report,
    )
    return seal_manifest(manifest)


def materialize(manifest: Manifest, directory: Path) -> Path:
    """Write the manifest's spec and lock as a spec file with its lock beside it; return the spec path."""
    spec_path = directory / f"{manifest.spec['tag']}.yaml"
    spec_path.write_text(yaml.safe_dump(manifest.spec, sort_keys=True))
    if manifest.lock:
        spec_path.with_suffix(".lock").write_text(json.dumps(manifest.lock, sort_keys=True, indent=2))
    return spec_path


def plan_from_manifest(manifest: Manifest, directory: Path, **options: Any) -> Any:
    """A build plan from the manifest's own spec and lock (``options`` go to ``plan_build``)."""
    from envkit.image.build import plan_build

    spec_path = materialize(manifest, directory)
    plan = plan_build(str(spec_path), **options)
    if plan.spec.digest() != manifest.spec_digest:
        raise IntegrityError(
            f"the manifest's spec digests to {plan.spec.digest()}, "
            f"the manifest records {manifest.spec_digest}"
        )
    return plan


def restore_events(
    client: docker.DockerClient,
    manifest: Manifest,
    *,
    tag: str | None = None,
    nocache: bool = False,
    ca_bundle: str | None = None,
    offline_index: str | None = None,
    network_mode: str | None = None,
    buildargs: dict[str, str] | None = None,
) -> Iterator[Any]:
    """Rebuild from the manifest alone (no catalog) and seal; yields build events.

    The last event is ``done`` with the build result; compare its image_id with manifest.image.id.
    An offline restore passes the local package index, the cut-off network and its proxy args;
    it gets no CA bundle, since nothing it fetches goes over TLS.
    """
    from envkit.image.build import build_image

    options: dict[str, Any] = {"ca_bundle": ca_bundle, "source": manifest.source}
    if offline_index is not None:
        options.update(ca_bundle=None, environ={}, offline_index=offline_index)
    with tempfile.TemporaryDirectory(prefix="envkit-restore-") as tmp:
        plan = plan_from_manifest(manifest, Path(tmp), **options)
        target = tag or (manifest.image.tags[0] if manifest.image.tags else plan.tag)
        yield from build_image(
            client, plan, tag=target, nocache=nocache, network_mode=network_mode, buildargs=buildargs
        )


def diff_view(manifest: Manifest) -> dict[str, Any]:
    """The manifest in the shape `envkit diff` compares."""
    return {
        "image_id": manifest.image.id,
        "layers": list(manifest.image.layers),
        "config": {"Env": list(manifest.env), "Labels": dict(manifest.labels)},
        "python_packages": {name: pkg.version for name, pkg in manifest.python_packages.items()},
        "apt_packages": dict(manifest.apt_packages),
    }
