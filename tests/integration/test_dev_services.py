"""Dev images on a real engine, driven by real clients: curl-like HTTP, a headless browser, ssh.

One dev image is built through the CLI for the session and removed at the end. Every container a
test starts goes through `envkit run --detach` and is removed by the fixture that started it.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, image_ids, remove_new_images, run_envkit

# yolo:2.8-dev is pytorch-cuda:2.8-dev's template and services plus Ultralytics and ONNX: one build
# serves the service tests and the YOLO workflow below.
DEV_SPEC = os.environ.get("ENVKIT_TEST_DEV_SPEC", "yolo:2.8-dev")
ARTIFACTS = REPO / "test-artifacts"
SSH_OPTIONS = [
    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,800", "--virtual-time-budget=20000",
]


@pytest.fixture(scope="session")
def dev_image(docker_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """One real build of the dev image through the CLI, shared by the tests here; the image, its
    builder stage and its unsealed twin are removed at the end (see remove_new_images)."""
    before = image_ids(docker_client)
    tag = f"envkit-test/pytorch-cuda:2.8-dev-{uuid.uuid4().hex[:8]}"
    # Unsealed: the layer scan below then sees everything the build wrote, volatile files included.
    result = run_envkit("build", DEV_SPEC, "--tag", tag, "--json")
    if result.returncode != 0:
        remove_new_images(docker_client, before)
        pytest.fail(f"building {DEV_SPEC} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    yield tag
    remove_new_images(docker_client, before)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envkit-state")


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh key pair; returns the private key (the public one is beside it, .pub)."""
    directory = tmp_path_factory.mktemp("ssh")
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "envkit-test", "-f", str(key)],
                   check=True)
    return key


Starter = Callable[..., dict[str, Any]]


