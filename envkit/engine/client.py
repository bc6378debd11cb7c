"""The Docker engine: one way to get a client, and docker errors mapped to envkit errors."""

from __future__ import annotations

import os

import docker
import docker.errors
import requests.exceptions

from envkit.errors import EngineUnreachable

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


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
