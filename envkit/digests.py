"""sha256 of files and streams, read in fixed-size blocks (images and bundles run to gigabytes)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

BLOCK = 4 << 20


def sha256_stream(handle: BinaryIO) -> str:
    """Hex sha256 of everything left in ``handle``."""
    digest = hashlib.sha256()
    while block := handle.read(BLOCK):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (callers add ``sha256:`` where their format wants it)."""
    with Path(path).open("rb") as handle:
        return sha256_stream(handle)
