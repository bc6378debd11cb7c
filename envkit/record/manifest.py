"""The manifest: the one record of an environment that snapshot writes and everything else reads.

A manifest carries the spec and lock, parsed (enough to rebuild with no catalog), what the image
holds (layers, apt and Python packages, torch/CUDA/cuDNN/NCCL, env, labels), a running
container's drift when there was one, and a digest over its own canonical JSON, so an edited or
truncated manifest is refused (exit 5) before anything is built, diffed or bundled.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import Version
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from envkit import __version__
from envkit.atomic import write_text
from envkit.engine.registry import is_location
from envkit.errors import IntegrityError, UsageError
from envkit.jsonio import canonical_digest, pretty_text
from envkit.lock import grammar
from envkit.lock.python import LockFile
from envkit.spec.model import ImageSpec
from envkit.untrusted import UntrustedError, bad_char, check_inert, decode, load_json

# 2 added the optional `drift` (a running container's changes, `snapshot --container`); 1 still reads.
# 3 added the optional `image.locations` (registries holding the image by digest), left out of the
# JSON when there is none; 1 and 2 still read, and keep their digest.
SCHEMA_VERSION = 3


# The biggest manifest envkit reads; real ones are a few hundred KB.
MAX_MANIFEST_BYTES = 64 << 20

# What each field may hold. Every manifest is read as hostile: a value reaches a Dockerfile
# (source, drift), a tag, a path or an engine call only after its pattern has matched.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_TAG_REF_RE = re.compile(
    rf"(?:[A-Za-z0-9][A-Za-z0-9.\-]*(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*:[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,127}}"
)
# The catalog file an image came from, as the Dockerfile's header comment names it.
SOURCE_RE = re.compile(r"[A-Za-z0-9._+@/~:\-][A-Za-z0-9._+@/~:\- ]{0,511}")
CONTAINER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")
CONTAINER_ID_RE = re.compile(r"[0-9a-f]{64}")
# Versions as an image reports them (installed METADATA, labels): kept and compared, never run.
LOOSE_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_\-]{0,127}")
ARCH_RE = re.compile(r"[A-Za-z0-9_.+]{1,32}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/\-]{0,255}")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
WHEEL_FILENAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!\-]*\.whl")
MAX_TEXT = 4096


def _text(value: str, what: str, *, limit: int = MAX_TEXT) -> str:
    """Free text kept as data (messages, label values): bounded, no control characters."""
    char = bad_char(value)
    if char is not None:
        raise ValueError(f"{what} holds the control character {char!r}")
    if len(value) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    return value


def _matches(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{value[:80]!r} is not {what}")
    return value


def check_image_tag(value: str) -> str:
    return _matches(IMAGE_TAG_REF_RE, value, "an image repository:tag")


def _digest(value: str) -> str:
    return _matches(grammar.SHA256_DIGEST_RE, value, "a sha256:<64 hex> digest")


def _pattern(pattern: re.Pattern[str], what: str) -> AfterValidator:
    """A field check: the whole value must match ``pattern``; ``what`` names it if not."""
    return AfterValidator(lambda value: _matches(pattern, value, what))


_Digest = Annotated[str, AfterValidator(_digest)]
_LooseVersion = Annotated[str, _pattern(LOOSE_VERSION_RE, "a version")]
_Source = Annotated[
    str, _pattern(SOURCE_RE, "a spec file path (letters, digits, . _ + @ / ~ : - and spaces)")
]
_ContainerId = Annotated[str, _pattern(CONTAINER_ID_RE, "a container ID (64 hex digits)")]
_ContainerName = Annotated[str, _pattern(CONTAINER_NAME_RE, "a container name")]


def _loose_version(value: str | None) -> str | None:
    return None if value is None else _matches(LOOSE_VERSION_RE, value, "a version")


def _pep440(value: str | None) -> str | None:
    return None if value is None else grammar.check_python_version(value)


def _python_names(value: dict[str, Any]) -> dict[str, Any]:
    for name in value:
        grammar.check_python_name(name)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRecord(_Strict):
    id: _Digest
    layers: list[str]
    tags: list[str]  # kept as a record of where the image was; never used to choose a local tag
    size: int = Field(ge=0)
    # Where registries hold this image, as REGISTRY/REPO@sha256:<manifest digest>; `envkit restore`
    # pulls from these first. Absent (not an empty list) in a manifest that names none.
    locations: list[str] = Field(default_factory=list)

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[str]) -> list[str]:
        return [_digest(layer) for layer in value]

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return [check_image_tag(tag) for tag in value]

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

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        return _loose_version(value)

    @field_validator("lock_version")
    @classmethod
    def _lock_version(cls, value: str | None) -> str | None:
        return _pep440(value)

    @field_validator("record_sha256")
    @classmethod
    def _record(cls, value: str | None) -> str | None:
        return None if value is None else _digest(value)

    @field_validator("lock_hashes")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        return [grammar.check_sha256_hex(item) for item in value]


class StackVersions(_Strict):
    torch: str | None
    cuda: str | None
    cudnn: str | None
    nccl: str | None
    python: str | None
    arch_list: list[str]

    @field_validator("torch", "cuda", "cudnn", "nccl", "python")
    @classmethod
    def _versions(cls, value: str | None) -> str | None:
        return None if value in (None, "") else _loose_version(value)

    @field_validator("arch_list")
    @classmethod
    def _arch(cls, value: list[str]) -> list[str]:
        return [_matches(ARCH_RE, arch, "a GPU architecture") for arch in value]


class LockedWheel(_Strict):
    """A distribution added or changed in the container, locked to one wheel on the index."""

    name: grammar.PythonName
    version: grammar.PythonVersion
    image_version: str | None = None  # None: not in the image at all
    filename: str
    url: str
    sha256: str

    @field_validator("image_version")
    @classmethod
    def _image_version(cls, value: str | None) -> str | None:
        return _loose_version(value)

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        _matches(WHEEL_FILENAME_RE, value, "a wheel file name")
        try:
            parse_wheel_filename(value)
        except (InvalidWheelFilename, ValueError):
            raise ValueError(f"{value!r} is not a wheel file name") from None
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _text(value, "url", limit=2048)
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or " " in value:
            raise ValueError(f"{value[:80]!r} is not an https URL")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        return _digest(value)

    @model_validator(mode="after")
    def _wheel_matches(self) -> LockedWheel:
        wheel_name, wheel_version, _, _ = parse_wheel_filename(self.filename)
        if wheel_name != self.name or wheel_version != Version(self.version):
            raise ValueError(f"{self.filename} is not a wheel of {self.name} {self.version}")
        return self


class DiffCounts(_Strict):
    """``docker diff`` of the container against its image: paths added, changed, deleted."""

    added: int
    changed: int
    deleted: int


class Drift(_Strict):
    """What a running container changed in its image's Python set, with the wheels to redo it."""

    container_id: _ContainerId
    container_name: _ContainerName
    wheels: list[LockedWheel] = Field(default_factory=list)
    removed: dict[str, str] = Field(default_factory=dict)  # name -> version in the image
    python_packages: dict[str, str]  # the container's whole Python set, name -> version
    apt_changes: list[str] = Field(default_factory=list)
    docker_diff: DiffCounts

    @field_validator("removed", "python_packages")
    @classmethod
    def _packages(cls, value: dict[str, str]) -> dict[str, str]:
        for version in _python_names(value).values():
            _loose_version(version)
        return value

    @field_validator("apt_changes")
    @classmethod
    def _apt_changes(cls, value: list[str]) -> list[str]:
        return [_text(line, "apt change", limit=512) for line in value]

    def digest(self) -> str:
        return canonical_digest(self.model_dump(mode="json"))


