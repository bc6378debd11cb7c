"""`envkit run`, `envkit ps`, `envkit stop`: thin commands over envkit.dev.run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from envkit.cli import console
from envkit.errors import UsageError


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"-e {item!r}: expected NAME=VALUE")
        if key.upper().startswith("ENVKIT_"):
            raise UsageError(f"-e {key}: ENVKIT_* variables are set by envkit run itself")
        env[key] = value
    return env


@click.command("run")
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--jupyter", is_flag=True, help="Start JupyterLab (token always on).")
@click.option("--tensorboard", is_flag=True, help="Start TensorBoard on the logs under --logdir.")
@click.option("--ssh", is_flag=True, help="Start sshd (key login only); needs --authorized-keys.")
@click.option("--authorized-keys", type=click.Path(dir_okay=False, path_type=Path),
              help="Public key(s) allowed to log in over SSH.")
@click.option("--jupyter-password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="A file holding a Jupyter password hash (jupyter_server.auth.passwd()).")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CONTAINER[:ro]",
              help="Mount a host directory (or named volume); repeatable.")
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE", help="Set a variable; repeatable.")
@click.option("--workdir", default="/workspace", show_default=True,
              help="Working directory in the container.")
@click.option("--logdir", help="TensorBoard log directory in the container [default: WORKDIR/runs].")
@click.option("--gpus", help="GPUs to give the container: all, a count, or device=0,1.")
@click.option("--shm-size", help="Size limit of /dev/shm, e.g. 16g [default: half the host's memory].")
@click.option("--ipc", help="IPC namespace: host (NVIDIA's advice for PyTorch; /dev/shm is the host's), "
              "private, shareable, none or container:NAME.")
@click.option("--ulimit", "ulimits", multiple=True, metavar="NAME=SOFT[:HARD]",
              help="A resource limit; repeatable. NVIDIA advises memlock=-1 and stack=67108864 for "
              "multi-GPU training.")
@click.option("--offline", is_flag=True,
              help="No network in the container (the job must find its files in mounts or the image).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and send this one to COMMAND.")
@click.option("-t", "--tty", is_flag=True,
              help="Give COMMAND a terminal (when stdin is one), e.g. `-it ... -- bash`.")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Host address to publish ports on; anything but loopback is reachable by others.")
@click.option("--jupyter-port", type=int, default=8888, show_default=True, help="Host port (0: any free).")
@click.option("--tensorboard-port", type=int, default=6006, show_default=True,
              help="Host port (0: any free).")
@click.option("--ssh-port", type=int, default=2222, show_default=True, help="Host port (0: any free).")
@click.option("--name", "container_name", help="Container name [default: envkit-IMAGE-xxxxxx].")
@click.option("-d", "--detach", is_flag=True, help="Leave it running in the background.")
@click.option("--timeout", type=float, default=180, show_default=True,
              help="Seconds to wait for the services to answer.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def run_cmd(**options: object) -> None:
    """Run NAME (catalog name:tag or image) as its non-root user, with the chosen services.

    Ports are published on 127.0.0.1 only unless --bind says otherwise. A COMMAND after NAME runs
    instead of just the services; put it after `--`, e.g. `envkit run NAME -v .:/workspace -- torchrun ...`.
    """
    _run(**options)


def _run(**options: object) -> None:
    from envkit.dev import run as devrun
    from envkit.engine.client import get_client
    from envkit.spec.catalog import image_ref_for

    services = [s for s in ("jupyter", "tensorboard", "ssh") if options[s]]
    environment = _env_pairs(options["env"])  # type: ignore[arg-type]
    image = image_ref_for(str(options["name"]))
    tty = bool(options["tty"])
    if tty and not sys.stdin.isatty():
        console.warning("-t: stdin is not a terminal; streaming the command's output instead")
        tty = False
    client = get_client()
    plan = devrun.plan_run(
        client,
        image,
        services=services,
        host_ports={
            "jupyter": options["jupyter_port"],
            "tensorboard": options["tensorboard_port"],
            "ssh": options["ssh_port"],
        },  # type: ignore[dict-item]
        bind=str(options["bind"]),
        volumes=options["volumes"],  # type: ignore[arg-type]
        workdir=str(options["workdir"]),
        command=options["command"],  # type: ignore[arg-type]
        gpus=options["gpus"],  # type: ignore[arg-type]
        shm_size=options["shm_size"],  # type: ignore[arg-type]
        ipc=options["ipc"],  # type: ignore[arg-type]
        ulimits=options["ulimits"],  # type: ignore[arg-type]
        offline=bool(options["offline"]),
        interactive=bool(options["interactive"]),
        tty=tty,
        environment=environment,
        authorized_keys=options["authorized_keys"],  # type: ignore[arg-type]
        jupyter_password_file=options["jupyter_password_file"],  # type: ignore[arg-type]
        tensorboard_logdir=options["logdir"],  # type: ignore[arg-type]
        name=options["container_name"],  # type: ignore[arg-type]
        detach=bool(options["detach"]),
    )
    for warning in plan.warnings:
        console.warning(warning)
    detach = bool(options["detach"])
    if plan.interactive or plan.tty:
        _run_attached(client, plan)
        return
    console.info(f"starting {plan.name} from {image} as uid {plan.uid}"
                 + (f" with {', '.join(plan.services)}" if plan.services else ""))
    result = devrun.launch(
        client,
        plan,
        timeout=float(options["timeout"]),  # type: ignore[arg-type]
        show=lambda event: console.info("  " + event.message),
    )
    if options["as_json"]:
        console.out.print_json(json.dumps(result.to_json()))
    else:
        for endpoint in result.endpoints:
            console.out.print(f"{endpoint.service:<12} {endpoint.login_url or endpoint.url}", markup=False)
    if result.token_file:
        console.info(f"the Jupyter token is also in {result.token_file} (mode 0600)")
    if "ssh" in plan.services:
        ssh = next(e for e in result.endpoints if e.service == "ssh")
        console.info(f"log in with: ssh -p {ssh.port} {result.user}@{ssh.host}")
    if detach:
        console.success(f"{plan.name} is running; stop it with `envkit stop {plan.name}`")
        return
    console.info("following its output; Ctrl-C stops and removes it")
    code = 1
    try:
        code = devrun.follow(client, plan.name, lambda chunk: (sys.stdout.buffer.write(chunk),
                                                               sys.stdout.flush()))
    finally:
        devrun.stop(client, [plan.name], timeout=5)
    if code:
        raise click.exceptions.Exit(code)


def _run_attached(client: object, plan: object) -> None:
    """-i/-t: the command's streams are the caller's; envkit's own messages stay off stdout."""
    from envkit.dev import run as devrun

    def write(stream: int, data: bytes) -> None:
        out = sys.stderr.buffer if stream == 2 else sys.stdout.buffer
        out.write(data)
        out.flush()

    stdin_fd = sys.stdin.fileno() if plan.interactive else None  # type: ignore[attr-defined]
    if plan.tty:  # type: ignore[attr-defined]
        with devrun.raw_terminal(sys.stdin.fileno()):
            code = devrun.run_attached(client, plan, stdin_fd=sys.stdin.fileno(), write=write)  # type: ignore[arg-type]
    else:
        code = devrun.run_attached(client, plan, stdin_fd=stdin_fd, write=write)  # type: ignore[arg-type]
    if code:
        raise click.exceptions.Exit(code)


