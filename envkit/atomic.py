"""Write files so that a crash or Ctrl-C leaves the old file or the new one, never half of one.

Outputs (``-o FILE``) are only ever regular files: an existing device, FIFO, socket or directory
at the target is refused (a rename over ``/dev/null`` as root would replace the device), and a
place that cannot be written is a usage error naming the path, not an internal error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from envkit.errors import UsageError

_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}
# Errors that mean "this place cannot be written": the user's to fix, not a bug.
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
               errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST)


def check_output_path(path: Path) -> None:
    """Refuse an output target that exists and is not a regular file (or a link to one)."""
    for follow in (False, True):
        try:
            info = os.stat(path, follow_symlinks=follow)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None
        kind = stat.S_IFMT(info.st_mode)
        if kind in _KINDS:
            raise UsageError(
                f"{path} is {_KINDS[kind]}, not a regular file; envkit writes outputs only to regular files"
            )


def _unwritable(path: Path, exc: OSError) -> UsageError:
    return UsageError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a place you can write to")


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
    check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in _UNWRITABLE:
            raise _unwritable(path, exc) from None
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        check_output_path(path)  # it may have appeared while we wrote
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                raise _unwritable(path, exc) from None
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def place_file(cached: Path, target: Path) -> None:
    """Put the cached file at ``target``: a hard link when it can be, else a copy; atomically."""
    check_output_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        try:
            os.link(cached, tmp)
        except OSError:
            shutil.copyfile(cached, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