@pytest.fixture
def start(dev_image: str, state_dir: Path, docker_client) -> Iterator[Starter]:  # type: ignore[no-untyped-def]
    """`envkit run IMAGE ARGS --detach --json`; every container started is removed afterwards."""
    names: list[str] = []

    def _start(*args: str, expect: int = 0) -> dict[str, Any]:
        name = f"envkit-test-{uuid.uuid4().hex[:8]}"
        names.append(name)
        result = run_envkit("run", dev_image, *args, "--name", name, "--detach", "--json",
                            env={"ENVKIT_STATE_DIR": str(state_dir)}, timeout=600)
        assert result.returncode == expect, result.stderr[-3000:]
        if expect != 0:
            return {"stderr": result.stderr, "name": name}
        data = json.loads(result.stdout)
        data["stderr"] = result.stderr
        return data

    yield _start
    for name in names:
        try:
            docker_client.api.remove_container(name, force=True)
        except Exception:
            pass


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=15) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ssh(key: Path | None, port: int, user: str, *command: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    identity = ["-i", str(key)] if key else []
    return subprocess.run(
        ["ssh", *SSH_OPTIONS, *extra, *identity, "-p", str(port), f"{user}@127.0.0.1", *command],
        capture_output=True, text=True, timeout=60,
    )


def test_jupyter_needs_its_token_over_loopback(start: Starter, state_dir: Path) -> None:
    data = start("--jupyter", "--jupyter-port", "0")
    jupyter = data["services"]["jupyter"]
    base = f"http://127.0.0.1:{jupyter['port']}"
    token = re.search(r"token=([A-Za-z0-9_-]+)", jupyter["login_url"]).group(1)  # type: ignore[union-attr]
    assert jupyter["host"] == "127.0.0.1" and len(token) >= 32

    assert http_status(f"{base}/api/status") in (401, 403)
    assert http_status(f"{base}/api/status", {"Authorization": "token " + "x" * 48}) in (401, 403)
    assert http_status(f"{base}/api/status", {"Authorization": f"token {token}"}) == 200
    assert http_status(f"{base}/lab?token={token}") == 200

    token_file = Path(data["token_file"])
    assert token_file.read_text() == token
    assert token_file.is_relative_to(state_dir)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def _login(base: str, password: str) -> tuple[int, int]:
    """Jupyter's login form, as a browser posts it: (status of the POST, status of the API after)."""
    import http.cookiejar
    import urllib.parse

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{base}/login", timeout=15).read()
    xsrf = next(cookie.value for cookie in jar if cookie.name == "_xsrf")
    form = urllib.parse.urlencode({"_xsrf": xsrf, "password": password}).encode()
    try:
        posted = opener.open(f"{base}/login?next=%2Flab", data=form, timeout=15).status
    except urllib.error.HTTPError as error:
        posted = error.code
    try:
        api = opener.open(f"{base}/api/status", timeout=15).status
    except urllib.error.HTTPError as error:
        api = error.code
    return posted, api


def test_a_hashed_password_logs_in_and_the_token_still_works(
    start: Starter, dev_image: str, tmp_path: Path
) -> None:
    made = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python", dev_image, "-c",
         "from jupyter_server.auth import passwd; print(passwd('correct horse battery'))"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    hash_file = tmp_path / "jupyter.hash"
    hash_file.write_text(made.stdout)
    refused = start("--jupyter", "--jupyter-port", "0", "--jupyter-password-file", str(tmp_path / "nope"),
                    expect=2)
    assert "--jupyter-password-file" in refused["stderr"]
    plain = tmp_path / "plain"
    plain.write_text("correct horse battery\n")
    refused = start("--jupyter", "--jupyter-port", "0", "--jupyter-password-file", str(plain), expect=2)
    assert "must hold a hash, not a password" in refused["stderr"]

    data = start("--jupyter", "--jupyter-port", "0", "--jupyter-password-file", str(hash_file))
    base = f"http://127.0.0.1:{data['services']['jupyter']['port']}"
    assert _login(base, "correct horse battery") == (200, 200)
    assert _login(base, "wrong horse")[1] in (401, 403)
    token = Path(data["token_file"]).read_text()
    assert http_status(f"{base}/api/status", {"Authorization": f"token {token}"}) == 200


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is missing: run scripts/test-deps.sh"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def test_a_headless_browser_loads_the_lab_with_the_token_only(start: Starter, tmp_path: Path) -> None:
    data = start("--jupyter", "--jupyter-port", "0")
    login_url = data["services"]["jupyter"]["login_url"]
    bare_url = data["services"]["jupyter"]["url"]

    with_token = _chromium("--dump-dom", login_url, profile=tmp_path / "profile-1")
    assert with_token.returncode == 0, with_token.stderr[-2000:]
    assert "jp-LabShell" in with_token.stdout and "jp-Launcher" in with_token.stdout

    without = _chromium("--dump-dom", bare_url, profile=tmp_path / "profile-2")
    assert "jp-LabShell" not in without.stdout
    assert "/login" in without.stdout

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "jupyterlab.png"
    screenshot.unlink(missing_ok=True)
    shot = _chromium(f"--screenshot={screenshot}", login_url, profile=tmp_path / "profile-3")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000


def test_tensorboard_serves_the_logs_of_a_torchrun_training_in_the_container(
    start: Starter, dev_image: str, state_dir: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    os.chown(workspace, 1000, 1000)
    train = (
        "python /examples/make_dataset.py --out /workspace/data --classes 3 --per-class 24 --val-per-class 6 "
        "--size 32 && torchrun --nproc_per_node=2 /examples/train_resnet.py --data /workspace/data "
        "--arch resnet18 --image-size 32 --epochs 2 --batch-size 8 --workers 1 "
        "--logdir /workspace/runs/resnet18 --checkpoint-dir /workspace/checkpoints"
    )
    result = run_envkit(
        "run", dev_image, "-v", f"{workspace}:/workspace", "-v", f"{REPO / 'examples'}:/examples:ro",
        "--", "bash", "-c", train, env={"ENVKIT_STATE_DIR": str(state_dir)}, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) on cpu" in result.stdout
    assert "epoch 2/2" in result.stdout
    assert (workspace / "checkpoints" / "last.pt").stat().st_size > 1_000_000
    assert list((workspace / "runs" / "resnet18").glob("events.out.tfevents.*"))

    data = start("--tensorboard", "--tensorboard-port", "0", "-v", f"{workspace}:/workspace")
    base = data["services"]["tensorboard"]["url"].rstrip("/")
    deadline = time.monotonic() + 90
    points: list[Any] = []
    while time.monotonic() < deadline:
        runs = http_json(f"{base}/data/runs")
        if "resnet18" in runs:
            points = http_json(f"{base}/data/plugin/scalars/scalars?run=resnet18&tag=train/loss")
            if points:
                break
        time.sleep(2)
    assert points, "TensorBoard never showed the training's train/loss"
    assert len(points) >= 2 and all(p[2] > 0 for p in points)  # [wall_time, step, value]
    accuracy = http_json(f"{base}/data/plugin/scalars/scalars?run=resnet18&tag=val/accuracy")
    assert [p[1] for p in accuracy] == [0, 1]


def test_ssh_logs_in_with_the_key_only_and_never_as_root(start: Starter, ssh_key: Path) -> None:
    data = start("--ssh", "--authorized-keys", f"{ssh_key}.pub", "--ssh-port", "0")
    port = data["services"]["ssh"]["port"]
    assert data["user"] == "envkit"
    assert f"ssh -p {port} envkit@127.0.0.1" in data["stderr"]

    ok = ssh(ssh_key, port, "envkit", "id -u; python -c 'import torch; print(torch.__version__)'")
    assert ok.returncode == 0, ok.stderr
    uid, version = ok.stdout.split()
    assert uid == "1000" and version.startswith("2.8.0")

    password = ssh(None, port, "envkit", "true",
                   extra=("-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"))
    assert password.returncode == 255
    assert "Permission denied (publickey)" in password.stderr  # no password method is even offered

    root = ssh(ssh_key, port, "root", "true")
    assert root.returncode == 255
    assert "Permission denied" in root.stderr


def _host_key(port: int) -> str:
    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
                          capture_output=True, text=True, timeout=60)
    keys = [line.split()[-1] for line in scan.stdout.splitlines() if "ssh-ed25519" in line]
    assert keys, scan.stderr
    return keys[0]


def test_two_containers_of_one_image_have_different_host_keys(
    start: Starter, ssh_key: Path, dev_image: str
) -> None:
    first = start("--ssh", "--authorized-keys", f"{ssh_key}.pub", "--ssh-port", "0")
    second = start("--ssh", "--authorized-keys", f"{ssh_key}.pub", "--ssh-port", "0")
    assert _host_key(first["services"]["ssh"]["port"]) != _host_key(second["services"]["ssh"]["port"])
    # And the image itself carries none.
    listing = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", dev_image, "-c",
         "ls -A /etc/envkit/ssh; ls /etc/ssh | grep host || true"],
        capture_output=True, text=True, timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() == ""


