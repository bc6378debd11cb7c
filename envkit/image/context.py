"""The build context: a deterministic in-memory tar (sorted entries, fixed owner, mode and mtime)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from envkit.engine.tarstream import tar_bytes
from envkit.errors import UsageError


@dataclass
class BuildContext:
    """Files by their path inside the context; executables keep an executable mode."""

    files: dict[str, bytes] = field(default_factory=dict)
    executable: set[str] = field(default_factory=set)

    def add(self, name: str, data: bytes, *, executable: bool = False) -> None:
        if name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"context path {name!r} must be relative and stay inside the context")
        self.files[name] = data
        if executable:
            self.executable.add(name)

    def add_tree(self, prefix: str, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                rel = path.relative_to(root).as_posix()
                self.add(f"{prefix}/{rel}", path.read_bytes(), executable=os.access(path, os.X_OK))

    def to_tar(self, mtime: int) -> bytes:
        entries = [(name, self.files[name]) for name in sorted(self.files)]
        return tar_bytes(entries, mtime=mtime, modes=dict.fromkeys(self.executable, 0o755))

    def digest(self) -> str:
        sha = hashlib.sha256()
        for name in sorted(self.files):
            sha.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return "sha256:" + sha.hexdigest()


CA_ENV_VARS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "FTP_PROXY", "ALL_PROXY")


def detect_ca_bundle(explicit: str | None, environ: dict[str, str] | None = None) -> Path | None:
    """``--ca-bundle`` wins; otherwise the first of PIP_CERT, SSL_CERT_FILE, REQUESTS_CA_BUNDLE."""
    env = os.environ if environ is None else environ
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UsageError(f"--ca-bundle {explicit}: no such file")
        return path
    for var in CA_ENV_VARS:
        value = env.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


def proxy_build_args(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Proxy variables from the environment, as build args.

    Docker treats these names as predefined build args: they reach RUN steps without an ARG line
    and are kept out of the image's history and config.
    """
    env = os.environ if environ is None else environ
    args: dict[str, str] = {}
    for var in PROXY_VARS:
        for name in (var, var.lower()):
            if env.get(name):
                args[name] = env[name]
    return args
