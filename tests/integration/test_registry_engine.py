"""Registries for real: Debian's docker-registry started by scripts/registry.sh, once on loopback
over plain HTTP and once over TLS (a CA made here, trusted through the engine's certs.d) with
htpasswd users. Images are a few bytes built FROM scratch; the second engine stands in for a
machine that never built them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envkit.record.manifest import seal_manifest, write_manifest
from tests.conftest import REPO, run_envkit
from tests.unit.test_record_snapshot import _manifest

SCRIPT = REPO / "scripts" / "registry.sh"
CERTS_D = Path("/etc/docker/certs.d")
USER, PASSWORD = "envkit-ci", "correct-horse-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Registry:
    address: str  # host:port
    directory: Path

    def start(self, **env: str) -> None:
        result = subprocess.run([str(SCRIPT), "start", str(self.directory), self.address],
                                capture_output=True, text=True, env={**os.environ, **env})
        if result.returncode != 0:
            pytest.fail(f"registry.sh start failed: {result.stderr[-2000:]}")

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.directory)], check=False, capture_output=True)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _non_loopback_ipv4() -> str:
    """An address of this host outside 127.0.0.0/8, which engines trust over plain HTTP."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    addresses = [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]
    others = [a for a in addresses if not a.startswith("127.")]
    if not others:
        pytest.fail("the TLS registry test needs an IPv4 address outside 127.0.0.0/8")
    return sorted(others, key=lambda a: not a.startswith("172.17."))[0]


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = Registry(f"127.0.0.1:{_free_port('127.0.0.1')}", tmp_path_factory.mktemp("registry-plain"))
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path]]:
    """HTTPS with a CA made here and htpasswd users; yields the registry and its CA certificate."""
    directory = tmp_path_factory.mktemp("registry-tls")
    host = _non_loopback_ipv4()
    registry = Registry(f"{host}:{_free_port(host)}", directory)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt, ext = (directory / n for n in ("server.key", "server.csr", "server.crt", "server.ext"))

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=envkit-test-ca",
            "-keyout", str(ca_key), "-out", str(ca_crt),
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", str(key), "-out", str(csr))
    ext.write_text(f"subjectAltName=IP:{host}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-out", str(crt), "-extfile", str(ext))
    htpasswd = directory / "htpasswd"
    line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True)
    htpasswd.write_text(line.stdout.strip() + "\n")
    registry.start(ENVKIT_REGISTRY_TLS_CERT=str(crt), ENVKIT_REGISTRY_TLS_KEY=str(key),
                   ENVKIT_REGISTRY_HTPASSWD=str(htpasswd))
    yield registry, ca_crt
    registry.stop()
    shutil.rmtree(CERTS_D / registry.address, ignore_errors=True)


@pytest.fixture()
def state(tmp_path: Path) -> dict[str, str]:
    """Each test remembers its pushes in a state directory of its own."""
    return {"ENVKIT_STATE_DIR": str(tmp_path / "state")}