def _scan_saved_image(docker_client, tag: str, needles: set[bytes]) -> tuple[set[bytes], list[str]]:  # type: ignore[no-untyped-def]
    """Stream `docker save`: which needles occur anywhere, and which host-key files any layer holds."""
    read_fd, write_fd = os.pipe()
    found: set[bytes] = set()
    key_files: list[str] = []
    keep = max(len(n) for n in needles)
    import threading

    def pump() -> None:
        with os.fdopen(write_fd, "wb") as sink:
            for chunk in docker_client.api.get_image(tag, chunk_size=8 * 1024 * 1024):
                sink.write(chunk)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb") as source, tarfile.open(fileobj=source, mode="r|") as outer:
        for member in outer:
            handle = outer.extractfile(member)
            if handle is None:
                continue
            if member.name.endswith("layer.tar") or "blobs/" in member.name:
                with tarfile.open(fileobj=handle, mode="r|") as layer:
                    for entry in layer:
                        base = entry.name.rsplit("/", 1)[-1]
                        if re.fullmatch(r"ssh_host_\w+_key(\.pub)?", base):
                            key_files.append(entry.name)
                        content = layer.extractfile(entry) if entry.isreg() else None
                        tail = b""
                        while content is not None and (chunk := content.read(4 * 1024 * 1024)):
                            window = tail + chunk
                            found |= {n for n in needles if n in window}
                            tail = window[-keep:]
            else:
                data = handle.read()
                found |= {n for n in needles if n in data}
    thread.join()
    return found, key_files


