"""Small tar archives for tests: members in the order given, fixed mode, one mtime."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping


def tar_of(
    members: Mapping[str, bytes | None] | Iterable[tuple[str, bytes | None]], *, mtime: int = 0
) -> bytes:
    """A PAX tar of ``members`` (name -> bytes, or None for a directory): files 0644, directories
    0755. A list may name a member twice, as a hostile archive would."""
    items = members.items() if isinstance(members, Mapping) else members
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()
