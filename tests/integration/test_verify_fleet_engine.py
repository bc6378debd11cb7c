"""verify --host against two real engines on this machine: the default engine reached over SSH (an
sshd the test starts on loopback, key-only, its host key pinned in a known_hosts file) and the
second dockerd through a Docker context naming its socket. Then the sshd is stopped: the second
host still reports, and the exit code and summary name the one that failed.

The image is the session's shared build of pytorch-cuda:2.8 (tests/conftest.py), or
ENVKIT_TEST_IMAGE when set (an image already on the default engine). No GPU here: --cpu, small.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
CONTEXT = "envkit-fleet-second"
LABEL_VERIFY_RUN = "io.envkit.verify-run"
SECOND_SOCK = "/run/envkit-docker2.sock"  # the second_engine fixture's (tests/conftest.py)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SshEngine:
    url: str
    env: dict[str, str]  # HOME with the key, ssh config, known_hosts and the Docker context
    sshd: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.sshd.poll() is None:
            self.sshd.terminate()
            self.sshd.wait(timeout=10)


@pytest.fixture(scope="module")
def ssh_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshEngine]:
    """An sshd on a free loopback port, public keys only, whose sessions reach the default engine
    (`docker system dial-stdio` as root). The client side lives in a HOME of its own."""
    if not os.path.exists(SSHD):
        pytest.fail("sshd is missing: run scripts/test-deps.sh (openssh-server)")
    base = tmp_path_factory.mktemp("fleet-ssh")
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run([*keygen, "-f", str(base / "host_key")], check=True)
    subprocess.run([*keygen, "-f", str(home / ".ssh" / "fleet_key")], check=True)
    shutil.copy(home / ".ssh" / "fleet_key.pub", base / "authorized_keys")
    port = _free_port()
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\nPidFile {base / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(base / "sshd.log", "wb"))  # noqa: SIM115
    try:
        keys = ""
        for _ in range(50):
            found = subprocess.run(["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
                                   capture_output=True, text=True)
            keys = found.stdout
            if keys.strip():
                break
            time.sleep(0.2)
        assert keys.strip(), f"sshd did not answer: {(base / 'sshd.log').read_text()[-2000:]}"
        (home / ".ssh" / "known_hosts").write_text(keys)  # the host key, pinned: no trust on first use
        (home / ".ssh" / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {home / '.ssh' / 'fleet_key'}\n")
        # A Docker context naming the second engine's socket, as `docker context create` writes it.
        meta = home / ".docker" / "contexts" / "meta" / hashlib.sha256(CONTEXT.encode()).hexdigest()
        meta.mkdir(parents=True)
        (meta / "meta.json").write_text(json.dumps(
            {"Name": CONTEXT, "Metadata": {}, "Endpoints": {"docker": {"Host": f"unix://{SECOND_SOCK}"}}}))
        env = {"HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
               "ENVKIT_STATE_DIR": str(base / "state")}
        yield SshEngine(url=f"ssh://root@127.0.0.1:{port}", env=env, sshd=sshd)
    finally:
        if sshd.poll() is None:
            sshd.terminate()
            sshd.wait(timeout=10)


def envkit_fleet(
    image: str, engine: SshEngine, out: Path, *flags: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "envkit", "verify", image, "--cpu", *flags,
         "--host", engine.url, "--host", CONTEXT, "--json", str(out)],
        capture_output=True, text=True, timeout=3000, cwd=REPO,
        env={**os.environ, **engine.env, "COLUMNS": "120"},
    )
    data = json.loads(out.read_text()) if out.is_file() else {}
    return proc, data


def summary_of(stderr: str) -> str:
    """The summary table and what follows it, as the CLI printed it."""
    start = stderr.rfind(" on 2 hosts")
    return stderr[stderr.rfind("\n", 0, start) + 1 :] if start >= 0 else stderr[-3000:]


def no_leftovers(client: Any, data: dict[str, Any]) -> None:
    for host in data["hosts"]:
        if host["report"] is None:
            continue
        run_id = host["report"]["options"]["run_id"]
        found = client.containers.list(all=True, filters={"label": f"{LABEL_VERIFY_RUN}={run_id}"})
        assert found == [], f"verify left containers behind on {host['host']}"


def test_two_engines_one_over_ssh_then_one_stopped(
    image: str,
    docker_client: docker.DockerClient,
    second_engine: Any,
    ssh_engine: SshEngine,
    tmp_path: Path,
) -> None:
    image_id = docker_client.images.get(image).id
    second: Any = second_engine.client
    held_before = any(i.id == image_id for i in second.images.list(all=True))

    proc, data = envkit_fleet(image, ssh_engine, tmp_path / "both.json", "--steps", "2")
    print(summary_of(proc.stderr))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert data["exit_code"] == 0 and data["image_id"] == image_id
    over_ssh, by_context = data["hosts"]
    assert (over_ssh["host"], by_context["host"]) == (ssh_engine.url, CONTEXT)
    assert by_context["engine"] == f"unix://{SECOND_SOCK}"
    # The default engine holds the image already; the second engine got it streamed (or held it).
    assert over_ssh["transfer"]["method"] == "present"
    assert by_context["transfer"]["method"] == ("present" if held_before else "stream")
    if not held_before:
        assert by_context["transfer"]["bytes"] > 1 << 30
    assert any(i.id == image_id for i in second.images.list())
    for host in (over_ssh, by_context):
        report = host["report"]
        assert host["status"] == "pass" and report["verdict"]["status"] == "pass"
        assert report["target"]["image_id"] == image_id and report["probe"]["numerics_ok"] is True
        assert set(host["images_per_s"]) == {"resnet50", "yolo"} and min(host["images_per_s"].values()) > 0
        assert host["gpu"].startswith("cpu (")
        assert {c["name"] for c in report["preflight"]} >= {"docker engine", "disk"}
    # Progress lines carry their host; the summary puts both side by side.
    assert f"{ssh_engine.url}: image: present" in proc.stderr
    assert f"{CONTEXT}: preflight, probe and benchmark" in proc.stderr
    summary = summary_of(proc.stderr)
    assert "resnet50 img/s" in summary and "yolo img/s" in summary
    assert summary.count("pass (0)") == 2
    no_leftovers(docker_client, data)
    no_leftovers(second, data)

    ssh_engine.stop()
    proc, data = envkit_fleet(image, ssh_engine, tmp_path / "one.json", "--steps", "1", "--workload", "resnet50")
    print(summary_of(proc.stderr))
    assert proc.returncode == 3, proc.stderr[-4000:]
    assert data["exit_code"] == 3
    over_ssh, by_context = data["hosts"]
    assert over_ssh["status"] == "unreachable" and over_ssh["report"] is None
    assert "Unable to connect" in over_ssh["error"]["message"]
    assert by_context["status"] == "pass" and by_context["transfer"]["method"] == "present"
    assert by_context["images_per_s"]["resnet50"] > 0
    summary = summary_of(proc.stderr)
    assert "unreachable (3)" in summary and "pass (0)" in summary
    assert f"{ssh_engine.url}: exit 3, docker engine unreachable" in proc.stderr
    assert f"1 of 2 hosts failed ({ssh_engine.url})" in proc.stderr
    no_leftovers(second, data)
