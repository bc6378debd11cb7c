"""Exact Python pins with sha256 hashes (resolved by uv) and the lock file that keeps them.

``images/<name>/<tag>.lock`` is JSON: the spec digest it was made from, the base, the apt package
versions and the hashed requirements text a build installs with ``--require-hashes``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from packaging.markers import InvalidMarker, Marker
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from envkit import platforms
from envkit.atomic import write_text
from envkit.errors import IntegrityError, LockFailed, NetworkError, SpecError, UsageError
from envkit.jsonio import canonical_digest
from envkit.lock import grammar
from envkit.platforms import uv_platform
from envkit.spec.model import MIRROR_RE, SUITE_RE
from envkit.untrusted import no_duplicate_keys

LOCK_SCHEMA_VERSION = 1
DEFAULT_PLATFORM = uv_platform(platforms.DEFAULT_PLATFORM)

# uv's wording when it cannot reach an index (connection, DNS, TLS, timeouts).
_NETWORK_MARKERS = (
    "failed to fetch",
    "error sending request",
    "dns error",
    "connection refused",
    "connection reset",
    "operation timed out",
    "timed out",
    "tls",
    "certificate",
    "network",
)
_REQUIREMENT_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:(?P<digest>[0-9a-f]{64})")
# One line of hashed requirements text as uv writes it: a pinned requirement (extras and a marker
# allowed), a hash, or a comment. Options (--index-url, -e, -r, ...) and URLs are refused: the text
# is installed as root during the build.
_STRICT_REQUIREMENT = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._\-]*[A-Za-z0-9])?)"
    r"(?:\[(?P<extras>[A-Za-z0-9._\-]+(?:\s*,\s*[A-Za-z0-9._\-]+)*)\])?"
    r"==(?P<version>[A-Za-z0-9.+!_\-]+)"
    r"(?:\s*;\s*(?P<marker>[^\\#]+?))?"
    r"(?P<more>\s+\\)?"
)
_STRICT_HASH = re.compile(r"--hash=sha256:(?P<digest>\S*?)(?P<more>\s+\\)?")
_BASE_KEYS = ("ref", "suite", "mirror", "variant", "image_id", "rootfs")
_IMAGE_REF = re.compile(
    r"[a-z0-9][a-z0-9._\-/]*(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


class LockError(SpecError):
    """A lock file field that breaks its grammar (exit 2). Hash problems are IntegrityError (exit 5)."""

    label = "lock error"


class HashProblem(ValueError):
    """A missing, malformed or inconsistent wheel hash: the lock's content cannot be trusted."""


def _hash(digest: str) -> str:
    try:
        return grammar.check_sha256_hex(digest)
    except ValueError as exc:
        raise HashProblem(str(exc)) from None


def check_requirements_text(text: str) -> dict[str, tuple[str, list[str]]]:
    """Parse hashed requirements text strictly: ``name -> (version, hashes)``, or ValueError.

    Every requirement is pinned with ``==`` to a PEP 440 version and carries at least one sha256.
    """
    bad = grammar.control_char(text, allow_newline=True)
    if bad is not None:
        raise ValueError(f"control character {bad!r} in the requirements text")
    packages: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    continued = False
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            if continued:
                raise ValueError(f"line {number}: a line continuation ends in a blank line")
            continue
        if line.startswith("#"):
            continue
        requirement = _STRICT_REQUIREMENT.fullmatch(line)
        hashed = _STRICT_HASH.fullmatch(line)
        if requirement and not continued:
            name = normalise_name(requirement["name"])
            grammar.check_python_version(requirement["version"])
            if requirement["marker"]:
                try:
                    Marker(requirement["marker"])
                except InvalidMarker as exc:
                    raise ValueError(f"line {number}: bad environment marker: {exc}") from None
            if name in packages:
                raise ValueError(f"line {number}: {name} is pinned twice")
            current = name
            packages[name] = (requirement["version"], [])
            continued = bool(requirement["more"])
        elif hashed and continued and current is not None:
            packages[current][1].append(_hash(hashed["digest"]))
            continued = bool(hashed["more"])
        else:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise ValueError(f"line {number}: {shown!r} is not a pinned requirement, a hash or a comment")
    if continued:
        raise ValueError("the requirements text ends in a line continuation")
    for name, (_version, hashes) in packages.items():
        if not hashes:
            raise HashProblem(f"{name} has no --hash=sha256: every wheel must carry its hash")
    return packages


