"""The Docker engine: one way to get a client, its few image verbs, and docker errors mapped to
envkit errors. Code above the engine layer inspects, checks and tags images through these.

An engine is this host's (``DOCKER_HOST``, else the default socket) or one named by ``--host``:
``ssh://[user@]host[:port]``, ``unix:///path.sock``, ``tcp://host[:port]`` or a Docker context name
(``$DOCKER_CONFIG/contexts/meta/<sha256 of the name>/meta.json``). ``parse_host`` checks the form
before anything connects. SSH goes through the SDK's paramiko transport: errors come back as
exceptions with their reason (unknown host key, key refused, connection refused) instead of an
``ssh`` child's stderr, host keys are checked strictly against ``~/.ssh/known_hosts``, and one SSH
connection carries every request to the engine. From ``~/.ssh/config`` it takes HostName, Port,
User, IdentityFile and ProxyCommand; the remote user needs the ``docker`` CLI
(``docker system dial-stdio``) and access to the engine's socket.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
import requests.exceptions
from docker.utils import parse_repository_tag

from envkit.engine.dockerarchive import chain_ids
from envkit.errors import EngineUnreachable, MissingDependency, UsageError

START_HINT = (
    "start one with `scripts/engine.sh` (installs docker.io and starts dockerd as root), "
    "or point DOCKER_HOST at a running engine"
)

# Debian 12's engine speaks API 1.41; asking for it explicitly keeps newer SDKs from negotiating
# features the classic builder lacks.
DEFAULT_API_VERSION = "auto"


DEFAULT_HOST = "unix:///var/run/docker.sock"
# Over SSH every HTTP connection is an SSH session, and the SDK keeps a pool of connections per
# request URL (9 pools by default). sshd allows 10 sessions per connection (MaxSessions): a verify
# run's requests would pass that and be refused ("no more sessions"). A few small pools stay under.
SSH_POOLS = 3
SSH_POOL_SIZE = 2
SSH_HINT = (
    "check that `ssh [user@]host docker version` works for this user: the host key in "
    "~/.ssh/known_hosts, a key the host accepts (agent, ~/.ssh/config IdentityFile or ~/.ssh/id_*), "
    "and the docker CLI on the host"
)


def get_client(
    base_url: str | None = None, *, timeout: int = 600, tls: EngineTls | None = None
) -> docker.DockerClient:
    """Return a client that has answered a ping, or raise EngineUnreachable."""
    url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    pools: dict[str, int] = {}
    if url.startswith("ssh://"):
        try:
            import paramiko  # noqa: F401, PLC0415 - only SSH engines need it
        except ImportError as exc:
            raise MissingDependency(
                f"{url}: reaching an engine over SSH needs paramiko", hint="pip install 'docker[ssh]'"
            ) from exc
        pools = {"num_pools": SSH_POOLS, "max_pool_size": SSH_POOL_SIZE}
    try:
        client = docker.DockerClient(
            base_url=url, version=DEFAULT_API_VERSION, timeout=timeout,
            tls=tls.config() if tls is not None else False, **pools,
        )
        client.ping()
    except _connection_errors() as exc:
        hint = SSH_HINT if url.startswith("ssh://") else START_HINT
        raise EngineUnreachable(f"no Docker engine answers at {url}: {_short(exc)}", hint=hint) from exc
    return client


def _connection_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (
        docker.errors.DockerException, requests.exceptions.RequestException, OSError, EOFError,
    )
    try:
        import paramiko  # noqa: PLC0415
    except ImportError:
        return errors
    return (*errors, paramiko.SSHException)


def connection_lost(exc: BaseException, url: str) -> EngineUnreachable | None:
    """The envkit error for a connection to the engine at ``url`` that broke while in use (the
    network, sshd refusing another session, the engine going away); None for anything else."""
    lost = (requests.exceptions.ConnectionError, ConnectionError, EOFError)
    try:
        import paramiko  # noqa: PLC0415
    except ImportError:
        pass
    else:
        lost = (*lost, paramiko.SSHException)
    if not isinstance(exc, lost):
        return None
    hint = SSH_HINT if url.startswith("ssh://") else START_HINT
    return EngineUnreachable(f"lost the engine at {url}: {_short(exc) or type(exc).__name__}", hint=hint)


# --------------------------------------------------------------------------- engines by --host

HOST_SCHEMES = ("ssh", "unix", "tcp")
# Docker's own rule for context names (cli/command/context.go).
CONTEXT_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.+-]*")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_PATH_RE = re.compile(r"/[A-Za-z0-9._/@+-]+")
HOST_FORMS = "ssh://[user@]host[:port], unix:///path/to.sock, tcp://host[:port] or a Docker context name"


@dataclass(frozen=True)
class EngineTls:
    """A context's TLS material (``contexts/tls/<id>/docker/{ca,cert,key}.pem``)."""

    ca: str | None
    cert: str | None
    key: str | None
    verify: bool

    def config(self) -> docker.tls.TLSConfig:
        client_cert = (self.cert, self.key) if self.cert and self.key else None
        return docker.tls.TLSConfig(client_cert=client_cert, ca_cert=self.ca, verify=self.verify)


