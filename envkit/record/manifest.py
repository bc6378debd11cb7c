"""The manifest: the one record of an environment that snapshot writes and everything else reads.

A manifest carries the spec and lock, parsed (enough to rebuild with no catalog), what the image
holds (layers, apt and Python packages, torch/CUDA/cuDNN/NCCL, env, labels), a running
container's drift when there was one, and a digest over its own canonical JSON, so an edited or
truncated manifest is refused (exit 5) before anything is built, diffed or bundled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from envkit import __version__
from envkit.atomic import write_text
from envkit.engine.registry import is_location
from envkit.errors import IntegrityError, UsageError
from envkit.jsonio import canonical_digest, pretty_text
from envkit.lock.python import LockFile
from envkit.spec.model import ImageSpec

# 2 added the optional `drift` (a running container's changes, `snapshot --container`); 1 still reads.
# 3 added the optional `image.locations` (registries holding the image by digest), left out of the
# JSON when there is none; 1 and 2 still read, and keep their digest.
SCHEMA_VERSION = 3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRecord(_Strict):
    id: str
    layers: list[str]
    tags: list[str]
    size: int
    # Where registries hold this image, as REGISTRY/REPO@sha256:<manifest digest>; `envkit restore`
    # pulls from these first. Absent (not an empty list) in a manifest that names none.
    locations: list[str] = Field(default_factory=list)

    @field_validator("locations")
    @classmethod
    def _strict_locations(cls, value: list[str]) -> list[str]:
        for location in value:
            if not is_location(location):
                raise ValueError(f"{location!r} is not a REGISTRY/REPO@sha256:<64 hex> location")
        if len(set(value)) != len(value):
            raise ValueError("a location is listed twice")
        return value

    @model_serializer(mode="wrap")
    def _omit_no_locations(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("locations"):
            data.pop("locations", None)
        return data


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


class LockedWheel(_Strict):
    """A distribution added or changed in the container, locked to one wheel on the index."""

    name: str
    version: str
    image_version: str | None = None  # None: not in the image at all
    filename: str
    url: str
    sha256: str


class DiffCounts(_Strict):
    """``docker diff`` of the container against its image: paths added, changed, deleted."""

    added: int
    changed: int
    deleted: int


class Drift(_Strict):
    """What a running container changed in its image's Python set, with the wheels to redo it."""

    container_id: str
    container_name: str
    wheels: list[LockedWheel] = Field(default_factory=list)
    removed: dict[str, str] = Field(default_factory=dict)  # name -> version in the image
    python_packages: dict[str, str]  # the container's whole Python set, name -> version
    apt_changes: list[str] = Field(default_factory=list)
    docker_diff: DiffCounts

    def digest(self) -> str:
        return canonical_digest(self.model_dump(mode="json"))


class Manifest(_Strict):
    schema_version: int
    envkit_version: str
    source: str  # the catalog file the image was built from, as the Dockerfile header names it
    image: ImageRecord
    spec: ImageSpec
    spec_digest: str
    lock: LockFile | None  # None: the image was built without a lock file
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

    @field_validator("lock", mode="before")
    @classmethod
    def _no_lock(cls, value: object) -> object:
        """Manifests written before the lock was typed record "no lock" as ``{}``."""
        return None if value == {} else value


def content_digest(data: dict[str, Any]) -> str:
    """The digest a manifest records: over its canonical JSON, the ``digest`` field left out."""
    return canonical_digest({key: value for key, value in data.items() if key != "digest"})


def seal_manifest(manifest: Manifest) -> Manifest:
    data = manifest.model_dump(mode="json")
    data["digest"] = content_digest(data)
    return Manifest.model_validate(data)


def manifest_text(manifest: Manifest) -> str:
    """The file a manifest is written as: sealed, keys sorted, indented."""
    return pretty_text(seal_manifest(manifest).model_dump(mode="json"))


def write_manifest(path: Path, manifest: Manifest) -> None:
    write_text(path, manifest_text(manifest))


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
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise IntegrityError(
            f"{path} does not follow manifest schema {version}: {where}: {problem['msg']}"
        ) from None
