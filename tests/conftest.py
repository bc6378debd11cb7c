"""Shared fixtures. Heavy ones (the torch image) are built once per session and removed at the end.

Tests under tests/integration need a real Docker engine; in CI the engine is started by .ci/run, so
a missing engine is a failure there, never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGE = os.environ.get("ENVKIT_TEST_SPEC", "pytorch-cuda:2.8")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.docker)


def run_envkit(
    *args: str, env: dict[str, str] | None = None, timeout: int = 3600
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "envkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def image_ids(client) -> set[str]:  # type: ignore[no-untyped-def]
    """Every image ID on the engine, intermediate ones included."""
    return {image["Id"] for image in client.api.images(all=True)}


def remove_new_images(client, before: set[str], keep: tuple[str, ...] = ()) -> None:  # type: ignore[no-untyped-def]
    """Remove images that appeared since ``before`` (newest first), leaving anything older alone.

    A build leaves its system part behind as build cache; tests take back what they made.
    """
    import docker.errors

    if os.environ.get("ENVKIT_TEST_KEEP_CACHE") == "1":
        # Developers re-running the suite keep the build cache; the test tags still go.
        for image_id in image_ids(client) - before:
            for tag in client.api.inspect_image(image_id).get("RepoTags") or []:
                if tag.startswith("envkit-test/"):
                    client.api.remove_image(tag, noprune=True)
        return
    for _ in range(3):  # children before parents: a few passes settle the order
        leftover = image_ids(client) - before
        if not leftover:
            return
        for image_id in leftover:
            if image_id in keep:
                continue
            try:
                client.api.remove_image(image_id, force=True, noprune=False)
            except docker.errors.APIError:
                continue


# What the integration suite holds on the engine's disk at its peak (the torch image and the images
# sharing its layers, bundles, a registry, a second engine's restores, wheel caches), with room to
# spare: the peak measured is in README.md (Development). ENVKIT_TEST_MIN_FREE_GB overrides it.
MIN_FREE_GB = float(os.environ.get("ENVKIT_TEST_MIN_FREE_GB", "32"))


def check_engine_disk(client, need_gb: float = MIN_FREE_GB) -> None:  # type: ignore[no-untyped-def]
    """Fail before the first build, not midway through a seal, when the engine's disk is too full."""
    import shutil

    root = client.info().get("DockerRootDir") or "/var/lib/docker"
    try:
        free_gb = shutil.disk_usage(root).free / 1e9
    except OSError:  # a remote engine: its disk cannot be read from here
        return
    if free_gb < need_gb:
        pytest.fail(
            f"the integration tests need about {need_gb:.0f} GB free on the engine's disk; {root} has "
            f"{free_gb:.1f} GB free. Remove images you do not need (`docker image prune`, `docker rmi`) or, "
            "knowing the risk of a disk-full failure midway, lower ENVKIT_TEST_MIN_FREE_GB",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    from envkit.engine.client import get_client
    from envkit.errors import EngineUnreachable

    try:
        client = get_client()
    except EngineUnreachable as exc:
        pytest.fail(f"integration tests need a Docker engine: {exc} (run scripts/engine.sh)")
    check_engine_disk(client)
    return client


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    build_json: dict
    marker_cert: str  # PEM text of a CA that was only ever given to the builder stage
    ca_bundle: Path


def _make_marker_bundle(directory: Path) -> tuple[Path, str]:
    """The host bundle plus a fresh self-signed CA: it must never show up in the image."""
    key, cert = directory / "marker.key", directory / "marker.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN=envkit-test-marker-{uuid.uuid4().hex[:8]}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    host_bundle = next(
        (Path(os.environ[v]) for v in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
         if os.environ.get(v) and Path(os.environ[v]).is_file()),
        Path("/etc/ssl/certs/ca-certificates.crt"),
    )
    bundle = directory / "bundle.crt"
    host_text = host_bundle.read_text() if host_bundle.is_file() else ""
    bundle.write_text(host_text + "\n" + cert.read_text())
    return bundle, cert.read_text()


