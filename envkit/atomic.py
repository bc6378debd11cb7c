"""Write files so that a crash or Ctrl-C leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    with open_atomic(path, mode=mode) as handle:
        handle.write(data)


def write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    write_bytes(path, text.encode("utf-8"), mode=mode)


@contextlib.contextmanager
def open_atomic(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only when the block finishes without an exception.

    For outputs too large to hold in memory (bundles, archives): the data goes to a temporary file
    beside ``path``, is fsynced, then renamed over it; on any error or Ctrl-C it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
