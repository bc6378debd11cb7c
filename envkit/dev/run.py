"""Dev containers: JupyterLab, TensorBoard and SSH from a dev image, safe by default.

``plan_run`` checks every input (image, mounts, ports, GPUs, keys) before anything is created and
says what it would do; ``launch`` creates the container, writes the secrets into it, starts it and
waits until each service answers from the host. Secrets never travel through the engine's
configuration: the Jupyter token and authorized_keys are copied into the created container
(``put_archive``, mode 0600, owned by the image's user) before it starts, so they appear in no
``docker inspect``, label, history entry or image layer. A host copy of the token is kept in a 0600
file under the user's state directory.

Ports are published on 127.0.0.1 unless the caller binds elsewhere. Containers envkit starts carry
the label ``io.envkit.managed=true``; ``list_managed`` and ``stop`` only ever touch those.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import re
import secrets
import select
import shutil
import signal
import socket
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from envkit import labels as label_keys
from envkit.engine.tarstream import tar_bytes
from envkit.errors import EngineRefused, EnvkitError, GpuHostNotReady, UsageError, VerificationFailed
from envkit.events import Event, Show
from envkit.state import state_root

MANAGED_LABEL = label_keys.MANAGED
SERVICES_LABEL = label_keys.SERVICES
IMAGE_LABEL = label_keys.IMAGE
STATE_LABEL = label_keys.STATE_DIR

SERVICES = ("jupyter", "tensorboard", "ssh")
# Where each service listens inside the container (fixed by the image's entrypoint and configs).
CONTAINER_PORTS = {"jupyter": 8888, "tensorboard": 6006, "ssh": 2222}
DEFAULT_HOST_PORTS = dict(CONTAINER_PORTS)
SECRETS_DIR = "/run/envkit"
DEFAULT_WORKDIR = "/workspace"
LOOPBACK = "127.0.0.1"
DEFAULT_SHM = 8 * 1024**3
IPC_MODES = ("host", "private", "shareable", "none")
ULIMIT_NAMES = (
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
    "rtprio", "rttime", "sigpending", "stack",
)
MIN_TOKEN_LENGTH = 32

# Hashes made by jupyter_server.auth.passwd(): argon2 (the default) or salted sha1.
_PASSWORD_HASH_RE = re.compile(
    r"^(argon2:\$argon2(id|i|d)\$[A-Za-z0-9$=,+/.]+|sha1:[0-9a-f]+:[0-9a-f]{40})\Z"
)
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
_PORT_TAKEN_RES = (
    re.compile(r"Bind for [^ ]*:(\d+) failed: port is already allocated"),
    re.compile(r"listen tcp[46]? [^ ]*:(\d+): bind: address already in use"),
)
_GPU_DRIVER_MISSING = 'could not select device driver ""'
_GPU_REQUIREMENT = "nvidia-container-cli: requirement error"


class PortInUse(UsageError):
    """A host port the caller asked for is already taken."""

    label = "port in use"


class ServiceNotReady(VerificationFailed):
    """A service did not answer in time, or the container stopped before it did."""

    label = "service not ready"


@dataclass(frozen=True)
class Mount:
    source: str  # an absolute host path, or a named volume
    target: str
    read_only: bool = False
    is_path: bool = True


@dataclass(frozen=True)
class Endpoint:
    service: str
    host: str
    port: int
    url: str
    # Only Jupyter's: the URL with the token, for the person who started the container.
    login_url: str | None = None


@dataclass
class RunPlan:
    image: str
    image_id: str
    name: str
    uid: int
    services: tuple[str, ...]
    host_ports: dict[str, int]
    bind: str
    mounts: tuple[Mount, ...] = ()
    workdir: str = DEFAULT_WORKDIR
    command: tuple[str, ...] = ()
    gpus: docker.types.DeviceRequest | None = None
    shm_size: int = DEFAULT_SHM
    ipc_mode: str | None = None
    ulimits: tuple[docker.types.Ulimit, ...] = ()
    offline: bool = False
    interactive: bool = False
    tty: bool = False
    environment: dict[str, str] = field(default_factory=dict)
    authorized_keys: bytes | None = None
    jupyter_password_hash: str | None = None
    tensorboard_logdir: str | None = None
    detach: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def probe_host(self) -> str:
        """Where the host reaches a published port: the bind address, or loopback for a wildcard."""
        return LOOPBACK if self.bind in ("0.0.0.0", "::") else self.bind


@dataclass
class RunResult:
    container_id: str
    name: str
    endpoints: list[Endpoint]
    token_file: Path | None = None
    elapsed: float = 0.0
    user: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "container_id": self.container_id,
            "name": self.name,
            "token_file": str(self.token_file) if self.token_file else None,
            "services": {
                e.service: {"host": e.host, "port": e.port, "url": e.url, "login_url": e.login_url}
                for e in self.endpoints
            },
            "ready_after_s": round(self.elapsed, 2),
            "user": self.user,
        }


@dataclass(frozen=True)
class ManagedContainer:
    name: str
    id: str
    image: str
    status: str
    health: str
    services: tuple[str, ...]
    ports: dict[str, str]  # "8888/tcp" -> "127.0.0.1:8888"


# --- checking inputs -------------------------------------------------------------------------------


def parse_volume(text: str, *, cwd: Path | None = None) -> Mount:
    """``HOST:CONTAINER[:ro|rw]``. A HOST that looks like a path must exist (the engine would
    otherwise create it as root); anything else is a named volume."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"-v {text!r}: expected HOST:CONTAINER or HOST:CONTAINER:ro")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UsageError(f"-v {text!r}: the mode must be ro or rw, not {mode!r}")
    if not target.startswith("/"):
        raise UsageError(f"-v {text!r}: the container path must be absolute")
    is_path = source.startswith(("/", ".", "~"))
    if is_path:
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = (cwd or Path.cwd()) / path
        path = path.resolve()
        if not path.exists():
            raise UsageError(f"-v {text!r}: {path} does not exist", hint="create it first, as your own user")
        source = str(path)
    elif not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$", source):
        raise UsageError(f"-v {text!r}: {source!r} is neither a path nor a volume name")
    return Mount(source=source, target=target, read_only=mode == "ro", is_path=is_path)


