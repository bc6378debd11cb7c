"""Remember which sealed image each unsealed build became, per engine.

The same record maps a digest of a build's complete inputs (Dockerfile, context, base image ID) to
the image they produced: every input is pinned, so equal inputs mean the same image, and a rebuild
with nothing changed need not ask the engine to re-hash a 7 GB COPY source to find its cache.


Sealing a multi-GB image takes minutes; a rebuild with nothing changed gives the same unsealed ID
from the engine's cache, so the sealed ID is known already. The record is only a shortcut: it is
used when the sealed image still exists on that engine and carries the same layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import docker
import docker.errors

from envkit.atomic import write_text
from envkit.engine.client import image_exists
from envkit.image.seal_policy import POLICY_VERSION


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "envkit" / "sealed.json"


def _read() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _engine_id(client: docker.DockerClient) -> str:
    return str(client.info().get("ID", "unknown"))


def _key(unsealed_id: str) -> str:
    """Records are per seal policy: a record made under another policy is not used."""
    return f"policy{POLICY_VERSION}:{unsealed_id}"


def lookup(client: docker.DockerClient, unsealed_id: str) -> str | None:
    """The image recorded for ``unsealed_id`` (or for a build-input digest), if it still exists."""
    sealed = _read().get(_engine_id(client), {}).get(_key(unsealed_id))
    if not sealed:
        return None
    return sealed if image_exists(client, sealed) else None


def remember(client: docker.DockerClient, unsealed_id: str, sealed_id: str) -> None:
    data = _read()
    data.setdefault(_engine_id(client), {})[_key(unsealed_id)] = sealed_id
    write_text(cache_path(), json.dumps(data, indent=1, sort_keys=True) + "\n")
