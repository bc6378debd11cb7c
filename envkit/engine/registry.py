"""Registries through the engine: push an image, pull one by tag or digest, and remember where
images were pushed so that a manifest can name them.

The engine does the transfer and checks every blob against its digest; envkit adds the one check a
registry cannot make: that what a digest names is the image a manifest describes (its ID), before
any tag is moved. Credentials come from the user's Docker config (the SDK reads it) or are passed
in as a ``Credentials`` value; they travel only in the engine's auth header, never in argv, logs,
manifests or layers.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from envkit.atomic import write_text
from envkit.engine.client import find_image, inspect_image, tag_image
from envkit.errors import EnvkitError, IntegrityError, NetworkError, RegistryError, UsageError
from envkit.state import state_root

# The reference grammar of the distribution project (docker/distribution reference/regexp.go),
# lower-case repository components, one optional registry host with port.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]{{1,5}})?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"

LOCATION_RE = re.compile(rf"{_NAME}@{_DIGEST}")
_REFERENCE_RE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")
_MAX_REFERENCE = 255 + 1 + 128 + 1 + 71


@dataclass(frozen=True)
class Reference:
    """``name[:tag][@digest]``; ``name`` may start with a registry host (``host:port/``)."""

    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def registry(self) -> str:
        first, _, rest = self.name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"

    @property
    def location(self) -> str:
        """``name@digest``: the one form a manifest records."""
        assert self.digest is not None
        return f"{self.name}@{self.digest}"

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str, *, what: str = "reference") -> Reference:
    """A registry reference, strictly; anything else is a usage error naming the form expected."""
    match = _REFERENCE_RE.fullmatch(text) if len(text) <= _MAX_REFERENCE else None
    if match is None or len(match["name"]) > 255 or not _names_ok(match["name"]):
        raise UsageError(
            f"{what} {text!r} is not a registry reference",
            hint="expected REGISTRY/REPO[:TAG] or REGISTRY/REPO@sha256:<64 hex>, lower-case repository",
        )
    return Reference(match["name"], match["tag"], match["digest"])


def _names_ok(name: str) -> bool:
    """Upper case is allowed in a registry host only, and a first part is a host only when it has a
    dot or a port or is localhost (docker's rule)."""
    first, _, rest = name.partition("/")
    host = bool(rest) and ("." in first or ":" in first or first == "localhost")
    return host or first == first.lower()


def is_location(text: str) -> bool:
    """Whether ``text`` is a ``repo@sha256:…`` location as a manifest may record it."""
    if len(text) > _MAX_REFERENCE or LOCATION_RE.fullmatch(text) is None or len(text.partition("@")[0]) > 255:
        return False
    return _names_ok(text.partition("@")[0])


@dataclass(frozen=True)
class Credentials:
    """A registry user and password given on the command line's stdin; never printed."""

    username: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def _auth(credentials: Credentials | None) -> dict[str, str] | None:
    # None lets the SDK send what the user's Docker config (~/.docker/config.json) holds.
    return credentials.auth_config() if credentials is not None else None


# --- what went wrong, in words a user can act on ------------------------------------------------

_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "network is unreachable",
                "no route to host", "tls handshake timeout", "connection reset", "context deadline exceeded",
                "server misbehaving", "eof")
_AUTH = ("unauthorized", "authentication required", "no basic auth credentials",
         "incorrect username or password", "invalid username/password")
_DENIED = ("denied", "forbidden")
_UNKNOWN = ("manifest unknown", "name unknown", "not found", "does not exist", "blob unknown")
_INTEGRITY = ("verification failed", "digest did not match", "digest mismatch", "invalid checksum",
              "unexpected blob size", "filesystem layer verification")


def registry_error(message: str, ref: Reference) -> EnvkitError:
    """The envkit error for a message the engine relayed from a registry (push or pull)."""
    text = message.strip()
    low = text.lower()
    host = ref.registry
    if any(word in low for word in _INTEGRITY):
        return IntegrityError(
            f"{ref}: the registry served content that does not match its digest: {text}",
            hint="the registry's copy is damaged or was tampered with; push the image again from a good copy",
        )
    if "x509" in low or "certificate" in low:
        return RegistryError(
            f"{host}: the engine does not trust the registry's TLS certificate: {text}",
            hint=f"copy the CA that signed it to /etc/docker/certs.d/{host}/ca.crt on the engine's host "
            "(read on every request, no restart), or add it to the host's trust store and restart dockerd",
        )
    if "http response to https client" in low:
        return RegistryError(
            f"{host} speaks plain HTTP: {text}",
            hint="serve it over TLS, or list it under insecure-registries in /etc/docker/daemon.json "
            "(127.0.0.0/8 is allowed by default)",
        )
    if any(word in low for word in _AUTH):
        return RegistryError(
            f"{host} refused the credentials for {ref.name}: {text}",
            hint=f"log in with `docker login {host}`, or pass --username and the password on stdin "
            "with --password-stdin",
        )
    if any(word in low for word in _DENIED):
        return RegistryError(
            f"{host} refused access to repository {ref.name}: {text}",
            hint="check the repository name and that this user may push or pull it",
        )
    if any(word in low for word in _UNKNOWN):
        return RegistryError(f"{host} has no {ref}: {text}", hint="check the name, tag or digest")
    if any(word in low for word in _UNREACHABLE) or "dial tcp" in low:
        return NetworkError(
            f"registry {host} unreachable: {text}",
            hint="check the address and port, and that the engine's host can reach the registry",
        )
    return RegistryError(f"{host}: {text}")


