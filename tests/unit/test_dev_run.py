"""envkit run/ps/stop without an engine: input checks, port conflicts, secrets handling, waiting."""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from envkit.dev import run as devrun
from envkit.errors import GpuHostNotReady, UsageError
from tests.fakes import FakeClient, FakeContainer, FakeImage

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc6m1yLk3JH2o0Xb9m7Q8kq1c2v3b4n5m6a7s8d9f0g user@laptop\n"


def dev_image(variant: str = "dev", user: str = "1000:1000") -> FakeImage:
    return FakeImage(labels={"io.envkit.variant": variant}, user=user)


def dev_client(image: FakeImage | None = None, runtimes: dict[str, Any] | None = None) -> FakeClient:
    """An engine where every reference names one dev image and a service dies with a known log."""
    return FakeClient(default_image=image or dev_image(), runtimes=runtimes, logs="jupyter: crashed on purpose\n")


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "state"
    monkeypatch.setenv("ENVKIT_STATE_DIR", str(root))
    return root


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "id.pub"
    path.write_text(PUBLIC_KEY)
    return path


@pytest.fixture
def listener() -> Any:
    """A real socket listening on a loopback port, held by this test process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock
    sock.close()


def test_volume_paths_must_exist_and_become_absolute(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    mount = devrun.parse_volume("./data:/data:ro", cwd=tmp_path)
    assert mount == devrun.Mount(source=str(tmp_path / "data"), target="/data", read_only=True)
    with pytest.raises(UsageError, match="does not exist"):
        devrun.parse_volume(f"{tmp_path}/missing:/data")
    with pytest.raises(UsageError, match="absolute"):
        devrun.parse_volume(f"{tmp_path}:data")
    with pytest.raises(UsageError, match="ro or rw"):
        devrun.parse_volume(f"{tmp_path}:/data:rx")
    assert devrun.parse_volume("cache:/root/.cache").is_path is False


def test_gpus_forms_and_refusals() -> None:
    assert devrun.parse_gpus("all").count == -1
    assert devrun.parse_gpus("2").count == 2
    assert devrun.parse_gpus("device=0,3").device_ids == ["0", "3"]
    for bad in ("0", "some", "device=", "device=0;rm"):
        with pytest.raises(UsageError):
            devrun.parse_gpus(bad)


def test_gpu_request_on_a_host_without_the_nvidia_runtime_exits_7(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devrun.shutil, "which", lambda name: None)
    with pytest.raises(GpuHostNotReady) as caught:
        devrun.plan_run(dev_client(), "img", gpus="all", command=["nvidia-smi"])
    assert caught.value.exit_code == 7
    plan = devrun.plan_run(dev_client(runtimes={"nvidia": {}}), "img", gpus="all", command=["nvidia-smi"])
    assert plan.gpus is not None and plan.gpus.capabilities == [["gpu"]]


def test_authorized_keys_must_be_public_keys(tmp_path: Path) -> None:
    assert devrun.check_authorized_keys(PUBLIC_KEY.encode(), "k") == PUBLIC_KEY.encode()
    with pytest.raises(UsageError, match="private key"):
        devrun.check_authorized_keys(b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "k")
    with pytest.raises(UsageError, match="no public key"):
        devrun.check_authorized_keys(b"# nothing\n\n", "k")
    with pytest.raises(UsageError, match="not an OpenSSH public key"):
        devrun.check_authorized_keys(b"hunter2\n", "k")


def test_jupyter_password_must_be_a_hash() -> None:
    hashed = "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdA$aGFzaGhhc2g"
    assert devrun.check_password_hash(hashed + "\n") == hashed
    assert devrun.check_password_hash("sha1:abcd:" + "0" * 40)
    with pytest.raises(UsageError, match="hash, not a password"):
        devrun.check_password_hash("hunter2")


def test_ssh_without_keys_and_services_on_a_runtime_image_are_refused(keys: Path) -> None:
    with pytest.raises(UsageError, match="--authorized-keys"):
        devrun.plan_run(dev_client(), "img", services=["ssh"])
    with pytest.raises(UsageError, match="not a dev image"):
        devrun.plan_run(dev_client(dev_image(variant="runtime")), "img", services=["jupyter"])
    with pytest.raises(UsageError, match="not on this engine"):
        client = dev_client()
        client.images.default = None
        devrun.plan_run(client, "img", services=["jupyter"])
    with pytest.raises(UsageError, match="non-root"):
        devrun.plan_run(dev_client(dev_image(user="")), "img", services=["jupyter"])


def test_ports_default_to_loopback_and_other_binds_warn() -> None:
    plan = devrun.plan_run(dev_client(), "img", services=["jupyter"], host_ports={"jupyter": 0})
    assert plan.bind == "127.0.0.1" and plan.warnings == []
    wide = devrun.plan_run(dev_client(), "img", services=["tensorboard"], bind="0.0.0.0",
                           host_ports={"tensorboard": 0})
    assert any("0.0.0.0" in w and "TensorBoard has no login" in w for w in wide.warnings)
    with pytest.raises(UsageError, match="not an IP address"):
        devrun.plan_run(dev_client(), "img", services=["jupyter"], bind="localhost; rm")


def test_a_port_already_taken_names_the_port_and_this_process_as_holder(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert not devrun.port_free("127.0.0.1", port)
    with pytest.raises(devrun.PortInUse) as caught:
        devrun.plan_run(dev_client(), "img", services=["jupyter"], host_ports={"jupyter": port})
    message = str(caught.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert f"process {os.getpid()}" in message
    assert "--jupyter-port" in (caught.value.hint or "")
    assert caught.value.exit_code == 2


def test_a_port_held_by_a_container_names_the_container(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    client = dev_client()
    other = FakeContainer("someone-elses-jupyter")
    other.attrs["NetworkSettings"]["Ports"] = {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    client.containers.existing.append(other)
    assert devrun.port_holder(port, client) == "container someone-elses-jupyter"


def test_engine_port_and_gpu_errors_are_explained() -> None:
    plan = devrun.plan_run(dev_client(), "img", services=["jupyter"], host_ports={"jupyter": 0})
    plan.host_ports["jupyter"] = 8899
    error = devrun._engine_error(
        docker.errors.APIError("500", explanation="driver failed programming external connectivity: "
                               "Bind for 127.0.0.1:8899 failed: port is already allocated"),
        plan, dev_client(),
    )
    assert isinstance(error, devrun.PortInUse) and "port 8899" in str(error)
    gpu = devrun._engine_error(
        docker.errors.APIError("500", explanation='could not select device driver "" with capabilities: [[gpu]]'),
        plan, dev_client(),
    )
    assert isinstance(gpu, GpuHostNotReady)


def _tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: m for m in archive.getmembers()}


def test_secrets_go_into_the_container_never_into_its_config(keys: Path, state_dir: Path) -> None:
    client = dev_client()
    plan = devrun.plan_run(
        client, "img", services=["jupyter", "ssh"], authorized_keys=keys,
        host_ports={"jupyter": 0, "ssh": 0}, name="devbox",
    )
    container, token_file = devrun.create(client, plan)
    assert token_file == state_dir / "run" / "devbox" / "jupyter_token"
    token = token_file.read_text()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700

    kwargs = container.kwargs
    config_text = repr(kwargs)
    assert token not in config_text and "AAAAC3Nza" not in config_text
    assert kwargs["user"] == "1000:1000"
    assert kwargs["labels"][devrun.MANAGED_LABEL] == "true"
    assert kwargs["environment"]["ENVKIT_SERVICES"] == "jupyter,ssh"
    assert all(host == "127.0.0.1" for host, _ in kwargs["ports"].values())
    assert kwargs["shm_size"] >= 1024**3
    assert kwargs["command"] == ["services"]
    assert container.started is False  # secrets are in place before anything runs

    [(path, data)] = container.archives
    assert path == devrun.SECRETS_DIR
    members = _tar_members(data)
    assert set(members) == {"jupyter_token", "authorized_keys"}
    for member in members.values():
        assert (member.uid, member.gid, stat.S_IMODE(member.mode)) == (1000, 1000, 0o600)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.extractfile("jupyter_token").read().decode() == token  # type: ignore[union-attr]


def test_a_service_that_dies_is_reported_with_its_logs_and_the_container_removed(state_dir: Path) -> None:
    client = dev_client()
    plan = devrun.plan_run(client, "img", services=["jupyter"], host_ports={"jupyter": 0}, name="dies")

    def create_stopped(image: str, **kwargs: Any) -> FakeContainer:
        container = FakeContainer(kwargs["name"], kwargs, owner=client, running=False)
        client.containers.created.append(container)
        return container

    client.containers.create = create_stopped  # type: ignore[method-assign]
    with pytest.raises(devrun.ServiceNotReady) as caught:
        devrun.launch(client, plan, timeout=5)
    assert "stopped (exit 3) before jupyter answered" in str(caught.value)
    assert "crashed on purpose" in (caught.value.details or "")
    assert client.api.removed == ["id-dies"]
    assert not (state_dir / "run" / "dies").exists()


def test_a_service_that_never_answers_times_out_naming_it() -> None:
    client = dev_client()
    plan = devrun.plan_run(client, "img", services=["tensorboard"], host_ports={"tensorboard": 0}, name="slow")
    container, _ = devrun.create(client, plan)
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(devrun.ServiceNotReady) as caught:
        devrun.wait_ready(container, plan, None, timeout=3, probe_fn=lambda e, t: False, sleep=sleep, clock=clock)
    assert "no answer within 3s from tensorboard on 127.0.0.1:40000" in str(caught.value)


def test_each_service_that_answers_is_shown_as_a_phase_event() -> None:
    from envkit.events import Event

    client = dev_client()
    plan = devrun.plan_run(client, "img", services=["tensorboard"], host_ports={"tensorboard": 0}, name="ready")
    container, _ = devrun.create(client, plan)
    seen: list[Event] = []
    endpoints = devrun.wait_ready(container, plan, None, timeout=3, probe_fn=lambda e, t: True, show=seen.append)
    assert [e.kind for e in seen] == ["phase"]
    assert seen[0].message == f"tensorboard answers on {endpoints[0].host}:{endpoints[0].port}"
    assert seen[0].data["endpoint"] == endpoints[0]


def test_endpoints_carry_the_token_only_in_the_login_url() -> None:
    client = dev_client()
    plan = devrun.plan_run(client, "img", services=["jupyter", "tensorboard"],
                           host_ports={"jupyter": 0, "tensorboard": 0}, name="urls")
    container, token_file = devrun.create(client, plan)
    assert token_file is not None
    token = token_file.read_text()
    endpoints = {e.service: e for e in devrun.endpoints_for(plan, container.attrs, token)}
    assert endpoints["jupyter"].url == "http://127.0.0.1:40000/lab"
    assert endpoints["jupyter"].login_url == f"http://127.0.0.1:40000/lab?token={token}"
    assert endpoints["tensorboard"].url == "http://127.0.0.1:40001/"
    assert endpoints["tensorboard"].login_url is None


def test_stop_touches_only_containers_envkit_started(state_dir: Path) -> None:
    client = dev_client()
    mine = FakeContainer("mine", {"labels": {devrun.MANAGED_LABEL: "true",
                                             devrun.STATE_LABEL: str(state_dir / "run" / "mine")}})
    theirs = FakeContainer("theirs", {"labels": {}})
    client.containers.existing += [mine, theirs]
    (state_dir / "run" / "mine").mkdir(parents=True)
    with pytest.raises(UsageError, match="not a container envkit started: theirs"):
        devrun.stop(client, ["theirs"])
    with pytest.raises(UsageError, match="--all"):
        devrun.stop(client, [])
    assert devrun.stop(client, all_managed=True) == ["mine"]
    assert mine.stopped and not theirs.stopped
    assert client.api.removed == ["id-mine"]
    assert not (state_dir / "run" / "mine").exists()


def test_a_forged_state_label_cannot_remove_other_directories(tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.mkdir()
    client = dev_client()
    client.containers.existing.append(
        FakeContainer("forged", {"labels": {devrun.MANAGED_LABEL: "true", devrun.STATE_LABEL: str(victim)}})
    )
    devrun.stop(client, ["forged"])
    assert victim.is_dir()


def test_run_command_refuses_bad_input_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.cli import app as cli_module

    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: dev_client())
    assert cli_module.main(["run", "envkit-test/x:1", "--ssh"]) == 2
    assert cli_module.main(["run", "envkit-test/x:1", "--jupyter", "--bind", "not-an-ip"]) == 2
    assert cli_module.main(["run", "envkit-test/x:1", "-e", "ENVKIT_SERVICES=ssh", "--", "true"]) == 2
    assert cli_module.main(["stop"]) == 2


def test_stop_refuses_a_state_dir_label_that_climbs_out_of_its_run_directory(state_dir: Path) -> None:
    runs = state_dir / "run"
    (runs / "other").mkdir(parents=True)
    (runs / "other" / "jupyter_token").write_text("secret")
    (runs / "evil").mkdir()
    (state_dir / "keep").write_text("x")
    client = FakeClient()
    client.containers.existing.append(
        FakeContainer("evil", {"labels": {devrun.MANAGED_LABEL: "true", devrun.STATE_LABEL: str(runs / "..")}})
    )
    assert devrun.stop(client, ["evil"]) == ["evil"]
    assert (runs / "other" / "jupyter_token").read_text() == "secret"
    assert (state_dir / "keep").exists()
    assert (runs / "evil").is_dir()  # the label did not match: nothing is removed on its word


def test_stop_refuses_a_state_dir_label_naming_another_container(state_dir: Path) -> None:
    runs = state_dir / "run"
    (runs / "other").mkdir(parents=True)
    client = FakeClient()
    client.containers.existing.append(
        FakeContainer("evil", {"labels": {devrun.MANAGED_LABEL: "true",
                                          devrun.STATE_LABEL: str(runs / "evil" / ".." / "other")}})
    )
    devrun.stop(client, ["evil"])
    assert (runs / "other").is_dir()


def test_stop_refuses_a_state_dir_that_is_a_symlink(state_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (state_dir / "run").mkdir(parents=True)
    (state_dir / "run" / "link").symlink_to(victim)
    client = FakeClient()
    client.containers.existing.append(
        FakeContainer("link", {"labels": {devrun.MANAGED_LABEL: "true",
                                          devrun.STATE_LABEL: str(state_dir / "run" / "link")}})
    )
    devrun.stop(client, ["link"])
    assert victim.is_dir()


def test_ps_refuses_escape_sequences_and_unknown_services_from_labels() -> None:
    client = FakeClient()
    client.containers.existing.append(
        FakeContainer("odd", {"labels": {devrun.MANAGED_LABEL: "true", devrun.IMAGE_LABEL: "img\x1b[2J\x07",
                                         devrun.SERVICES_LABEL: "jupyter,\x1b]0;pwn\x07"}})
    )
    [found] = devrun.list_managed(client)
    assert found.image == "img[2J"
    assert found.services == ("jupyter",)


# --- exit codes, terminals, IPC and limits ---------------------------------------------------------


def test_run_exits_with_the_commands_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.cli import app as cli_module

    client = dev_client(dev_image(variant="runtime"))
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: client)
    monkeypatch.setattr(devrun, "follow", lambda *a, **k: 5)
    monkeypatch.setattr(devrun, "user_name", lambda *a: "envkit")
    assert cli_module.main(["run", "envkit-test/x:1", "--", "python", "-c", "raise SystemExit(5)"]) == 5
    monkeypatch.setattr(devrun, "follow", lambda *a, **k: 0)
    assert cli_module.main(["run", "envkit-test/x:1", "--", "true"]) == 0
    assert all(c.stopped for c in client.containers.created)


def test_attached_run_exits_with_the_commands_code_and_removes_the_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from envkit.cli import app as cli_module

    client = dev_client(dev_image(variant="runtime"))
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: client)
    seen: dict[str, Any] = {}

    def attached(client_: Any, plan: devrun.RunPlan, *, stdin_fd: int | None, write: Any) -> int:
        seen.update(interactive=plan.interactive, tty=plan.tty, stdin_fd=stdin_fd)
        return 3

    monkeypatch.setattr(devrun, "run_attached", attached)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    monkeypatch.setattr("sys.stdin.fileno", lambda: 0, raising=False)
    # -t without a terminal on stdin streams instead (like `docker run -t` piped), still exit 3.
    assert cli_module.main(["run", "-it", "envkit-test/x:1", "--", "sh", "-c", "exit 3"]) == 3
    assert seen == {"interactive": True, "tty": False, "stdin_fd": 0}


def test_interactive_and_terminal_options_reach_the_engine() -> None:
    client = dev_client(dev_image(variant="runtime"))
    plan = devrun.plan_run(client, "img", command=["bash"], interactive=True, tty=True, detach=False)
    container, _ = devrun.create(client, plan)
    assert container.kwargs["stdin_open"] is True and container.kwargs["tty"] is True
    # Not detached, so the engine closes the command's stdin when ours ends.
    assert container.kwargs["detach"] is False
    with pytest.raises(UsageError, match="--detach"):
        devrun.plan_run(client, "img", command=["bash"], interactive=True, detach=True)


def test_ipc_ulimit_and_shm_pass_through() -> None:
    client = dev_client(dev_image(variant="runtime"))
    plan = devrun.plan_run(
        client, "img", command=["torchrun"], ipc="host", ulimits=["memlock=-1", "stack=67108864"],
        detach=False,
    )
    container, _ = devrun.create(client, plan)
    assert container.kwargs["ipc_mode"] == "host"
    assert container.kwargs["shm_size"] is None  # the host's /dev/shm
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in container.kwargs["ulimits"]}
    assert limits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    plan = devrun.plan_run(client, "img", command=["x"], shm_size="16g", detach=False)
    container, _ = devrun.create(client, plan)
    assert container.kwargs["shm_size"] == 16 * 1024**3 and container.kwargs["ipc_mode"] is None
    with pytest.raises(UsageError, match="no effect"):
        devrun.plan_run(client, "img", command=["x"], ipc="host", shm_size="1g")


def test_offline_runs_without_a_network_and_refuses_services() -> None:
    client = dev_client(dev_image(variant="dev"))
    plan = devrun.plan_run(client, "img", command=["yolo", "train"], offline=True, detach=False)
    container, _ = devrun.create(client, plan)
    assert container.kwargs["network_mode"] == "none"
    plan = devrun.plan_run(client, "img", command=["x"], detach=False)
    container, _ = devrun.create(client, plan)
    assert container.kwargs["network_mode"] is None
    with pytest.raises(UsageError, match="--offline: jupyter"):
        devrun.plan_run(client, "img", services=["jupyter"], offline=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("nofile=1024:2048", (1024, 2048)), ("memlock=unlimited", (-1, -1)), ("stack=8:-1", (8, -1))],
)
def test_ulimit_forms(text: str, expected: tuple[int, int]) -> None:
    (limit,) = devrun.parse_ulimits([text])
    assert (limit["Soft"], limit["Hard"]) == expected


@pytest.mark.parametrize("text", ["memlock", "bogus=1", "nofile=abc", "nofile=10:5", "nofile=-1:5"])
def test_bad_ulimits_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="--ulimit"):
        devrun.parse_ulimits([text])


@pytest.mark.parametrize("value", ["host", "private", "shareable", "none", "container:trainer-1"])
def test_ipc_modes(value: str) -> None:
    assert devrun.check_ipc(value) == value


@pytest.mark.parametrize("value", ["hostt", "container:", "container:../x", "ns:1"])
def test_bad_ipc_modes_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match="--ipc"):
        devrun.check_ipc(value)


def _frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_demux_splits_stdout_and_stderr_across_chunk_borders() -> None:
    got: list[tuple[int, bytes]] = []
    demux = devrun.Demux(lambda stream, data: got.append((stream, data)))
    stream = _frame(1, b"out\n") + _frame(2, b"err\n") + _frame(1, b"")
    for i in range(0, len(stream), 5):
        demux.feed(stream[i:i + 5])
    assert got == [(1, b"out\n"), (2, b"err\n"), (1, b"")]


def test_pump_sends_stdin_closes_it_and_reads_until_the_engine_closes() -> None:
    ours, engine = socket.socketpair()
    read_end, write_end = os.pipe()
    os.write(write_end, b"hello\n")
    os.close(write_end)
    got: list[tuple[int, bytes]] = []

    def engine_side() -> None:
        received = b""
        while chunk := engine.recv(100):  # ends when envkit shuts its write side
            received += chunk
        engine.sendall(_frame(1, received.upper()) + _frame(2, b"bye\n"))
        engine.close()

    import threading

    thread = threading.Thread(target=engine_side)
    thread.start()
    devrun.pump(ours, read_end, lambda s, d: got.append((s, d)), multiplexed=True)
    thread.join(5)
    os.close(read_end)
    ours.close()
    assert got == [(1, b"HELLO\n"), (2, b"bye\n")]
