"""Package mirrors: which index a lock, a build or a bundle fetches wheels from.

A mirror only changes where files come from, never which files: every wheel is pinned by sha256 in
the lock and installed with ``--require-hashes``, so a mirror that serves anything else fails the
install. The mirror is therefore no part of the spec's digest, and a URL's credentials (``user:token@``)
stay in the process that fetches: never in a lock, a manifest, a label, a Dockerfile or a layer.

Where the mirror comes from, first match wins: ``--index-url``, ``ENVKIT_INDEX_URL``, the spec's
``index_url``. It stands in for PyPI; when the torch build comes from the PyTorch index, that index
stays first and the mirror serves everything else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from envkit.errors import UsageError

ENV_VAR = "ENVKIT_INDEX_URL"


def check_index_url(url: str, *, source: str, allow_credentials: bool = True) -> str:
    """An http(s) URL of a PEP 503 simple index; credentials only where they are not written down."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source} {redact(url)!r}: an index URL is http(s)://host/path/simple/")
    if (parts.username or parts.password) and not allow_credentials:
        raise UsageError(
            f"{source}: a spec must not hold credentials (it is committed and recorded)",
            hint=f"give the URL with its credentials in {ENV_VAR} or --index-url instead",
        )
    return url.strip()


def redact(url: str) -> str:
    """The URL with any ``user:password@`` replaced by ``***@``: what may be shown or recorded."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Indexes:
    """The indexes to ask, in order; ``primary`` None means PyPI."""

    primary: str | None = None
    extra: tuple[str, ...] = ()

    @property
    def mirrored(self) -> bool:
        return bool(self.extra) or self.primary is not None

    def uv_args(self) -> list[str]:
        args = ["--index-url", self.primary] if self.primary else []
        for url in self.extra:
            args += ["--extra-index-url", url]
        return args

    def pip_args(self) -> list[str]:
        """uv's arguments, plus ``--trusted-host`` for a plain-http mirror (pip refuses it otherwise)."""
        args = self.uv_args()
        for url in ((self.primary,) if self.primary else ()) + self.extra:
            parts = urlsplit(url)
            if parts.scheme == "http" and parts.hostname:
                args += ["--trusted-host", parts.hostname]
        return args

def choose(
    *,
    cli_url: str | None = None,
    spec_url: str | None = None,
    spec_extra: tuple[str, ...] = (),
    torch_index: str | None = None,
    environ: dict[str, str] | None = None,
) -> Indexes:
    """The indexes for one lock, build or bundle (see the module's docstring for the order)."""
    env = os.environ if environ is None else environ
    mirror = None
    if cli_url:
        mirror = check_index_url(cli_url, source="--index-url")
    elif env.get(ENV_VAR):
        mirror = check_index_url(env[ENV_VAR], source=ENV_VAR)
    elif spec_url:
        mirror = spec_url
    extra = tuple(spec_extra)
    if torch_index:
        return Indexes(primary=torch_index, extra=((mirror,) if mirror else ()) + extra)
    return Indexes(primary=mirror, extra=extra)
