"""Exact Python pins with sha256 hashes (resolved by uv) and the lock file that keeps them.

``images/<name>/<tag>.lock`` is JSON: the spec digest it was made from, the base, the apt package
versions and the hashed requirements text a build installs with ``--require-hashes``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from envkit.errors import IntegrityError, LockFailed, NetworkError, UsageError

LOCK_SCHEMA_VERSION = 1
DEFAULT_PLATFORM = "x86_64-manylinux_2_28"

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


class LockedPackage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    hashes: list[str]


class LockFile(BaseModel):
    """The lock of one catalog image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = LOCK_SCHEMA_VERSION
    spec_digest: str
    source_date_epoch: int
    base: dict[str, str] = Field(default_factory=dict)
    apt: dict[str, str] = Field(default_factory=dict)
    builder_apt: dict[str, str] = Field(default_factory=dict)
    python_requirements: str
    packages: dict[str, LockedPackage] = Field(default_factory=dict)

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


def _uv() -> str:
    found = shutil.which("uv")
    if not found:
        raise UsageError("uv is not on PATH", hint="install it with `pip install uv`")
    return found


def normalise_name(name: str) -> str:
    """PEP 503 name: lower case, runs of -, _ and . as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_requirements(
    requirements: list[str],
    *,
    python: str,
    platform: str = DEFAULT_PLATFORM,
    index_url: str | None = None,
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


def read_lock(path: str | Path) -> LockFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no lock file", hint="run `envkit lock` for this image") from None
    try:
        return LockFile.model_validate_json(text)
    except ValueError as exc:
        raise IntegrityError(f"{path}: not a valid lock file", details=str(exc)) from None


def write_lock(path: str | Path, lock: LockFile) -> None:
    """Write atomically: a temporary file beside the target, fsync'd, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = lock.model_dump_json(indent=2) + "\n"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def lock_digest(lock: LockFile) -> str:
    """sha256 of the lock's canonical JSON: what image labels record to name the lock built from."""
    canonical = json.dumps(lock.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_stale(lock: LockFile, spec_digest: str) -> bool:
    """A lock is stale when its spec changed since it was made or it is of an older schema."""
    return lock.spec_digest != spec_digest or lock.schema_version != LOCK_SCHEMA_VERSION