def _stream(
    calls: Callable[[], Iterable[dict[str, Any]]], ref: Reference
) -> Iterator[dict[str, Any]]:
    """The engine's JSON progress messages; an error message or an API error becomes an envkit error."""
    try:
        for message in calls():
            if "error" in message or "errorDetail" in message:
                detail = message.get("errorDetail") or {}
                raise registry_error(str(detail.get("message") or message.get("error") or ""), ref)
            yield message
    except docker.errors.APIError as exc:
        raise registry_error(str(exc.explanation or exc), ref) from None


def _every(seconds: float, say: Callable[[str], None]) -> Callable[[str], None]:
    """``say``, passing on at most one message per ``seconds``: the engine sends one per chunk."""
    last = [float("-inf")]

    def throttled(message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            say(message)

    return throttled


# --- push ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    image_id: str
    location: str  # repo@sha256:… of the pushed manifest
    reference: str  # what was pushed, repo:tag
    digest: str
    layers_pushed: int
    layers_present: int  # layers the registry already had (not sent again)
    bytes_pushed: int  # layer bytes the engine streamed for the layers it sent (before compression)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "location": self.location,
            "reference": self.reference,
            "digest": self.digest,
            "layers_pushed": self.layers_pushed,
            "layers_present": self.layers_present,
            "bytes_pushed": self.bytes_pushed,
            "seconds": round(self.seconds, 2),
        }


def push_image(
    client: docker.DockerClient,
    image: str,
    target: str,
    *,
    credentials: Credentials | None = None,
    progress: Callable[[str], None] | None = None,
    remember: bool = True,
) -> PushResult:
    """Push ``image`` (ID or tag) as ``target`` (``REGISTRY/REPO[:TAG]``) and return its digest.

    The engine pushes a local name, so ``target`` is tagged locally for the push; afterwards, done,
    failed or interrupted, that tag is put back as it was (removed, or pointed at its previous
    image), so a push adds no tag that a later snapshot would record.
    """
    say = progress or (lambda _message: None)
    ref = parse_reference(target, what="push target")
    if ref.digest is not None:
        raise UsageError(f"push target {target} names a digest; give REGISTRY/REPO[:TAG]",
                         hint="the registry computes the digest of what is pushed")
    ref = Reference(ref.name, ref.tag or "latest")
    attrs = inspect_image(client, image)
    image_id = attrs["Id"]
    local = f"{ref.name}:{ref.tag}"
    previous = find_image(client, local)
    previous_id = previous["Id"] if previous else None
    if previous_id != image_id:
        tag_image(client, image_id, local)
    started = time.monotonic()
    throttled = _every(2.0, say)
    try:
        pushed: set[str] = set()
        present: set[str] = set()
        sent: dict[str, int] = {}
        digest: str | None = None
        say(f"pushing {image} to {local}")
        messages = _stream(lambda: client.api.push(ref.name, tag=ref.tag, stream=True, decode=True,
                                                   auth_config=_auth(credentials)), ref)
        for message in messages:
            status = str(message.get("status") or "")
            layer = str(message.get("id") or "")
            if status == "Pushing":
                current = int((message.get("progressDetail") or {}).get("current") or 0)
                sent[layer] = max(sent.get(layer, 0), current)
                throttled(f"{layer}: pushing, {current / 1e6:.0f} MB")
            elif status == "Pushed":
                pushed.add(layer)
            elif status == "Layer already exists" or status.startswith("Mounted from"):
                present.add(layer)
            aux = message.get("aux") or {}
            if aux.get("Digest"):
                digest = str(aux["Digest"])
        if digest is None or not re.fullmatch(_DIGEST, digest):
            raise RegistryError(f"the push of {local} ended without a digest from the registry")
    finally:
        _put_back(client, local, image_id, previous_id)
    result = PushResult(
        image_id=image_id, location=f"{ref.name}@{digest}", reference=local, digest=digest,
        layers_pushed=len(pushed), layers_present=len(present),
        bytes_pushed=sum(sent.get(layer, 0) for layer in pushed), seconds=time.monotonic() - started,
    )
    if remember:
        remember_location(image_id, result.location)
    return result