class LockedPackage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: grammar.PythonVersion
    hashes: list[str]

    @field_validator("hashes")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        if not value:
            raise HashProblem("no hash: every wheel must carry its sha256")
        return [_hash(digest) for digest in value]


def _walk_strings(value: object, where: str) -> None:
    """Refuse control characters in every key and value (the requirements text may hold newlines)."""
    if isinstance(value, str):
        bad = grammar.control_char(value, allow_newline=where == "python_requirements")
        if bad is not None:
            raise ValueError(f"control character {bad!r} in {where}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk_strings(key, where or str(key))
            _walk_strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for item in value:
            _walk_strings(item, where)


class LockFile(BaseModel):
    """The lock of one catalog image. Every field is checked against its grammar when read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = LOCK_SCHEMA_VERSION
    spec_digest: str
    source_date_epoch: Annotated[int, Field(ge=0)]
    base: dict[str, str] = Field(default_factory=dict)
    apt: dict[str, str] = Field(default_factory=dict)
    builder_apt: dict[str, str] = Field(default_factory=dict)
    python_requirements: str
    packages: dict[str, LockedPackage] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_control_characters(cls, data: object) -> object:
        if isinstance(data, dict):
            _walk_strings(data, "")
        return data

    @field_validator("packages", mode="before")
    @classmethod
    def _from_parsed(cls, value: object) -> object:
        """Accept ``parse_locked``'s ``name -> (version, hashes)`` as well as the JSON form."""
        if isinstance(value, dict):
            return {
                name: {"version": v[0], "hashes": list(v[1])} if isinstance(v, tuple) else v
                for name, v in value.items()
            }
        return value

    @field_validator("packages")
    @classmethod
    def _package_names(cls, value: dict[str, LockedPackage]) -> dict[str, LockedPackage]:
        for name in value:
            grammar.check_python_name(name)
        return value

    @field_validator("spec_digest")
    @classmethod
    def _spec_digest(cls, value: str) -> str:
        if not grammar.SHA256_DIGEST_RE.fullmatch(value):
            raise HashProblem(f"{value!r} is not a sha256:<64 hex> digest")
        return value

    @field_validator("apt", "builder_apt")
    @classmethod
    def _apt(cls, value: dict[str, str]) -> dict[str, str]:
        for name, version in value.items():
            grammar.check_debian_name(name)
            grammar.check_debian_version(version)
        return value

    @field_validator("base")
    @classmethod
    def _base(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if key not in _BASE_KEYS:
                raise ValueError(f"unknown base field {key!r} (known: {', '.join(_BASE_KEYS)})")
            ok = {
                "ref": lambda v: _IMAGE_REF.fullmatch(v) is not None,
                "suite": lambda v: SUITE_RE.fullmatch(v) is not None,
                "mirror": lambda v: MIRROR_RE.fullmatch(v) is not None,
                "variant": lambda v: v in ("minbase", "essential", "apt"),
                "image_id": lambda v: grammar.SHA256_DIGEST_RE.fullmatch(v) is not None,
                "rootfs": lambda v: grammar.SHA256_DIGEST_RE.fullmatch(v) is not None,
            }[key](item)
            if not ok:
                raise ValueError(f"base.{key}: {item!r} is not allowed there")
        return value

    @field_validator("python_requirements")
    @classmethod
    def _requirements(cls, value: str) -> str:
        check_requirements_text(value)
        return value

    @model_validator(mode="after")
    def _packages_match_text(self) -> LockFile:
        """The package table must say exactly what the installed text says, hash for hash."""
        parsed = check_requirements_text(self.python_requirements)
        table = {name: (p.version, sorted(p.hashes)) for name, p in self.packages.items()}
        text = {name: (v, sorted(h)) for name, (v, h) in parsed.items()}
        if table != text:
            differing = sorted(n for n in set(table) | set(text) if table.get(n) != text.get(n))
            raise HashProblem(
                "the package table and the requirements text disagree on " + ", ".join(differing[:5])
            )
        return self


def _uv() -> str:
    found = shutil.which("uv")
    if not found:
        raise UsageError("uv is not on PATH", hint="install it with `pip install uv`")
    return found


def normalise_name(name: str) -> str:
    """PEP 503 name: lower case, runs of -, _ and . as one -."""
    return str(canonicalize_name(name))


def lock_requirements(
    requirements: list[str],
    *,
    python: str,
    platform: str = DEFAULT_PLATFORM,
    index_url: str | None = None,
    extra_index_urls: Sequence[str] = (),
) -> str:
    """Resolve ``requirements`` for the image's platform and Python; return hashed requirements text.

    Binary wheels only, every file's sha256 listed. Unreachable indexes raise NetworkError; a
    resolution that fails for any other reason raises LockFailed with uv's message.
    """
    with tempfile.TemporaryDirectory(prefix="envkit-lock-") as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("".join(f"{r}\n" for r in requirements), encoding="utf-8")
        command = [
            _uv(),
            "pip",
            "compile",
            "--generate-hashes",
            "--no-header",
            "--no-annotate",
            "--only-binary",
            ":all:",
            "--python-version",
            python,
            "--python-platform",
            platform,
            "--quiet",
            str(source),
        ]
        if index_url:
            command += ["--index-url", index_url]
        for url in extra_index_urls:
            command += ["--extra-index-url", url]
        env = {**os.environ, "UV_NO_PROGRESS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        message = result.stderr.strip() or result.stdout.strip()
        lowered = message.lower()
        if any(marker in lowered for marker in _NETWORK_MARKERS):
            raise NetworkError(
                f"could not reach the package index while locking: {message.splitlines()[-1]}",
                details=message,
            )
        raise LockFailed(f"uv could not resolve {', '.join(requirements)}", details=message)
    return result.stdout


def parse_locked(text: str) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, [sha256, ...])`` from hashed requirements text (names normalised)."""
    packages: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _REQUIREMENT_LINE.match(line)
        if match:
            current = normalise_name(match["name"])
            packages[current] = (match["version"], [])
        elif not line.startswith("--hash") and not line.startswith("--"):
            current = None
        if current is not None:
            packages[current][1].extend(m["digest"] for m in _HASH.finditer(line))
    return packages


def packages_of(text: str) -> dict[str, LockedPackage]:
    return {name: LockedPackage(version=v, hashes=h) for name, (v, h) in parse_locked(text).items()}


def _error_field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "__root__")


def parse_lock(data: object, source: str) -> LockFile:
    """Validate already-parsed lock data; ``source`` names it in errors.

    Grammar errors are LockError (exit 2); a missing, malformed or inconsistent hash and a file
    that is not a lock at all are IntegrityError (exit 5).
    """
    if not isinstance(data, dict):
        raise IntegrityError(f"{source}: not a valid lock file (not a JSON object)")
    try:
        return LockFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        for error in errors:
            if isinstance((error.get("ctx") or {}).get("error"), HashProblem):
                field = _error_field(tuple(error["loc"]))
                where = f"{source}: {field}" if field else source
                raise IntegrityError(f"{where}: {error['msg'].removeprefix('Value error, ')}") from None
        structural = [e for e in errors if e["type"] != "value_error"]
        first = (structural or errors)[0]
        field = _error_field(tuple(first["loc"]))
        if not structural:
            raise LockError(source, field, str(first["msg"]).removeprefix("Value error, ")) from None
        raise IntegrityError(
            f"{source}: not a valid lock file ({field or 'top level'}: {first['msg']})", details=str(exc)
        ) from None


def read_lock(path: str | Path) -> LockFile:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no lock file", hint="run `envkit lock` for this image") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the lock file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LockError(str(path), "", f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except RecursionError:
        raise IntegrityError(f"{path}: not a valid lock file (nested too deeply)") from None
    except ValueError as exc:
        raise IntegrityError(f"{path}: not a valid lock file: {exc}") from None
    return parse_lock(data, str(path))


def write_lock(path: str | Path, lock: LockFile) -> None:
    """Write atomically: a temporary file beside the target, fsync'd, then renamed over it."""
    write_text(Path(path), lock.model_dump_json(indent=2) + "\n")


def lock_digest(lock: LockFile) -> str:
    """sha256 of the lock's canonical JSON: what image labels record to name the lock built from."""
    return canonical_digest(lock.model_dump(mode="json"))


def is_stale(lock: LockFile, spec_digest: str) -> bool:
    """A lock is stale when its spec changed since it was made or it is of an older schema."""
    return lock.spec_digest != spec_digest or lock.schema_version != LOCK_SCHEMA_VERSION