@click.command("ps")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def ps_cmd(as_json: bool) -> None:
    """List the containers `envkit run` started."""
    from envkit.dev import run as devrun
    from envkit.engine.client import get_client

    found = devrun.list_managed(get_client())
    if as_json:
        console.out.print_json(json.dumps([c.__dict__ for c in found], default=list))
        return
    if not found:
        console.info("no containers started by envkit")
        return
    table = Table()
    for column in ("name", "image", "status", "health", "services", "ports"):
        table.add_column(column, overflow="fold")
    for item in found:
        table.add_row(item.name, item.image, item.status, item.health, ",".join(item.services) or "-",
                      "\n".join(f"{v} -> {k}" for k, v in item.ports.items()) or "-")
    console.out.print(table)


@click.command("stop")
@click.argument("names", nargs=-1)
@click.option("--all", "all_managed", is_flag=True, help="Every container envkit started.")
@click.option("--timeout", type=int, default=10, show_default=True, help="Seconds before SIGKILL.")
def stop_cmd(names: tuple[str, ...], all_managed: bool, timeout: int) -> None:
    """Stop and remove containers `envkit run` started (their token files too)."""
    from envkit.dev import run as devrun
    from envkit.engine.client import get_client

    if names and all_managed:
        raise UsageError("give names or --all, not both")
    stopped = devrun.stop(get_client(), names, all_managed=all_managed, timeout=timeout)
    for name in stopped:
        console.success(f"stopped and removed {name}")
    if not stopped:
        console.info("no containers started by envkit")


@click.command("fetch")
@click.argument("url")
@click.option("--sha256", "sha256", required=True, metavar="HEX",
              help="The file's sha256: nothing is kept unless the bytes hash to it.")
@click.option("--into", type=click.Path(file_okay=False, path_type=Path),
              help="Put the file in this directory (e.g. the one mounted at /workspace).")
@click.option("--name", "file_name", help="File name to give it [default: the URL's last part].")
@click.option("--max-size", default="20g", show_default=True, help="Refuse a file larger than this.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def fetch_cmd(url: str, sha256: str, into: Path | None, file_name: str | None, max_size: str,
              as_json: bool) -> None:
    """Fetch a file (model weights) by URL and sha256 into the host cache, once.

    A second fetch of the same sha256 downloads nothing. With --into the file is also put in a
    directory a container mounts, so `envkit run --offline` jobs find it without the network.
    """
    from envkit.dev.files import fetch_events
    from envkit.engine.archive import parse_size

    events = fetch_events(url, sha256, name=file_name, into=into, max_bytes=parse_size(max_size))
    fetched = console.show_job("fetch", events)
    if as_json:
        console.out.print_json(json.dumps(fetched.as_json()))
        return
    where = fetched.placed or fetched.cached
    how = "downloaded" if fetched.downloaded else "from the host cache"
    console.success(f"{fetched.name} ({fetched.size} bytes, sha256 {fetched.sha256[:12]}…) {how}: {where}")