@pytest.fixture(scope="session")
def torch_image(docker_client) -> Iterator[BuiltImage]:  # type: ignore[no-untyped-def]
    """One real build of pytorch-cuda:2.8 through the CLI, shared by every test that needs it."""
    before = image_ids(docker_client)
    # The marker CA is kept between runs so the builder stage stays cached on a developer's machine.
    workdir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "envkit-tests"
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "bundle.crt").is_file() and (workdir / "marker.pem").is_file():
        bundle, marker = workdir / "bundle.crt", (workdir / "marker.pem").read_text()
    else:
        bundle, marker = _make_marker_bundle(workdir)
    tag = f"envkit-test/pytorch-cuda:2.8-{uuid.uuid4().hex[:8]}"
    # A real build every session: without --no-cache an earlier session's identical inputs would
    # be reused from envkit's record instead of built. Developers keeping the cache skip that.
    fresh = [] if os.environ.get("ENVKIT_TEST_KEEP_CACHE") == "1" else ["--no-cache"]
    result = run_envkit("build", TEST_IMAGE, "--tag", tag, "--ca-bundle", str(bundle), "--json", *fresh)
    if result.returncode != 0:
        pytest.fail(f"building {TEST_IMAGE} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    data = json.loads(result.stdout)
    yield BuiltImage(
        tag=tag, image_id=data["image_id"], build_json=data, marker_cert=marker, ca_bundle=bundle
    )
    remove_new_images(docker_client, before)
    try:  # the image may have been there before (same ID); the test's tag still goes
        docker_client.api.remove_image(tag, noprune=True)
    except Exception:  # noqa: BLE001 - already gone with the image
        pass


@pytest.fixture(scope="module")
def image(docker_client, request: pytest.FixtureRequest) -> str:  # type: ignore[no-untyped-def]
    """The image verify tests run: ENVKIT_TEST_IMAGE when set (it must be on the engine), else the
    session's shared torch build."""
    import docker.errors

    given = os.environ.get("ENVKIT_TEST_IMAGE", "")
    if not given:
        return str(request.getfixturevalue("torch_image").tag)
    try:
        docker_client.images.get(given)
    except docker.errors.ImageNotFound:
        pytest.fail(
            f"test image {given} is not on the engine: build it (`envkit build pytorch-cuda:2.8`) "
            "or point ENVKIT_TEST_IMAGE at one with torch"
        )
    return given


@dataclass(frozen=True)
class SecondEngine:
    client: object
    env: dict[str, str]  # for run_envkit: points the CLI at the second engine


SECOND_SOCK = "/run/envkit-docker2.sock"


@pytest.fixture(scope="module")
def second_engine() -> Iterator[SecondEngine]:
    """A second dockerd with its own data-root and bridge: it stands in for another machine.

    Started by scripts/engine.sh (stopped again after the module if this fixture started it);
    whatever the module's tests leave on it is removed then, so its 20 GB do not outlive them.
    """
    from envkit.engine.client import get_client

    env = {
        "ENVKIT_DOCKER_SOCK": SECOND_SOCK,
        "ENVKIT_DOCKERD_ROOT": "/var/lib/envkit-docker2",
        "ENVKIT_DOCKERD_EXEC_ROOT": "/run/envkit-docker2",
        "ENVKIT_DOCKERD_LOG": "/var/log/envkit-dockerd2.log",
    }
    already = subprocess.run(["docker", "-H", f"unix://{SECOND_SOCK}", "version"], capture_output=True).returncode == 0
    started = subprocess.run([str(REPO / "scripts" / "engine.sh")], env={**os.environ, **env},
                             capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(f"could not start the second engine: {started.stderr[-2000:]}")
    client = get_client(f"unix://{SECOND_SOCK}")
    before = image_ids(client)
    yield SecondEngine(client=client, env={"DOCKER_HOST": f"unix://{SECOND_SOCK}"})
    remove_new_images(client, before)
    if not already:
        pid_file = Path("/run/envkit-docker2/dockerd.pid")
        if pid_file.is_file():
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
