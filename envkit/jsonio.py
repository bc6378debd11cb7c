"""Canonical JSON: the one byte form that digests, image configs and archive indexes are taken over.

Keys sorted, no spaces, UTF-8 (non-ASCII kept as is, as the Docker engine writes image configs).
For ASCII-only values this is byte for byte what ``json.dumps(..., ensure_ascii=True)`` gives, so
digests recorded before this module existed (spec and lock digests, manifest digests) still match.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(value: Any) -> bytes:
    return canonical_text(value).encode("utf-8")


def canonical_digest(value: Any) -> str:
    """``sha256:<hex>`` of the canonical bytes."""
    return "sha256:" + hashlib.sha256(canonical_bytes(value)).hexdigest()


def pretty_text(value: Any, *, indent: int = 2) -> str:
    """Sorted, indented JSON with a final newline: files meant to be read and diffed by people."""
    return json.dumps(value, sort_keys=True, indent=indent, ensure_ascii=False) + "\n"