def test_no_token_or_key_in_inspect_history_labels_or_layers(
    start: Starter, ssh_key: Path, dev_image: str, docker_client  # type: ignore[no-untyped-def]
) -> None:
    data = start("--jupyter", "--ssh", "--authorized-keys", f"{ssh_key}.pub",
                 "--jupyter-port", "0", "--ssh-port", "0")
    token = Path(data["token_file"]).read_text().encode()
    public_body = Path(f"{ssh_key}.pub").read_text().split()[1].encode()
    needles = {token, public_body}

    inspected = subprocess.run(["docker", "inspect", data["name"], dev_image], capture_output=True,
                               check=True).stdout
    history = subprocess.run(["docker", "history", "--no-trunc", dev_image], capture_output=True,
                             check=True).stdout
    labels = json.dumps(docker_client.images.get(dev_image).labels).encode()
    for where, text in (("docker inspect", inspected), ("docker history", history), ("labels", labels)):
        assert not [n for n in needles if n in text], f"a secret shows in {where}"

    # The secrets are where Jupyter and sshd read them: in the container, owned by its user, 0600.
    modes = subprocess.run(["docker", "exec", data["name"], "stat", "-c", "%a %u %n",
                            "/run/envkit/jupyter_token", "/run/envkit/authorized_keys"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    assert all(line.startswith("600 1000 ") for line in modes if line)

    found, key_files = _scan_saved_image(docker_client, dev_image, needles)
    assert not found, "a token or key is in a layer of the image"
    assert not key_files, f"SSH host keys are baked into a layer: {key_files}"


def _host_addresses() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if ":" not in a and not a.startswith("127.")]


def test_nothing_is_published_on_all_interfaces_by_default(start: Starter, ssh_key: Path) -> None:
    data = start("--jupyter", "--tensorboard", "--ssh", "--authorized-keys", f"{ssh_key}.pub",
                 "--jupyter-port", "0", "--tensorboard-port", "0", "--ssh-port", "0")
    inspected = json.loads(subprocess.run(["docker", "inspect", data["name"]], capture_output=True,
                                          check=True).stdout)[0]
    bindings = inspected["HostConfig"]["PortBindings"]
    assert set(bindings) == {"8888/tcp", "6006/tcp", "2222/tcp"}
    assert all(b["HostIp"] == "127.0.0.1" for values in bindings.values() for b in values)
    published = inspected["NetworkSettings"]["Ports"]
    assert all(b["HostIp"] == "127.0.0.1" for values in published.values() for b in values)

    addresses = _host_addresses()
    assert addresses, "the host has no non-loopback IPv4 address to test from"
    for service in ("jupyter", "tensorboard", "ssh"):
        port = data["services"][service]["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        for address in addresses:
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=5).close()


def test_a_port_already_taken_is_named_with_its_holder(start: Starter) -> None:
    port = free_port()
    first = start("--jupyter", "--jupyter-port", str(port))
    second = start("--jupyter", "--jupyter-port", str(port), expect=2)
    assert f"port {port} on 127.0.0.1 is already in use" in second["stderr"]
    assert f"container {first['name']}" in second["stderr"]
    assert "--jupyter-port" in second["stderr"]


def test_the_healthcheck_turns_healthy_and_fails_for_a_service_that_is_not_there(start: Starter) -> None:
    data = start("--jupyter", "--tensorboard", "--jupyter-port", "0", "--tensorboard-port", "0")
    deadline = time.monotonic() + 150
    status = ""
    while time.monotonic() < deadline:
        inspected = json.loads(subprocess.run(["docker", "inspect", data["name"]], capture_output=True,
                                              check=True).stdout)[0]
        status = inspected["State"]["Health"]["Status"]
        if status != "starting":
            break
        time.sleep(3)
    assert status == "healthy", inspected["State"]["Health"]
    probe = ["python", "/usr/local/lib/envkit/healthcheck.py"]
    ok = subprocess.run(["docker", "exec", data["name"], *probe], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    missing = subprocess.run(["docker", "exec", "-e", "ENVKIT_SERVICES=jupyter,ssh", data["name"], *probe],
                             capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stdout.startswith("ssh: ") and "jupyter" not in missing.stdout


def test_ps_lists_and_stop_removes_only_envkit_containers(
    start: Starter, state_dir: Path, dev_image: str
) -> None:
    data = start("--tensorboard", "--tensorboard-port", "0")
    env = {"ENVKIT_STATE_DIR": str(state_dir)}
    listed = run_envkit("ps", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    mine = [c for c in json.loads(listed.stdout) if c["name"] == data["name"]]
    assert mine and mine[0]["services"] == ["tensorboard"] and mine[0]["status"] == "running"

    outsider = f"envkit-test-outsider-{uuid.uuid4().hex[:6]}"
    subprocess.run(["docker", "create", "--name", outsider, dev_image, "true"], check=True, capture_output=True)
    try:
        refused = run_envkit("stop", outsider, env=env)
        assert refused.returncode == 2
        assert "not a container envkit started" in refused.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", outsider], capture_output=True)

    stopped = run_envkit("stop", data["name"], env=env)
    assert stopped.returncode == 0, stopped.stderr
    gone = subprocess.run(["docker", "ps", "-aq", "--filter", f"name=^{data['name']}$"],
                          capture_output=True, text=True)
    assert gone.stdout.strip() == ""


def test_gpus_need_the_nvidia_runtime_and_say_so(dev_image: str, state_dir: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    result = run_envkit("run", dev_image, "--gpus", "all", "--", "nvidia-smi", "-L",
                        env={"ENVKIT_STATE_DIR": str(state_dir)}, timeout=300)
    runtimes = docker_client.info().get("Runtimes") or {}
    if "nvidia" in runtimes or shutil.which("nvidia-container-runtime-hook"):
        assert result.returncode == 0, result.stderr[-2000:]
        assert "GPU 0" in result.stdout
    else:
        assert result.returncode == 7, result.stderr[-2000:]
        assert "NVIDIA" in result.stderr and "Traceback" not in result.stderr
    leftovers = docker_client.containers.list(all=True, filters={"ancestor": dev_image})
    assert leftovers == []


def test_an_interactive_ssh_login_gets_the_venv_and_workspace(start: Starter, ssh_key: Path) -> None:
    """A login shell with a pty (what people and editors get), not `ssh host cmd`."""
    data = start("--ssh", "--authorized-keys", f"{ssh_key}.pub", "--ssh-port", "0")
    port = data["services"]["ssh"]["port"]
    result = subprocess.run(
        ["ssh", *SSH_OPTIONS, "-tt", "-i", str(ssh_key), "-p", str(port), "envkit@127.0.0.1"],
        input="echo \"PY=$(command -v python) PWD=$(pwd) SHELL=$SHELL VENV=$VIRTUAL_ENV\"; exit\n",
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "PY=/opt/venv/bin/python PWD=/workspace SHELL=/bin/bash VENV=/opt/venv" in result.stdout
    tools = ssh(ssh_key, port, "envkit", "git --version && tmux -V && cc --version | head -1")
    assert tools.returncode == 0, tools.stderr


# A Jupyter terminal, driven over its websocket from inside the container (the image's own tornado):
# what a user typing `which python` into JupyterLab's terminal gets back.
TERMINAL_CLIENT = r"""
import asyncio, json, sys, urllib.request
from tornado import httpclient, websocket

token, base = sys.argv[1], "127.0.0.1:8888"
headers = {"Authorization": f"token {token}"}
made = urllib.request.Request(f"http://{base}/api/terminals", data=b"{}", method="POST",
                              headers={**headers, "Content-Type": "application/json"})
name = json.load(urllib.request.urlopen(made, timeout=30))["name"]

async def main():
    ws = await websocket.websocket_connect(
        httpclient.HTTPRequest(f"ws://{base}/terminals/websocket/{name}", headers=headers))
    await ws.write_message(json.dumps(
        ["stdin", 'echo "PY=$(command -v python) PWD=$(pwd) VENV=$VIRTUAL_ENV LOGIN=$(shopt -q login_shell && echo yes) SHELL=$0 END"\r']))
    seen = ""
    while "END\r" not in seen and "END\n" not in seen:
        message = await asyncio.wait_for(ws.read_message(), 30)
        if message is None:
            break
        kind, *rest = json.loads(message)
        if kind == "stdout":
            seen += rest[0]
    print(seen)

asyncio.run(main())
"""


def test_a_jupyter_terminal_is_a_login_shell_with_the_venv_in_workspace(
    start: Starter, docker_client  # type: ignore[no-untyped-def]
) -> None:
    data = start("--jupyter", "--jupyter-port", "0")
    token = Path(data["token_file"]).read_text().strip()
    container = docker_client.containers.get(data["name"])
    code, output = container.exec_run(["python", "-c", TERMINAL_CLIENT, token], user="1000")
    text = output.decode(errors="replace")
    assert code == 0, text[-3000:]
    assert "PY=/opt/venv/bin/python PWD=/workspace VENV=/opt/venv LOGIN=yes SHELL=/bin/bash END" in text, text[-3000:]


# The YOLO workflow of docs/quickstart.md, on the tiny generated detection dataset, with no network.
MAKE_DATA = "python /examples/make_yolo_dataset.py --out data/boxes --train 8 --val 4 --size 64"
YOLO_TRAIN = ("yolo train data=data/boxes/data.yaml epochs=1 imgsz=64 batch=4 workers=0 device=cpu "
              "plots=False project=/workspace/runs exist_ok=True")


@pytest.fixture
def yolo_workspace(tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    os.chown(workspace, 1000, 1000)
    return workspace


def _yolo(dev_image: str, workspace: Path, state_dir: Path, script: str, *extra: str) -> subprocess.CompletedProcess:
    result = run_envkit(
        "run", dev_image, "--offline", "-e", "YOLO_OFFLINE=True", *extra, "-v", f"{workspace}:/workspace",
        "-v", f"{REPO / 'examples'}:/examples:ro",
        "--", "bash", "-c", script, env={"ENVKIT_STATE_DIR": str(state_dir)}, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def test_yolo_trains_from_a_model_yaml_and_exports_onnx_offline(
    dev_image: str, yolo_workspace: Path, state_dir: Path
) -> None:
    script = (
        f"{MAKE_DATA} && {YOLO_TRAIN} model=yolo11n.yaml name=scratch"
        " && yolo export model=/workspace/runs/scratch/weights/last.pt format=onnx imgsz=64"
        " && python -c \"import onnxruntime as ort; s = ort.InferenceSession('/workspace/runs/scratch/weights/last.onnx');"
        " print('onnx input', s.get_inputs()[0].shape)\""
    )
    result = _yolo(dev_image, yolo_workspace, state_dir, script)
    assert (yolo_workspace / "runs" / "scratch" / "weights" / "last.pt").stat().st_size > 100_000
    assert (yolo_workspace / "runs" / "scratch" / "weights" / "last.onnx").stat().st_size > 100_000
    assert "onnx input [1, 3, 64, 64]" in result.stdout


def test_yolo_trains_from_weights_fetched_once_into_the_host_cache(
    dev_image: str, yolo_workspace: Path, state_dir: Path, tmp_path: Path
) -> None:
    """Weights made here stand in for a published yolov8n.pt: served on loopback, fetched by sha256
    with `envkit fetch`, then used by `yolo train model=yolov8n.pt` with no network."""
    served = tmp_path / "served"
    served.mkdir()
    os.chown(served, 1000, 1000)
    _yolo(dev_image, yolo_workspace, state_dir, "python -c \"from ultralytics import YOLO; "
          "YOLO('yolov8n.yaml').save('/served/yolov8n.pt')\"", "-v", f"{served}:/served")
    weights = (served / "yolov8n.pt").read_bytes()
    sha = hashlib.sha256(weights).hexdigest()

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/yolov8n.pt"
    env = {"ENVKIT_STATE_DIR": str(state_dir), "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    try:
        first = run_envkit("fetch", url, "--sha256", sha, "--into", str(yolo_workspace), "--json", env=env)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["downloaded"] is True
    finally:
        httpd.shutdown()
        httpd.server_close()
    # The server is gone: a second fetch is served by the host cache.
    (yolo_workspace / "yolov8n.pt").unlink()
    again = run_envkit("fetch", url, "--sha256", sha, "--into", str(yolo_workspace), "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["downloaded"] is False
    assert (yolo_workspace / "yolov8n.pt").read_bytes() == weights

    script = f"{MAKE_DATA} && {YOLO_TRAIN} model=yolov8n.pt name=pretrained"
    result = _yolo(dev_image, yolo_workspace, state_dir, script)
    assert (yolo_workspace / "runs" / "pretrained" / "weights" / "last.pt").is_file()
    assert "Downloading" not in result.stdout + result.stderr