def check_bind(address: str) -> tuple[str, bool]:
    """The address to publish on, and whether it is loopback only."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UsageError(f"--bind {address!r} is not an IP address") from None
    return str(ip), ip.is_loopback


def parse_gpus(value: str) -> docker.types.DeviceRequest:
    """``all``, a count, or ``device=0,1`` (what ``docker run --gpus`` takes)."""
    if value == "all":
        return docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])
    if value.isdigit() and int(value) > 0:
        return docker.types.DeviceRequest(count=int(value), capabilities=[["gpu"]])
    if value.startswith("device="):
        ids = [item for item in value.removeprefix("device=").split(",") if item]
        if ids and all(re.match(r"^[A-Za-z0-9-]+$", item) for item in ids):
            return docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])
    raise UsageError(f"--gpus {value!r}: use all, a number, or device=0,1")


def parse_ulimits(values: Iterable[str]) -> tuple[docker.types.Ulimit, ...]:
    """``NAME=SOFT[:HARD]`` (what ``docker run --ulimit`` takes); -1 or ``unlimited`` lifts a limit.

    NVIDIA recommends ``memlock=-1`` and ``stack=67108864`` for multi-GPU training.
    """
    limits: dict[str, docker.types.Ulimit] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep or name not in ULIMIT_NAMES:
            raise UsageError(
                f"--ulimit {text!r}: expected NAME=SOFT[:HARD] with NAME one of {', '.join(ULIMIT_NAMES)}"
            )
        soft_text, _, hard_text = value.partition(":")
        soft = _limit_value(soft_text, text)
        hard = _limit_value(hard_text, text) if hard_text else soft
        if hard != -1 and (soft == -1 or soft > hard):
            raise UsageError(f"--ulimit {text!r}: the soft limit is above the hard one")
        limits[name] = docker.types.Ulimit(name=name, soft=soft, hard=hard)
    return tuple(limits[n] for n in sorted(limits))


def _limit_value(text: str, option: str) -> int:
    if text in ("-1", "unlimited"):
        return -1
    if text.isdigit():
        return int(text)
    raise UsageError(f"--ulimit {option!r}: {text!r} is not a number (or -1 / unlimited)")


def check_ipc(value: str) -> str:
    """``host`` (NVIDIA's recommendation for PyTorch), ``private``, ``shareable``, ``none`` or
    ``container:NAME``."""
    if value in IPC_MODES:
        return value
    if value.startswith("container:") and _NAME_RE.match(value.removeprefix("container:")):
        return value
    raise UsageError(f"--ipc {value!r}: use host, private, shareable, none or container:NAME")


def check_gpu_host(client: docker.DockerClient) -> None:
    """A GPU request needs the NVIDIA runtime (or its hook) on the engine's host."""
    runtimes = client.info().get("Runtimes") or {}
    if "nvidia" in runtimes or shutil.which("nvidia-container-runtime-hook"):
        return
    raise GpuHostNotReady(
        "--gpus was given but this Docker engine has no NVIDIA runtime",
        hint="install the NVIDIA Container Toolkit, run `nvidia-ctk runtime configure --runtime=docker` "
        "and restart dockerd; or run without --gpus",
    )


def check_password_hash(text: str) -> str:
    value = text.strip()
    if not _PASSWORD_HASH_RE.match(value):
        raise UsageError(
            "the Jupyter password file must hold a hash, not a password",
            hint="make one with: python -c 'from jupyter_server.auth import passwd; print(passwd())'",
        )
    return value


def check_authorized_keys(data: bytes, source: str) -> bytes:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise UsageError(f"--authorized-keys {source}: no public key in the file")
    for line in keys:
        if "PRIVATE KEY" in line:
            raise UsageError(f"--authorized-keys {source}: this is a private key; give the .pub file")
        if not re.search(r"(^|\s)(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ [A-Za-z0-9+/=]{20,}", line):
            raise UsageError(f"--authorized-keys {source}: {line[:40]!r}... is not an OpenSSH public key")
    return ("\n".join(keys) + "\n").encode()


def port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR ignores connections in TIME_WAIT; a listening socket still conflicts.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def port_holder(port: int, client: docker.DockerClient | None = None) -> str | None:
    """Who listens on a host port: a container publishing it, or a local process, when we can see."""
    if client is not None:
        try:
            for container in client.containers.list():
                for bindings in (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).values():
                    if any(str(port) == b.get("HostPort") for b in bindings or []):
                        return f"container {container.name}"
        except docker.errors.DockerException:
            pass
    return _process_listening_on(port)


def _process_listening_on(port: int, proc: Path = Path("/proc")) -> str | None:
    inodes: set[str] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    command = (pid_dir / "comm").read_text().strip()
                    return f"process {pid_dir.name} ({command})"
        except OSError:
            continue
    return "a process this user cannot see"


def _port_in_use(port: int, bind: str, client: docker.DockerClient | None, service: str) -> PortInUse:
    holder = port_holder(port, client)
    held = f", held by {holder}" if holder else ""
    option = f"--{service}-port" if service else "another port"
    return PortInUse(
        f"port {port} on {bind} is already in use{held}",
        hint=f"stop that, or choose another host port with {option} (0 picks a free one)",
    )


def default_name(image: str) -> str:
    stem = re.sub(r"[^a-zA-Z0-9_.-]+", "-", image.rsplit("/", 1)[-1]).strip("-.") or "dev"
    return f"envkit-{stem}-{secrets.token_hex(3)}"


def _image_uid(config: dict[str, Any]) -> int:
    user = (config.get("User") or "").split(":")[0]
    if user.isdigit() and int(user) != 0:
        return int(user)
    raise UsageError(
        f"the image's user is {user or 'root'!r}; envkit runs dev containers as a numeric non-root user",
        hint="build it with `envkit build`, whose images set USER 1000:1000",
    )


def _shm_for(client: docker.DockerClient, requested: str | None) -> int:
    """DataLoader workers pass batches through /dev/shm; Docker's 64 MB default breaks them."""
    if requested:
        match = re.fullmatch(r"(\d+)([kmgKMG]?)", requested.strip())
        if not match:
            raise UsageError(f"--shm-size {requested!r}: use a size like 8g or 512m")
        scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
        return int(match.group(1)) * scale
    total = int(client.info().get("MemTotal") or 0)
    # Half of the host's memory: tmpfs takes only what is written, this is just the ceiling.
    return max(1024**3, min(DEFAULT_SHM * 4, total // 2)) if total else DEFAULT_SHM


def plan_run(
    client: docker.DockerClient,
    image: str,
    *,
    services: Iterable[str] = (),
    host_ports: dict[str, int] | None = None,
    bind: str = LOOPBACK,
    volumes: Iterable[str] = (),
    workdir: str = DEFAULT_WORKDIR,
    command: Iterable[str] = (),
    gpus: str | None = None,
    shm_size: str | None = None,
    ipc: str | None = None,
    ulimits: Iterable[str] = (),
    offline: bool = False,
    interactive: bool = False,
    tty: bool = False,
    environment: dict[str, str] | None = None,
    authorized_keys: Path | None = None,
    jupyter_password_file: Path | None = None,
    tensorboard_logdir: str | None = None,
    name: str | None = None,
    detach: bool = True,
    check_ports: bool = True,
) -> RunPlan:
    """Check everything and decide; raises before any container exists.

    The steps, in order: the services and where they are published, the plain options, the secrets,
    the mounts, the image (its user and variant), the GPU host, then the host ports.
    """
    command = tuple(command)
    wanted = _check_services(services)
    warnings: list[str] = []
    address = _check_publishing(bind, warnings)
    _check_names(name, workdir)
    if detach and (interactive or tty):
        raise UsageError("-i/-t attach a terminal; they cannot be used with --detach")
    ipc_mode = check_ipc(ipc) if ipc else None
    if ipc_mode == "host" and shm_size:
        raise UsageError("--shm-size has no effect with --ipc host (the host's /dev/shm is used)")
    limits = parse_ulimits(ulimits)
    if offline and wanted:
        raise UsageError(f"--offline: {', '.join(wanted)} must be reached over the network; "
                         "run services without --offline")
    keys = _read_authorized_keys(wanted, authorized_keys)
    password_hash = _read_password_hash(wanted, jupyter_password_file)
    mounts = _parse_mounts(volumes)
    device_request = parse_gpus(gpus) if gpus else None
    image_obj, uid = _inspect_image(client, image, wanted, command)
    if device_request is not None:
        check_gpu_host(client)
    warnings.extend(_mount_warnings(mounts, uid))
    ports = _check_ports(client, wanted, host_ports, address, check_ports=check_ports)
    return RunPlan(
        image=image,
        image_id=image_obj.id,
        name=name or default_name(image),
        uid=uid,
        services=wanted,
        host_ports=ports,
        bind=address,
        mounts=mounts,
        workdir=workdir,
        command=command,
        gpus=device_request,
        shm_size=0 if ipc_mode == "host" else _shm_for(client, shm_size),
        ipc_mode=ipc_mode,
        ulimits=limits,
        offline=offline,
        interactive=interactive,
        tty=tty,
        environment=dict(environment or {}),
        authorized_keys=keys,
        jupyter_password_hash=password_hash,
        tensorboard_logdir=tensorboard_logdir,
        detach=detach,
        warnings=warnings,
    )


def _check_services(services: Iterable[str]) -> tuple[str, ...]:
    asked = set(services)
    unknown = asked - set(SERVICES)
    if unknown:
        raise UsageError(f"unknown service(s): {', '.join(sorted(unknown))}")
    return tuple(s for s in SERVICES if s in asked)


def _check_publishing(bind: str, warnings: list[str]) -> str:
    address, loopback = check_bind(bind)
    if not loopback:
        reach = "every network this host is on" if address in ("0.0.0.0", "::") else address
        warnings.append(
            f"publishing on {address}: the services are reachable from {reach}; "
            "Jupyter still needs its token and SSH a key, but TensorBoard has no login"
        )
    return address


def _check_names(name: str | None, workdir: str) -> None:
    if name is not None and not _NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '.', '-' (at most 63)")
    if not workdir.startswith("/"):
        raise UsageError(f"--workdir {workdir!r} must be an absolute path in the container")


def _read_authorized_keys(wanted: tuple[str, ...], authorized_keys: Path | None) -> bytes | None:
    if "ssh" not in wanted:
        if authorized_keys is not None:
            raise UsageError("--authorized-keys is only used with --ssh")
        return None
    if authorized_keys is None:
        raise UsageError("--ssh needs --authorized-keys FILE (your public key): password logins are off")
    try:
        return check_authorized_keys(authorized_keys.read_bytes(), str(authorized_keys))
    except OSError as exc:
        raise UsageError(f"--authorized-keys {authorized_keys}: {exc.strerror}") from None


def _read_password_hash(wanted: tuple[str, ...], password_file: Path | None) -> str | None:
    if password_file is None:
        return None
    if "jupyter" not in wanted:
        raise UsageError("--jupyter-password-file is only used with --jupyter")
    try:
        return check_password_hash(password_file.read_text())
    except OSError as exc:
        raise UsageError(f"--jupyter-password-file {password_file}: {exc.strerror}") from None


def _parse_mounts(volumes: Iterable[str]) -> tuple[Mount, ...]:
    mounts = tuple(parse_volume(v) for v in volumes)
    targets = [m.target for m in mounts]
    if len(set(targets)) != len(targets):
        raise UsageError("two -v options mount at the same container path")
    return mounts


def _inspect_image(
    client: docker.DockerClient, image: str, wanted: tuple[str, ...], command: tuple[str, ...]
) -> tuple[Any, int]:
    """The image and its user; services need a dev image, and a runtime image needs a command."""
    try:
        image_obj = client.images.get(image)
    except docker.errors.ImageNotFound:
        raise UsageError(
            f"image {image} is not on this engine", hint="build it first: `envkit build NAME`"
        ) from None
    config = image_obj.attrs.get("Config") or {}
    uid = _image_uid(config)
    variant = (config.get("Labels") or {}).get(label_keys.VARIANT)
    if wanted and variant != "dev":
        raise UsageError(
            f"{image} is not a dev image (variant {variant or 'unknown'}); --jupyter, --tensorboard and "
            "--ssh need one",
            hint="use the -dev tag, e.g. `envkit build pytorch-cuda:2.8-dev`",
        )
    if not wanted and not command and variant != "dev":
        raise UsageError(f"nothing to run in {image}: give a command after NAME, or a service option")
    return image_obj, uid


def _mount_warnings(mounts: tuple[Mount, ...], uid: int) -> list[str]:
    found = []
    for mount in mounts:
        if mount.is_path and not mount.read_only:
            warning = _writability_warning(Path(mount.source), uid)
            if warning:
                found.append(warning)
    return found


def _check_ports(
    client: docker.DockerClient,
    wanted: tuple[str, ...],
    host_ports: dict[str, int] | None,
    address: str,
    *,
    check_ports: bool,
) -> dict[str, int]:
    ports = {s: (host_ports or {}).get(s, DEFAULT_HOST_PORTS[s]) for s in wanted}
    for service, port in ports.items():
        if not 0 <= port <= 65535:
            raise UsageError(f"--{service}-port {port}: not a port number")
        if check_ports and port and not port_free(address, port):
            raise _port_in_use(port, address, client, service)
    chosen = [p for p in ports.values() if p]
    if len(set(chosen)) != len(chosen):
        raise UsageError("two services were given the same host port")
    return ports


def _writability_warning(path: Path, uid: int) -> str | None:
    try:
        info = path.stat()
    except OSError:
        return None
    if info.st_uid == uid or info.st_mode & 0o002:
        return None
    return (
        f"{path} belongs to uid {info.st_uid}; the container's user (uid {uid}) may not be able to write "
        f"there (chown it to {uid}, or mount it read-only with :ro)"
    )


# --- state on the host ---------------------------------------------------------------------------


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def secrets_archive(files: dict[str, bytes], uid: int, *, mtime: int | None = None) -> bytes:
    """A tar of files owned by ``uid``, mode 0600, for ``put_archive`` into the secrets directory."""
    entries = sorted(files.items())
    stamp = int(time.time()) if mtime is None else mtime
    return tar_bytes(entries, mtime=stamp, modes=dict.fromkeys(files, 0o600), uid=uid, gid=uid)


# --- running ---------------------------------------------------------------------------------------


def _container_environment(plan: RunPlan) -> dict[str, str]:
    env = dict(plan.environment)
    env["ENVKIT_SERVICES"] = ",".join(plan.services)
    env["ENVKIT_WORKDIR"] = plan.workdir
    if "tensorboard" in plan.services:
        env["ENVKIT_TENSORBOARD_LOGDIR"] = plan.tensorboard_logdir or f"{plan.workdir.rstrip('/')}/runs"
    return env


def _labels(plan: RunPlan, state_dir: Path) -> dict[str, str]:
    return {
        MANAGED_LABEL: "true",
        SERVICES_LABEL: ",".join(plan.services),
        IMAGE_LABEL: plan.image,
        STATE_LABEL: str(state_dir),
    }


def _engine_error(exc: docker.errors.APIError, plan: RunPlan, client: docker.DockerClient) -> EnvkitError:
    text = str(exc.explanation or exc)
    for pattern in _PORT_TAKEN_RES:
        match = pattern.search(text)
        if match:
            port = int(match.group(1))
            service = next((s for s, p in plan.host_ports.items() if p == port), "")
            return _port_in_use(port, plan.bind, client, service)
    if _GPU_DRIVER_MISSING in text:
        return GpuHostNotReady(
            f"the engine cannot give GPUs to containers: {text}",
            hint="install the NVIDIA Container Toolkit and restart dockerd",
        )
    if _GPU_REQUIREMENT in text:
        return GpuHostNotReady(
            f"the host driver does not meet the image's CUDA requirement: {text}",
            hint="update the NVIDIA driver, or use an image built for an older CUDA",
        )
    return EngineRefused(f"the engine refused to start the container: {text}")


def create(client: docker.DockerClient, plan: RunPlan) -> tuple[Any, Path | None]:
    """Create (not start) the container and copy its secrets in. Returns it and the token file."""
    state_dir = state_root() / "run" / plan.name
    files: dict[str, bytes] = {}
    token_file = None
    if "jupyter" in plan.services:
        token = secrets.token_urlsafe(36)
        assert len(token) >= MIN_TOKEN_LENGTH
        files["jupyter_token"] = token.encode()
        token_file = state_dir / "jupyter_token"
        if plan.jupyter_password_hash:
            files["jupyter_password"] = plan.jupyter_password_hash.encode()
    if plan.authorized_keys is not None:
        files["authorized_keys"] = plan.authorized_keys

    ports = {
        f"{CONTAINER_PORTS[s]}/tcp": (plan.bind, plan.host_ports[s] or None) for s in plan.services
    }
    volumes = {m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in plan.mounts}
    command = list(plan.command) or ["services"]
    try:
        container = client.containers.create(
            plan.image_id,
            command=command,
            name=plan.name,
            user=f"{plan.uid}:{plan.uid}",
            environment=_container_environment(plan),
            labels=_labels(plan, state_dir),
            working_dir=plan.workdir,
            ports=ports,
            volumes=volumes,
            shm_size=plan.shm_size or None,
            ipc_mode=plan.ipc_mode,
            ulimits=list(plan.ulimits) or None,
            network_mode="none" if plan.offline else None,
            stdin_open=plan.interactive,
            tty=plan.tty,
            device_requests=[plan.gpus] if plan.gpus else None,
            security_opt=["no-new-privileges"],
            # Not detached when stdin is attached: the engine then closes the command's stdin when
            # ours ends (StdinOnce), as `docker run -i` does.
            detach=not plan.interactive,
        )
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise UsageError(
                f"a container named {plan.name} already exists", hint="pick another --name"
            ) from None
        raise _engine_error(exc, plan, client) from None
    try:
        if files:
            if not container.put_archive(SECRETS_DIR, secrets_archive(files, plan.uid)):
                raise EngineRefused(f"could not copy the secrets into {plan.name}")
        if token_file is not None:
            _write_private(token_file, files["jupyter_token"].decode())
    except BaseException:
        remove(client, container.id, state_dir)
        raise
    return container, token_file


def own_state_dir(name: str, label: str | None = None) -> Path | None:
    """The state directory of container ``name``, or None when there is none envkit may touch.

    Only ``<state root>/run/<name>`` itself qualifies, after resolving every ``..`` and symlink;
    a path taken from a label is used only to confirm it, never as the place to act on.
    """
    if not _NAME_RE.match(name):
        return None
    runs = state_root() / "run"
    expected = runs / name
    if label is not None:
        try:
            if os.path.realpath(label) != os.path.realpath(expected):
                return None
        except (OSError, ValueError):
            return None
    if expected.is_symlink() or os.path.realpath(expected.parent) != os.path.realpath(runs):
        return None
    return expected


def remove(client: docker.DockerClient, container_id: str, state_dir: Path | None = None) -> None:
    try:
        client.api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    if state_dir is None:
        return
    safe = own_state_dir(state_dir.name, str(state_dir))
    if safe is not None and safe.is_dir():
        shutil.rmtree(safe, ignore_errors=True)


def published_ports(attrs: dict[str, Any]) -> dict[str, tuple[str, int]]:
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    result = {}
    for service, inner in CONTAINER_PORTS.items():
        for binding in ports.get(f"{inner}/tcp") or []:
            result[service] = (binding.get("HostIp", ""), int(binding["HostPort"]))
            break
    return result


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def endpoints_for(plan: RunPlan, attrs: dict[str, Any], token: str | None) -> list[Endpoint]:
    published = published_ports(attrs)
    found = []
    display = plan.probe_host
    for service in plan.services:
        if service not in published:
            continue
        _, port = published[service]
        host = _url_host(display)
        if service == "ssh":
            url = f"ssh://{host}:{port}"
            found.append(Endpoint(service, display, port, url))
            continue
        base = f"http://{host}:{port}/"
        login = f"{base}lab?token={token}" if service == "jupyter" and token else None
        found.append(Endpoint(service, display, port, f"{base}lab" if service == "jupyter" else base, login))
    return found


def probe(endpoint: Endpoint, token: str | None, timeout: float = 3.0) -> bool:
    """One check from the host: Jupyter's API with the token, TensorBoard's page, sshd's banner."""
    try:
        if endpoint.service == "ssh":
            with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        path = "api/status" if endpoint.service == "jupyter" else ""
        request = urllib.request.Request(f"http://{_url_host(endpoint.host)}:{endpoint.port}/{path}")
        if endpoint.service == "jupyter" and token:
            request.add_header("Authorization", f"token {token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _logs_tail(container: Any, lines: int = 30) -> str:
    try:
        return container.logs(tail=lines).decode("utf-8", "replace")
    except docker.errors.DockerException:
        return ""


def wait_ready(
    container: Any,
    plan: RunPlan,
    token: str | None,
    *,
    timeout: float,
    show: Show | None = None,
    probe_fn: Callable[[Endpoint, str | None], bool] = probe,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[Endpoint]:
    """Poll until every service answers; raise ServiceNotReady naming the ones that did not."""
    deadline = clock() + timeout
    container.reload()
    endpoints = endpoints_for(plan, container.attrs, token)
    pending = {e.service: e for e in endpoints}
    while True:
        for service, endpoint in list(pending.items()):
            if probe_fn(endpoint, token):
                del pending[service]
                if show:
                    show(Event("phase", f"{endpoint.service} answers on {endpoint.host}:{endpoint.port}",
                               data={"endpoint": endpoint}))
        if not pending and plan.services:
            return endpoints
        container.reload()
        state = container.attrs.get("State") or {}
        if not state.get("Running"):
            if not plan.services:
                return endpoints
            raise ServiceNotReady(
                f"{plan.name} stopped (exit {state.get('ExitCode')}) before "
                f"{', '.join(pending) or 'its services'} answered",
                details=_logs_tail(container),
            )
        if not plan.services:
            return endpoints
        if clock() >= deadline:
            where = ", ".join(f"{s} on {e.host}:{e.port}" for s, e in pending.items())
            raise ServiceNotReady(
                f"no answer within {timeout:.0f}s from {where}",
                hint=f"see `docker logs {plan.name}`; raise --timeout for a slow host",
                details=_logs_tail(container),
            )
        sleep(0.5)


def launch(
    client: docker.DockerClient,
    plan: RunPlan,
    *,
    timeout: float = 180.0,
    show: Show | None = None,
) -> RunResult:
    """Create, fill, start and wait. On any failure the container is removed again."""
    started = time.monotonic()
    container, token_file = create(client, plan)
    state_dir = state_root() / "run" / plan.name
    token = token_file.read_text() if token_file else None
    try:
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise _engine_error(exc, plan, client) from None
        endpoints = wait_ready(container, plan, token, timeout=timeout, show=show)
    except BaseException:
        remove(client, container.id, state_dir)
        raise
    return RunResult(
        container_id=container.id,
        name=plan.name,
        endpoints=endpoints,
        token_file=token_file,
        elapsed=time.monotonic() - started,
        user=user_name(container, plan.uid),
    )


def user_name(container: Any, uid: int) -> str:
    """The name of ``uid`` in the container's /etc/passwd (what an ssh client logs in as)."""
    try:
        stream, _ = container.get_archive("/etc/passwd")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.extractfile("passwd")
            text = member.read().decode("utf-8", "replace") if member else ""
    except (docker.errors.DockerException, tarfile.TarError, KeyError):
        return str(uid)
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2] == str(uid):
            return fields[0]
    return str(uid)


def follow(client: docker.DockerClient, name: str, write: Callable[[bytes], None]) -> int:
    """Stream a container's output until it exits; returns its exit code."""
    container = client.containers.get(name)
    for chunk in container.logs(stream=True, follow=True):
        write(chunk)
    return int(container.wait().get("StatusCode", 1))


# --- an attached terminal -------------------------------------------------------------------------


class Demux:
    """The engine's multiplexed stream (8-byte headers: stream, 3 zero bytes, big-endian size)
    split back into stdout (1) and stderr (2)."""

    def __init__(self, write: Callable[[int, bytes], None]) -> None:
        self._write = write
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 8:
            size = int.from_bytes(self._buffer[4:8], "big")
            if len(self._buffer) < 8 + size:
                return
            stream, payload = self._buffer[0], self._buffer[8:8 + size]
            self._buffer = self._buffer[8 + size:]
            self._write(2 if stream == 2 else 1, payload)


def pump(
    sock: Any,
    stdin_fd: int | None,
    write: Callable[[int, bytes], None],
    *,
    multiplexed: bool,
    on_stdin_closed: Callable[[], None] | None = None,
) -> None:
    """Copy ``stdin_fd`` into the attach socket and its output to ``write`` until the engine closes it.

    At the end of stdin the socket's write side is shut, which closes the container's stdin (so
    ``cat``, ``python -`` and friends finish), and reading goes on until the container exits.
    """
    demux = Demux(write) if multiplexed else None
    fileno = sock.fileno()
    watched = [fileno] + ([stdin_fd] if stdin_fd is not None else [])
    while True:
        readable, _, _ = select.select(watched, [], [])
        if fileno in readable:
            data = sock.recv(65536)
            if not data:
                return
            if demux is not None:
                demux.feed(data)
            else:
                write(1, data)
        if stdin_fd is not None and stdin_fd in readable:
            data = os.read(stdin_fd, 65536)
            if data:
                sock.sendall(data)
                continue
            watched.remove(stdin_fd)
            stdin_fd = None
            if on_stdin_closed is not None:
                on_stdin_closed()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The local terminal in raw mode (keys go to the container as typed), restored afterwards."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


def run_attached(
    client: docker.DockerClient,
    plan: RunPlan,
    *,
    stdin_fd: int | None,
    write: Callable[[int, bytes], None],
) -> int:
    """Create the container, attach to it, start it and copy the streams until it exits.

    With ``plan.tty`` the caller's terminal should be in raw mode (``raw_terminal``) and output comes
    as one stream; without, stdout and stderr stay apart. Returns the command's exit code; the
    container is removed in every case.
    """
    container, _ = create(client, plan)
    state_dir = state_root() / "run" / plan.name
    try:
        params = {"stdin": 1 if plan.interactive else 0, "stdout": 1, "stderr": 1, "stream": 1}
        sock = client.api.attach_socket(container.id, params=params)
        raw = getattr(sock, "_sock", sock)
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise _engine_error(exc, plan, client) from None
        previous = _follow_size(client, container.id, stdin_fd) if plan.tty and stdin_fd is not None else None
        try:
            pump(raw, stdin_fd if plan.interactive else None, write, multiplexed=not plan.tty)
        finally:
            if previous is not None:
                signal.signal(signal.SIGWINCH, previous)
            with contextlib.suppress(OSError):
                raw.close()
        return int(container.wait().get("StatusCode", 1))
    finally:
        remove(client, container.id, state_dir)


def _follow_size(client: docker.DockerClient, container_id: str, fd: int) -> Any:
    """Give the container's pty the caller's size now and on every SIGWINCH; returns the old handler."""

    def resize(*_: Any) -> None:
        size = terminal_size(fd)
        if size:
            with contextlib.suppress(docker.errors.APIError):
                client.api.resize(container_id, height=size[0], width=size[1])

    resize()
    try:
        return signal.signal(signal.SIGWINCH, resize)
    except ValueError:  # not the main thread
        return None


# --- ps / stop -------------------------------------------------------------------------------------


def _managed(client: docker.DockerClient) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{MANAGED_LABEL}=true"})


def _printable(text: str) -> str:
    """A label value as it may reach a terminal: no control or escape characters."""
    return "".join(c for c in str(text) if c.isprintable())


def list_managed(client: docker.DockerClient) -> list[ManagedContainer]:
    found = []
    for container in _managed(client):
        attrs = container.attrs
        state = attrs.get("State") or {}
        labels = attrs.get("Config", {}).get("Labels") or {}
        ports = {}
        for port, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
            if bindings:
                ports[port] = ", ".join(f"{b.get('HostIp')}:{b.get('HostPort')}" for b in bindings)
        found.append(
            ManagedContainer(
                name=container.name,
                id=container.id,
                image=_printable(labels.get(IMAGE_LABEL, "")),
                status=_printable(str(state.get("Status", container.status))),
                health=_printable(str((state.get("Health") or {}).get("Status", "-"))),
                services=tuple(s for s in labels.get(SERVICES_LABEL, "").split(",") if s in SERVICES),
                ports=ports,
            )
        )
    return sorted(found, key=lambda c: c.name)


def stop(client: docker.DockerClient, names: Iterable[str] = (), *, all_managed: bool = False,
         timeout: int = 10) -> list[str]:
    """Stop and remove envkit's containers (by name or all of them); never anything else."""
    managed = {c.name: c for c in _managed(client)}
    wanted = list(names)
    if all_managed:
        targets = list(managed.values())
    else:
        if not wanted:
            raise UsageError("name a container to stop, or pass --all")
        missing = [n for n in wanted if n not in managed]
        if missing:
            raise UsageError(
                f"not a container envkit started: {', '.join(missing)}", hint="`envkit ps` lists them"
            )
        targets = [managed[n] for n in wanted]
    stopped = []
    for container in targets:
        labels = container.attrs.get("Config", {}).get("Labels") or {}
        try:
            container.stop(timeout=timeout)
        except docker.errors.NotFound:
            pass
        label = labels.get(STATE_LABEL)
        remove(client, container.id, own_state_dir(container.name, label) if label else None)
        stopped.append(container.name)
    return stopped
