"""Write and load docker-archive tarballs whose image ID is fixed by their content.

``docker import`` stamps the current time into the image config, so two imports of one rootfs
get two IDs. Writing the config ourselves (fixed ``created``, canonical JSON) and loading the
archive gives an ID that depends only on the layers and the config we chose.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker

from envkit import digests
from envkit.jsonio import canonical_bytes

CHUNK = 4 * 1024 * 1024


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(value: Any) -> bytes:
    return canonical_bytes(value)


def sha256_file(path: Path) -> str:
    return "sha256:" + digests.sha256_file(path)


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def write_archive(
    out: Path,
    config: dict[str, Any],
    layers: Iterable[tuple[str, Path]],
    repo_tags: list[str],
    *,
    mtime: int = 0,
) -> str:
    """Write a docker-archive to ``out``; ``layers`` are (diff_id, uncompressed layer tar) pairs.

    Returns the image ID (sha256 of the canonical config).
    """
    config_bytes = canonical_json(config)
    image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    config_name = image_id.split(":", 1)[1] + ".json"
    layer_names: list[str] = []
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for diff_id, path in layers:
            name = diff_id.split(":", 1)[1] + "/layer.tar"
            info = archive.gettarinfo(str(path), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            with path.open("rb") as handle:
                archive.addfile(info, handle)
            layer_names.append(name)
        _add_bytes(archive, config_name, config_bytes, mtime)
        manifest = [{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}]
        _add_bytes(archive, "manifest.json", canonical_json(manifest), mtime)
    return image_id


def load_archive(client: docker.DockerClient, path: Path) -> None:
    with path.open("rb") as handle:
        client.api.load_image(handle, quiet=True)


def load_image(
    client: docker.DockerClient,
    config: dict[str, Any],
    layers: list[tuple[str, Path]],
    repo_tags: list[str],
    *,
    workdir: Path | None = None,
) -> str:
    """Write the archive in a temporary directory, load it, and return the image ID."""
    with tempfile.TemporaryDirectory(prefix="envkit-archive-", dir=workdir) as tmp:
        archive = Path(tmp) / "image.tar"
        image_id = write_archive(archive, config, layers, repo_tags)
        load_archive(client, archive)
    return image_id