class Manifest(_Strict):
    schema_version: int
    envkit_version: _LooseVersion
    source: _Source  # the catalog file the image was built from, as the Dockerfile header names it
    image: ImageRecord
    spec: ImageSpec
    spec_digest: _Digest
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

    @field_validator("digest")
    @classmethod
    def _self_digest(cls, value: str) -> str:
        return value if value == "" else _digest(value)

    @field_validator("base")
    @classmethod
    def _base(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not isinstance(item, str):
                raise ValueError(f"base.{key} is not a string")
            _text(item, f"base.{key}", limit=512)
        ref = value.get("ref")
        if ref and not (IMAGE_TAG_REF_RE.fullmatch(ref) or "@sha256:" in ref and " " not in ref):
            raise ValueError(f"base.ref {ref[:80]!r} is not an image reference")
        for key in ("image_id", "rootfs"):
            if value.get(key):
                _digest(value[key])
        return value

    @field_validator("apt_packages")
    @classmethod
    def _apt(cls, value: dict[str, str]) -> dict[str, str]:
        for name, version in value.items():
            grammar.check_debian_name(name)
            if version:
                grammar.check_debian_version(version)
        return value

    @field_validator("python_packages")
    @classmethod
    def _python(cls, value: dict[str, PythonPackage]) -> dict[str, PythonPackage]:
        return _python_names(value)

    @field_validator("lock_mismatches")
    @classmethod
    def _mismatches(cls, value: list[str]) -> list[str]:
        return [_text(line, "lock mismatch", limit=1024) for line in value]

    @field_validator("env")
    @classmethod
    def _env(cls, value: list[str]) -> list[str]:
        return [_matches(ENV_RE, _text(item, "env entry", limit=32768), "NAME=value") for item in value]

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            _matches(LABEL_KEY_RE, key, "a label key")
            _text(item, f"label {key}", limit=32768)
        return value

    @field_validator("host", "verify_report")
    @classmethod
    def _inert(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else check_inert(value)


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


def read_manifest_bytes(path: Path) -> bytes:
    """A manifest file's bytes (size-capped): read once, so a signature and the parse see the same."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MB: not a manifest")
    return data


def read_manifest(path: Path) -> Manifest:
    """Load a manifest, refusing a newer schema (exit 2) or content that does not match its digest (5)."""
    return parse_manifest(read_manifest_bytes(path), str(path))


def parse_manifest(text: str | bytes, path: str) -> Manifest:
    """A manifest from its JSON text; ``path`` names where it came from in messages."""
    try:
        if isinstance(text, bytes):
            text = decode(text)
        data = load_json(text)
    except UntrustedError as exc:
        raise IntegrityError(f"{path} is not a manifest (truncated or edited?): {exc}") from None
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
        raise IntegrityError(
            f"{path} does not follow manifest schema {version}: {first_problem(exc)}"
        ) from None


def first_problem(exc: ValidationError) -> str:
    """The first error of a failed validation as ``field.path: message``."""
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"])
    return f"{where}: {problem['msg']}"


def build_manifest(**fields: Any) -> Manifest:
    """A manifest from what an image or container reports (snapshot); sealed.

    An image whose records a manifest would refuse (a control character in a label, a name no
    package tool would write) cannot be snapshotted: exit 5, naming the field.
    """
    try:
        return seal_manifest(Manifest(**fields))
    except ValidationError as exc:
        raise IntegrityError(f"the image holds a value a manifest refuses: {first_problem(exc)}") from None
