"""The Docker engine: one way to get a client, its few image verbs, and docker errors mapped to
envkit errors. Code above the engine layer inspects, checks and tags images through these."""

from __future__ import annotations

import os
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from envkit.engine.dockerarchive import chain_ids
from envkit.errors import EngineUnreachable, UsageError

START_HINT = (
    "start one with `scripts/engine.sh` (installs docker.io and starts dockerd as root), "
    "or point DOCKER_HOST at a running engine"
)

# Debian 12's engine speaks API 1.41; asking for it explicitly keeps newer SDKs from negotiating
# features the classic builder lacks.
DEFAULT_API_VERSION = "auto"


def get_client(base_url: str | None = None, *, timeout: int = 600) -> docker.DockerClient:
    """Return a client that has answered a ping, or raise EngineUnreachable."""
    url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=url, version=DEFAULT_API_VERSION, timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EngineUnreachable(
            f"no Docker engine answers at {url}: {_short(exc)}", hint=START_HINT
        ) from exc
    return client


def engine_version(client: docker.DockerClient) -> str:
    return str(client.version().get("Version", "unknown"))


def find_image(client: docker.DockerClient, ref: str) -> dict[str, Any] | None:
    """`docker inspect` of an image by ID or tag, or None when the engine has no such image."""
    try:
        return client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None


def inspect_image(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    """`docker inspect` of an image; a missing one is a usage error naming it (exit 2)."""
    attrs = find_image(client, ref)
    if attrs is None:
        raise UsageError(f"image {ref} not found", hint="list images with `docker images`")
    return attrs


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    return find_image(client, ref) is not None


def tag_image(client: docker.DockerClient, image_id: str, ref: str) -> None:
    """Point `ref` at `image_id`, moving it if it named another image (a bare name means :latest)."""
    repo, tag = parse_repository_tag(ref)
    client.api.tag(image_id, repo, tag or "latest", force=True)


def engine_chains(client: docker.DockerClient) -> set[str]:
    """Chain IDs of every layer stack the engine holds (from all images, intermediate ones too)."""
    chains: set[str] = set()
    for item in client.api.images(all=True):
        try:
            layers = (client.api.inspect_image(item["Id"]).get("RootFS") or {}).get("Layers") or []
        except docker.errors.NotFound:
            continue
        chains.update(chain_ids(layers))
    return chains


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