def _put_back(client: docker.DockerClient, local: str, image_id: str, previous_id: str | None) -> None:
    """Undo the local tag a push made, without ever deleting an image."""
    try:
        if previous_id is not None:
            if previous_id != image_id:
                tag_image(client, previous_id, local)
            return
        tags = (find_image(client, image_id) or {}).get("RepoTags") or []
        if len(tags) > 1:  # removing the last tag would remove the image itself
            client.api.remove_image(local, noprune=True)
    except docker.errors.APIError:
        pass


# --- pull ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullResult:
    image_id: str
    reference: str
    location: str | None  # repo@sha256:… when pulled by digest
    tag: str | None  # the local tag moved to the image, if any
    bytes_downloaded: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "reference": self.reference,
            "location": self.location,
            "tag": self.tag,
            "bytes_downloaded": self.bytes_downloaded,
            "seconds": round(self.seconds, 2),
        }


def pull_image(
    client: docker.DockerClient,
    reference: str,
    *,
    credentials: Credentials | None = None,
    expected_id: str | None = None,
    tag: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> PullResult:
    """Pull ``reference`` (by tag or by digest); with ``expected_id``, prove the image is that one.

    By digest the engine leaves the image untagged; ``tag`` is moved to it only after the check,
    so a refused, mismatched or interrupted pull tags nothing. A mismatched image that was not on
    the engine before is removed again. By tag, the engine itself moves the tag once the pull is
    complete.
    """
    say = progress or (lambda _message: None)
    ref = parse_reference(reference)
    if expected_id is not None and ref.digest is None:
        raise UsageError(f"{reference}: proving an image ID needs a pull by digest (repo@sha256:…)")
    started = time.monotonic()
    pulled_ref = str(ref) if ref.digest else f"{ref.name}:{ref.tag or 'latest'}"
    before = find_image(client, ref.location) if ref.digest else None
    downloaded: dict[str, int] = {}
    throttled = _every(2.0, say)
    say(f"pulling {pulled_ref}")
    remote_tag = ref.digest or ref.tag or "latest"
    for message in _stream(lambda: client.api.pull(ref.name, tag=remote_tag, stream=True, decode=True,
                                                   auth_config=_auth(credentials)), ref):
        status = str(message.get("status") or "")
        if status == "Downloading":
            detail = message.get("progressDetail") or {}
            layer = str(message.get("id") or "")
            downloaded[layer] = max(downloaded.get(layer, 0), int(detail.get("total") or 0))
            throttled(f"{layer}: downloading, {int(detail.get('current') or 0) / 1e6:.0f} MB")
        elif status.startswith(("Extracting", "Verifying")):
            throttled(f"{message.get('id', '')}: {status.lower()}")
    attrs = find_image(client, ref.location if ref.digest else pulled_ref)
    if attrs is None:
        raise RegistryError(f"the engine reported {pulled_ref} pulled but does not hold it")
    image_id = attrs["Id"]
    if expected_id is not None and image_id != expected_id:
        if before is None:
            try:
                client.api.remove_image(image_id, noprune=False)
            except docker.errors.APIError:
                pass
        raise IntegrityError(
            f"{ref.location} is image {image_id}, not the manifest's {expected_id}; "
            f"{tag or 'no tag'} was not moved and the pulled image was removed",
            hint="a digest names exactly one image, and this one is not the manifest's: the manifest "
            "names the wrong location, or the image pushed there was not the one snapshotted",
        )
    if tag is not None:
        tag_image(client, image_id, tag)
    if ref.digest:
        remember_location(image_id, ref.location)
    return PullResult(
        image_id=image_id, reference=pulled_ref, location=ref.location if ref.digest else None,
        tag=tag if tag is not None else (None if ref.digest else pulled_ref),
        bytes_downloaded=sum(downloaded.values()), seconds=time.monotonic() - started,
    )


# --- where images were pushed -------------------------------------------------------------------


def locations_file() -> Path:
    return state_root() / "registry" / "locations.json"


def _read_book(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        return {}
    book: dict[str, list[str]] = {}
    for image_id, locations in data["images"].items():
        if isinstance(image_id, str) and re.fullmatch(_DIGEST, image_id) and isinstance(locations, list):
            book[image_id] = sorted({loc for loc in locations if isinstance(loc, str) and is_location(loc)})
    return book


def remember_location(image_id: str, location: str) -> None:
    """Record that ``location`` holds ``image_id`` (atomically; a damaged file starts afresh)."""
    if not is_location(location):
        raise UsageError(f"{location!r} is not a repo@sha256:… location")
    path = locations_file()
    book = _read_book(path)
    book[image_id] = sorted({*book.get(image_id, []), location})
    write_text(path, json.dumps({"images": dict(sorted(book.items()))}, indent=2, sort_keys=True) + "\n")


def known_locations(image_id: str) -> list[str]:
    """Every location this host pushed (or pulled by digest) ``image_id`` to or from, sorted."""
    return list(_read_book(locations_file()).get(image_id, []))
