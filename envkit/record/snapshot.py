"""Snapshot an image into a manifest, and restore an image from one.

The manifest model itself (and reading, writing and checking it) is in ``record.manifest``;
its names are re-exported here for callers that know them from this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
from packaging.utils import canonicalize_name

from envkit import __version__, labels
from envkit.engine.registry import known_locations
from envkit.errors import IntegrityError, UsageError
from envkit.lock.python import LockFile
from envkit.record.manifest import (
    SCHEMA_VERSION,
    ImageRecord,
    Manifest,
    PythonPackage,
    StackVersions,
    build_manifest,
    content_digest,
    parse_manifest,
    read_manifest,
    seal_manifest,
    write_manifest,
)
from envkit.resources import incontainer_dir
from envkit.spec.catalog import SpecRef
from envkit.spec.model import ImageSpec

BASE_NAME_LABEL = "org.opencontainers.image.base.name"

__all__ = [
    "COLLECT_SCRIPT",
    "SCHEMA_VERSION",
    "ImageRecord",
    "Manifest",
    "PythonPackage",
    "StackVersions",
    "collect_packages",
    "content_digest",
    "parse_manifest",
    "plan_from_manifest",
    "python_packages_against_lock",
    "read_manifest",
    "restore_events",
    "seal_manifest",
    "snapshot",
    "write_manifest",
]

# Runs inside the image with its own Python (standard library only); the file's docstring says what
# it prints.
COLLECT_SCRIPT = (incontainer_dir() / "collect_packages.py").read_text(encoding="utf-8")


def collect_packages(client: docker.DockerClient, image_id: str) -> dict[str, Any]:
    try:
        output = client.containers.run(
            image_id, ["python3", "-c", COLLECT_SCRIPT], remove=True, user="0", network_disabled=True,
            entrypoint="",
        )
    except docker.errors.ContainerError as exc:
        raise UsageError(f"could not read the packages of {image_id[:19]}: {exc}") from None
    return json.loads(output.decode().strip().splitlines()[-1])


def python_packages_against_lock(
    installed: dict[str, dict[str, Any]], lock: LockFile | None
) -> tuple[dict[str, PythonPackage], list[str]]:
    locked = {canonicalize_name(name): value for name, value in (lock.packages if lock else {}).items()}
    packages: dict[str, PythonPackage] = {}
    mismatches: list[str] = []
    for name in sorted(installed):
        version = installed[name].get("version")
        entry = locked.get(name)
        lock_version = entry.version if entry is not None else None
        packages[name] = PythonPackage(
            version=version,
            record_sha256=installed[name].get("record_sha256"),
            lock_version=lock_version,
            lock_hashes=list(entry.hashes) if entry is not None else [],
        )
        if locked and lock_version is None and name not in ("pip", "setuptools", "wheel"):
            mismatches.append(f"{name} {version}: installed but not in the lock")
        elif lock_version is not None and lock_version != version:
            mismatches.append(f"{name}: installed {version}, lock {lock_version}")
    for name in sorted(set(locked) - set(installed)):
        mismatches.append(f"{name}: in the lock but not installed")
    return packages, mismatches


def _spec_and_lock_from_labels(image_labels: dict[str, str]) -> tuple[ImageSpec, LockFile | None, str]:
    """Find the catalog spec and lock an envkit image was built from (its labels name them)."""
    from envkit.lock.python import read_lock
    from envkit.spec.catalog import load

    name = image_labels.get(labels.NAME)
    if not name:
        raise UsageError(f"this image carries no {labels.NAME} label; snapshot an envkit-built image or NAME")
    ref = load(name)
    if ref.spec.digest() != image_labels.get(labels.SPEC_DIGEST):
        raise IntegrityError(
            f"the catalog spec of {name} changed since this image was built "
            f"(image {image_labels.get(labels.SPEC_DIGEST)}, catalog {ref.spec.digest()})",
            hint=f"rebuild with `envkit build {name}` and snapshot again",
        )
    lock = read_lock(ref.lock_path) if ref.lock_path.is_file() else None
    return ref.spec, lock, ref.display


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
    image_labels = dict(config.get("Labels") or {})
    spec, lock, source = _spec_and_lock_from_labels(image_labels)
    found = collect_packages(client, attrs["Id"])
    packages, mismatches = python_packages_against_lock(found["python"], lock)
    arch = image_labels.get(labels.ARCH_LIST, "")
    locations = known_locations(attrs["Id"])
    return build_manifest(
        schema_version=SCHEMA_VERSION,
        envkit_version=__version__,
        source=source,
        image=ImageRecord(
            id=attrs["Id"],
            layers=list((attrs.get("RootFS") or {}).get("Layers") or []),
            tags=sorted(attrs.get("RepoTags") or []),
            size=int(attrs.get("Size") or 0),
            locations=locations,
        ),
        spec=spec,
        spec_digest=image_labels.get(labels.SPEC_DIGEST, ""),
        lock=lock,
        base=dict(lock.base) if lock and lock.base else {"ref": image_labels.get(BASE_NAME_LABEL, "")},
        source_date_epoch=int(image_labels.get(labels.SOURCE_DATE_EPOCH, spec.source_date_epoch)),
        apt_packages=dict(sorted(found["apt"].items())),
        python_packages=packages,
        lock_mismatches=mismatches,
        stack=StackVersions(
            torch=image_labels.get(labels.TORCH),
            cuda=image_labels.get(labels.CUDA),
            cudnn=image_labels.get(labels.CUDNN),
            nccl=image_labels.get(labels.NCCL),
            python=image_labels.get(labels.PYTHON),
            arch_list=[a for a in arch.split(",") if a],
        ),
        env=list(config.get("Env") or []),
        labels=dict(sorted(image_labels.items())),
        host=host,
        verify_report=verify_report,
    )


def plan_from_manifest(manifest: Manifest, **options: Any) -> Any:
    """A build plan from the manifest's own spec and lock, held in memory (no catalog, no files).

    ``options`` go to ``plan_for_spec``; the plan names ``manifest.source`` in the Dockerfile's
    header, as the original build did, so its build inputs equal the original's.
    """
    from envkit.image.build import plan_for_spec

    if manifest.spec.digest() != manifest.spec_digest:
        raise IntegrityError(
            f"the manifest's spec digests to {manifest.spec.digest()}, "
            f"the manifest records {manifest.spec_digest}"
        )
    # The path is where the spec came from, for messages only: nothing is read from it or written there.
    ref = SpecRef(spec=manifest.spec, path=Path(manifest.source), display=manifest.source)
    options.setdefault("source", manifest.source)
    return plan_for_spec(ref, manifest.lock, **options)


def restore_tag(
    client: docker.DockerClient, manifest: Manifest, tag: str | None, *, force: bool = False,
    expected_id: str | None = None,
) -> str:
    """The tag a restore may move: ``--tag``, or the one the manifest's validated spec derives.

    ``manifest.image.tags`` is never used: a file does not choose which local tag moves. A tag
    that already names another image (not ``expected_id``, default the manifest's image) is
    refused (exit 2) unless ``force``.
    """
    from envkit.engine.client import find_image

    target = tag or manifest.spec.image_tag
    expected = expected_id or manifest.image.id
    present = find_image(client, target)
    if present is not None and present.get("Id") != expected and not force:
        raise UsageError(
            f"{target} already names another image ({str(present.get('Id'))[:19]}); restore will not move it",
            hint="choose another --tag, or pass --force to move it",
        )
    return target


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

    options: dict[str, Any] = {"ca_bundle": ca_bundle}
    if offline_index is not None:
        options.update(ca_bundle=None, environ={}, offline_index=offline_index)
    plan = plan_from_manifest(manifest, **options)
    # Never a tag the file names (image.tags): --tag, or the one the validated spec derives.
    target = tag or plan.tag
    yield from build_image(
        client, plan, tag=target, nocache=nocache, network_mode=network_mode, buildargs=buildargs
    )
