"""Restore by pulling: fetch a manifest's image from the registry locations it names.

Each location is pulled by digest and the image ID checked against the manifest before any tag
moves. A location that does not answer (unreachable, refused, unknown) is noted and the next one
tried; an image that is not the manifest's, or content that fails the engine's digest checks, stops
the restore (exit 5): a registry serving the wrong bytes is reported, never rebuilt around.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker

from envkit.engine.registry import pull_image
from envkit.errors import NetworkError, UsageError
from envkit.record.manifest import Manifest


@dataclass(frozen=True)
class Attempt:
    location: str
    reason: str  # why it did not answer


@dataclass(frozen=True)
class FetchResult:
    """What restore reports when the image came from a registry: no build step ran."""

    image_id: str
    tag: str | None
    location: str
    bytes_downloaded: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "tag": self.tag,
            "fetched_from": self.location,
            "bytes_downloaded": self.bytes_downloaded,
            "durations": {"pull": round(self.seconds, 2)},
            "built": False,
        }


def fetch_manifest_image(
    client: docker.DockerClient,
    manifest: Manifest,
    *,
    tag: str | None,
    say: Callable[[str], None] | None = None,
) -> tuple[FetchResult | None, list[Attempt]]:
    """Pull the manifest's image from the first of its locations that answers, and tag it.

    Returns the result (None when no location answered) and the locations that did not answer,
    with why. Raises IntegrityError (exit 5) for an image that is not the manifest's.
    """
    target = tag  # chosen by the caller from --tag or the spec, never from the manifest's tags
    attempts: list[Attempt] = []
    for location in manifest.image.locations:
        started = time.monotonic()
        if say is not None:
            say(f"pulling {location}")
        try:
            pulled = pull_image(client, location, expected_id=manifest.image.id, tag=target, progress=say)
        except NetworkError as exc:  # unreachable, bad credentials, TLS, unknown manifest
            attempts.append(Attempt(location, exc.message))
            continue
        return FetchResult(
            image_id=pulled.image_id, tag=target, location=location,
            bytes_downloaded=pulled.bytes_downloaded, seconds=time.monotonic() - started,
        ), attempts
    return None, attempts


def registry_only_failure(manifest: Manifest, attempts: list[Attempt]) -> Exception:
    """The error for `restore --from-registry` when no location gave the image."""
    if not manifest.image.locations:
        return UsageError(
            "the manifest names no registry location, and --from-registry never rebuilds",
            hint="push the image (`envkit push`) and snapshot it again, or drop --from-registry",
        )
    tried = "; ".join(f"{a.location}: {a.reason}" for a in attempts)
    return NetworkError(f"no registry location gave the manifest's image (tried {tried})",
                        hint="drop --from-registry to rebuild instead")