@dataclass(frozen=True)
class EngineHost:
    """One engine named on the command line: as given (``name``) and the URL the SDK dials."""

    name: str
    url: str
    context: str | None = None
    tls: EngineTls | None = None

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0]

    @property
    def on_this_machine(self) -> bool:
        """A unix socket is on this machine, so is the engine's disk."""
        return self.scheme == "unix"


def docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _check_url(url: str, given: str) -> str:
    """``url`` if it is one of the forms, else a usage error naming the form expected."""

    def bad(problem: str) -> UsageError:
        return UsageError(f"--host {given!r}: {problem}", hint=f"expected {HOST_FORMS}")

    if any(not ch.isprintable() or ch.isspace() for ch in url):
        raise bad("contains spaces or control characters")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in HOST_SCHEMES:
        raise bad(f"unknown scheme {scheme + ':' if sep else '(none)'}")
    if scheme == "unix":
        if not _PATH_RE.fullmatch(rest) or "/../" in rest + "/":
            raise bad("expected unix:// and an absolute socket path")
        return url
    if "/" in rest.rstrip("/") or "?" in rest or "#" in rest:
        raise bad("a host takes no path, query or fragment")
    rest = rest.rstrip("/")
    user, at, hostport = rest.rpartition("@")
    if at and scheme == "tcp":
        raise bad("tcp:// takes no user")
    if at and not _USER_RE.fullmatch(user):
        raise bad(f"user {user!r} is not a user name (a password never goes in --host)")
    host, port = hostport, ""
    if hostport.startswith("["):
        host, close, tail = hostport[1:].partition("]")
        if not close or (tail and not tail.startswith(":")):
            raise bad("an IPv6 address is written [addr] or [addr]:port")
        port = tail[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        if hostport.count(":") > 1:
            raise bad("write an IPv6 address in brackets: [addr]:port")
        host, _, port = hostport.partition(":")
        if not _HOSTNAME_RE.fullmatch(host):
            raise bad(f"{host!r} is not a host name or address")
    if hostport.endswith(":") or (port and (not port.isdigit() or not 0 < int(port) < 65536)):
        raise bad(f"port {port!r} is not a number from 1 to 65535")
    return f"{scheme}://{rest}"


def context_endpoint(name: str, config_dir: Path | None = None) -> EngineHost:
    """The engine a Docker context names, from its meta.json (and TLS material, when it has some)."""
    if name == "default":
        return EngineHost(name, _check_url(os.environ.get("DOCKER_HOST") or DEFAULT_HOST, name), "default")
    base = config_dir or docker_config_dir()
    context_id = hashlib.sha256(name.encode()).hexdigest()
    meta_path = base / "contexts" / "meta" / context_id / "meta.json"
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"--host {name!r}: no Docker context of that name (looked for {meta_path})",
            hint=f"list contexts with `docker context ls`, or give {HOST_FORMS}",
        ) from None
    except OSError as exc:
        raise UsageError(f"--host {name!r}: cannot read {meta_path}: {exc.strerror}") from None
    try:
        meta = json.loads(raw[: 1 << 20].decode("utf-8")) if len(raw) <= 1 << 20 else None
        endpoint = meta["Endpoints"]["docker"] if isinstance(meta, dict) else None
        url = endpoint["Host"] if isinstance(endpoint, dict) else None
    except (ValueError, KeyError, TypeError):
        url = endpoint = None
    if not isinstance(url, str) or not isinstance(endpoint, dict):
        raise UsageError(f"--host {name!r}: {meta_path} names no docker endpoint (Endpoints.docker.Host)")
    url = _check_url(url, f"{name} (context endpoint {url[:200]})")
    tls_dir = base / "contexts" / "tls" / context_id / "docker"
    tls = None
    if url.startswith("tcp://") and tls_dir.is_dir():
        def pem(file: str) -> str | None:
            return str(tls_dir / file) if (tls_dir / file).is_file() else None

        tls = EngineTls(pem("ca.pem"), pem("cert.pem"), pem("key.pem"), not endpoint.get("SkipTLSVerify"))
    return EngineHost(name, url, name, tls)


def parse_host(text: str, config_dir: Path | None = None) -> EngineHost:
    """One --host value: a URL of the forms above, or a Docker context name."""
    if "://" in text:
        return EngineHost(text, _check_url(text, text))
    if CONTEXT_NAME_RE.fullmatch(text):
        return context_endpoint(text, config_dir)
    raise UsageError(
        f"--host {text!r} is neither an engine URL nor a context name", hint=f"expected {HOST_FORMS}"
    )


def parse_hosts(texts: list[str] | tuple[str, ...], config_dir: Path | None = None) -> list[EngineHost]:
    """Every --host, checked before anything connects; the same engine twice is a usage error."""
    hosts = [parse_host(text, config_dir) for text in texts]
    seen: dict[str, str] = {}
    for host in hosts:
        if host.url in seen:
            raise UsageError(f"--host {host.name!r} names the same engine as {seen[host.url]!r} ({host.url})")
        seen[host.url] = host.name
    return hosts


def host_client(host: EngineHost, *, timeout: int = 600) -> docker.DockerClient:
    """A client of the engine ``host`` names that has answered a ping, or EngineUnreachable."""
    return get_client(host.url, timeout=timeout, tls=host.tls)


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