@pytest.fixture()
def tiny_image(docker_client) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A FROM-scratch image of one small file (unique content, so a unique ID); (tag, ID)."""
    tag = f"envkit-test/tiny:{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().hex.encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY payload /payload\n"), ("payload", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    yield tag, image.id
    # By ID, forced: a pull by digest left a repo@digest reference that untagging would not remove.
    docker_client.api.remove_image(image.id, force=True)


def _flat(text: str) -> str:
    """Console output with its line wrapping undone (the console wraps at the terminal's width)."""
    return " ".join(text.split()).replace("/ ", "/")


def _push(image: str, target: str, env: dict[str, str], *extra: str, password: str | None = None):  # type: ignore[no-untyped-def]
    if password is None:
        return run_envkit("push", image, target, "--json", *extra, env=env, timeout=300)
    return subprocess.run([sys.executable, "-m", "envkit", "push", image, target, "--json",
                           "--username", USER, "--password-stdin", *extra],
                          input=password + "\n", capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, cwd=REPO)


def _manifest_for(image_id: str, locations: list[str], tag: str):  # type: ignore[no-untyped-def]
    manifest = _manifest()
    image = manifest.image.model_copy(update={"id": image_id, "locations": locations, "tags": [tag]})
    return seal_manifest(manifest.model_copy(update={"image": image}))


def test_push_pull_by_digest_and_restore_on_a_second_engine_without_building(
    plain_registry: Registry, tiny_image: tuple[str, str], second_engine, state: dict[str, str], tmp_path: Path
) -> None:
    tag, image_id = tiny_image
    pushed = _push(tag, f"{plain_registry.address}/envkit-test/tiny:1", state)
    assert pushed.returncode == 0, pushed.stderr
    data = json.loads(pushed.stdout)
    location = data["location"]
    assert location.startswith(f"{plain_registry.address}/envkit-test/tiny@sha256:")
    assert data["image_id"] == image_id and data["layers_pushed"] == 1
    book = json.loads((Path(state["ENVKIT_STATE_DIR"]) / "registry" / "locations.json").read_text())
    assert book["images"][image_id] == [location]

    again = _push(tag, f"{plain_registry.address}/envkit-test/tiny:2", state)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["layers_present"] == 1 and json.loads(again.stdout)["layers_pushed"] == 0

    # A pull by digest into an engine that never saw the image gives the same image ID.
    pulled = run_envkit("pull", location, "--expect-id", image_id, "--tag", "envkit-test/pulled:1", "--json",
                        env={**second_engine.env, **state}, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["image_id"] == image_id
    assert second_engine.client.api.inspect_image("envkit-test/pulled:1")["Id"] == image_id
    second_engine.client.api.remove_image(image_id, force=True)  # the restore below starts empty

    # restore from a manifest naming the location: the identical image, and no build step ran. The tag
    # is the user's (--tag): restore never takes one from the manifest.
    manifest_path = tmp_path / "m.json"
    write_manifest(manifest_path, _manifest_for(image_id, [location], "envkit-test/restored:1"))
    images_before = {i["Id"] for i in second_engine.client.api.images(all=True)}
    restored = run_envkit("restore", str(manifest_path), "--tag", "envkit-test/restored:1", "--json",
                          env={**second_engine.env, **state}, timeout=300)
    assert restored.returncode == 0, restored.stderr
    out = json.loads(restored.stdout)
    assert out["identical"] is True and out["image_id"] == image_id and out["built"] is False
    assert second_engine.client.api.inspect_image("envkit-test/restored:1")["Id"] == image_id
    assert {i["Id"] for i in second_engine.client.api.images(all=True)} - images_before == {image_id}


def test_pulled_image_that_is_not_the_manifests_exits_5_and_tags_nothing(
    plain_registry: Registry, tiny_image: tuple[str, str], second_engine, state: dict[str, str], tmp_path: Path
) -> None:
    tag, image_id = tiny_image
    pushed = _push(tag, f"{plain_registry.address}/envkit-test/tiny:other", state)
    assert pushed.returncode == 0, pushed.stderr
    location = json.loads(pushed.stdout)["location"]
    manifest_path = tmp_path / "m.json"
    write_manifest(manifest_path, _manifest_for("sha256:" + "c" * 64, [location], "envkit-test/wrong:1"))
    refused = run_envkit("restore", str(manifest_path), "--tag", "envkit-test/wrong:1",
                         env={**second_engine.env, **state}, timeout=300)
    assert refused.returncode == 5, refused.stderr
    assert "not the manifest's" in _flat(refused.stderr)
    assert not any(i["Id"] == image_id for i in second_engine.client.api.images(all=True))
    from envkit.engine.client import find_image

    assert find_image(second_engine.client, "envkit-test/wrong:1") is None


def test_corrupted_blob_on_the_registry_disk_is_refused_and_nothing_is_tagged(
    plain_registry: Registry, tiny_image: tuple[str, str], second_engine, state: dict[str, str]
) -> None:
    tag, image_id = tiny_image
    pushed = _push(tag, f"{plain_registry.address}/envkit-test/corrupt:1", state)
    assert pushed.returncode == 0, pushed.stderr
    location = json.loads(pushed.stdout)["location"]
    engine = second_engine.client
    blobs = plain_registry.directory / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256"

    def blob(digest: str) -> Path:
        hex_digest = digest.split(":")[1]
        return blobs / hex_digest[:2] / hex_digest / "data"

    pushed_manifest = json.loads(blob(location.split("@")[1]).read_text())
    layer_blob = blob(pushed_manifest["layers"][0]["digest"])
    original = layer_blob.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    layer_blob.write_bytes(bytes(damaged))
    try:
        refused = run_envkit("pull", location, "--expect-id", image_id, "--tag", "envkit-test/corrupt:1",
                             env={**second_engine.env, **state}, timeout=300)
    finally:
        layer_blob.write_bytes(original)
    assert refused.returncode == 5, refused.stderr
    assert "does not match its digest" in _flat(refused.stderr)
    from envkit.engine.client import find_image

    assert find_image(engine, "envkit-test/corrupt:1") is None
    assert find_image(engine, image_id) is None


def test_stopped_registry_exits_6_and_restore_from_registry_names_what_it_tried(
    tiny_image: tuple[str, str], second_engine, state: dict[str, str], tmp_path: Path
) -> None:
    tag, image_id = tiny_image
    registry = Registry(f"127.0.0.1:{_free_port('127.0.0.1')}", tmp_path / "registry")
    registry.start()
    try:
        pushed = _push(tag, f"{registry.address}/envkit-test/gone:1", state)
        assert pushed.returncode == 0, pushed.stderr
    finally:
        registry.stop()
    location = json.loads(pushed.stdout)["location"]
    pulled = run_envkit("pull", location, env={**second_engine.env, **state}, timeout=300)
    assert pulled.returncode == 6, pulled.stderr
    assert "unreachable" in _flat(pulled.stderr)
    manifest_path = tmp_path / "m.json"
    write_manifest(manifest_path, _manifest_for(image_id, [location], "envkit-test/gone:1"))
    restored = run_envkit("restore", str(manifest_path), "--from-registry", "--tag", "envkit-test/gone:1",
                          env={**second_engine.env, **state}, timeout=300)
    assert restored.returncode == 6, restored.stderr
    assert location in restored.stderr.replace("\n", "")


def test_tls_registry_with_users_untrusted_ca_wrong_password_and_docker_config(
    tls_registry: tuple[Registry, Path], tiny_image: tuple[str, str], state: dict[str, str], tmp_path: Path
) -> None:
    registry, ca_crt = tls_registry
    tag, image_id = tiny_image
    target = f"{registry.address}/envkit-test/private:1"

    untrusted = _push(tag, target, state, password=PASSWORD)
    assert untrusted.returncode == 6, untrusted.stderr
    assert f"/etc/docker/certs.d/{registry.address}/ca.crt" in untrusted.stderr.replace("\n", "")

    (CERTS_D / registry.address).mkdir(parents=True, exist_ok=True)
    shutil.copy(ca_crt, CERTS_D / registry.address / "ca.crt")

    wrong = _push(tag, target, state, password="not-the-password")
    assert wrong.returncode == 6, wrong.stderr
    assert "credentials" in _flat(wrong.stderr) and "not-the-password" not in wrong.stderr + wrong.stdout

    anonymous = _push(tag, target, {**state, "DOCKER_CONFIG": str(tmp_path / "empty")})
    assert anonymous.returncode == 6, anonymous.stderr

    right = _push(tag, target, state, password=PASSWORD)
    assert right.returncode == 0, right.stderr
    assert PASSWORD not in right.stderr + right.stdout
    location = json.loads(right.stdout)["location"]
    assert PASSWORD not in (Path(state["ENVKIT_STATE_DIR"]) / "registry" / "locations.json").read_text()

    # Credentials from the user's Docker config, as `docker login` writes them.
    config = tmp_path / "docker-config"
    config.mkdir()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": token}}}))
    pulled = run_envkit("pull", location, "--expect-id", image_id, env={**state, "DOCKER_CONFIG": str(config)},
                        timeout=300)
    assert pulled.returncode == 0, pulled.stderr
