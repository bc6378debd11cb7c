"""A package mirror on the real engine: `envkit build --index-url` against a PEP 503 index served on
this host from wheels downloaded here, standing in for a regional PyPI mirror.

The index is envkit's own package server (the one offline restores use) on the engine's bridge
gateway; the host fetches the wheels from it into a wheel cache of the test's own. The image built through it must be the very image
built from PyPI (the lock's hashes decide, not where the bytes came from), every wheel must have
come from the mirror, and a mirror that serves other bytes must fail the build (exit 5).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from envkit.events import follow
from envkit.image.wheelcache import ensure_wheels
from envkit.record.offline import DirStore, PackageServer
from tests.conftest import TEST_IMAGE, BuiltImage, image_ids, remove_new_images, run_envkit

pytestmark = pytest.mark.docker


@dataclass(frozen=True)
class Wheels:
    root: Path  # wheels/<file>
    sha256: dict[str, str]  # file -> hex


def _gateway(client: docker.DockerClient) -> str:
    network = client.api.inspect_network("bridge")
    return str(network["IPAM"]["Config"][0]["Gateway"])


def _direct(host: str) -> dict[str, str]:
    """A proxy set on the host must not be asked for the mirror on the engine's own bridge."""
    return {"NO_PROXY": host, "no_proxy": host}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wheels]:
    """The locked set of the test image and envkit's pinned installer (the builder installs it from
    the same index), downloaded once with their hashes checked, as a mirror holds them."""
    from envkit.image.build import TOOLS_LOCK, plan_build

    plan = plan_build(TEST_IMAGE)
    root = tmp_path_factory.mktemp("mirror")
    requirements = root / "requirements.txt"
    requirements.write_text(plan.requirements or "")
    (root / "wheels").mkdir()
    for source in (requirements, TOOLS_LOCK):  # from the host's wheel cache, as a build fetches them
        cached = follow(ensure_wheels(source.read_text(), python=plan.spec.python, platform=plan.spec.platform,
                                      suite="bookworm"))
        for name, path in cached.paths.items():
            shutil.copyfile(path, root / "wheels" / name)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "wheels").iterdir()}
    assert any(name.startswith("torch-") for name in files) and any(name.startswith("uv-") for name in files)
    yield Wheels(root=root, sha256=files)
    shutil.rmtree(root, ignore_errors=True)


def test_a_build_through_a_mirror_gives_the_image_built_from_pypi(
    torch_image: BuiltImage, wheels: Wheels, docker_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    before = image_ids(docker_client)
    tag = f"envkit-test/mirror:{uuid.uuid4().hex[:8]}"
    try:
        with PackageServer(DirStore(wheels.root), wheels.sha256, _gateway(docker_client)) as server:
            url = f"{server.url}/simple/"
            # --no-cache and an empty wheel cache: the suite's earlier build of the same lock would
            # otherwise be reused and no wheel would be asked of the mirror.
            result = run_envkit("build", TEST_IMAGE, "--tag", tag, "--index-url", url, "--json", "--no-cache",
                                "--ca-bundle", str(torch_image.ca_bundle), timeout=3600,
                                env={**_direct(server.host), "ENVKIT_STATE_DIR": str(tmp_path / "state")})
            served = set(server.log.served)
        assert result.returncode == 0, result.stderr[-4000:]
        built = json.loads(result.stdout)
        assert built["image_id"] == torch_image.image_id
        locked = {f"wheels/{name}" for name in wheels.sha256 if not name.startswith("uv-")}
        assert locked <= served  # every locked wheel came from it, into the empty wheel cache
        attrs = docker_client.api.inspect_image(tag)
        text = json.dumps(attrs) + json.dumps(docker_client.api.history(tag))
        assert server.url.split("//")[1] not in text  # the mirror is in no label, env or history
    finally:
        try:
            docker_client.api.remove_image(tag, noprune=True)
        except docker.errors.APIError:
            pass
        remove_new_images(docker_client, before)


def test_a_mirror_serving_other_bytes_fails_the_build_and_moves_no_tag(
    torch_image: BuiltImage, wheels: Wheels, docker_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """The index advertises a small wheel's true hash but serves other bytes: hashes are enforced."""
    before = image_ids(docker_client)
    small = min((n for n in wheels.sha256 if n.endswith("-none-any.whl")),
                key=lambda n: (wheels.root / "wheels" / n).stat().st_size)
    tampered = tmp_path / "tampered"
    shutil.copytree(wheels.root / "wheels", tampered / "wheels", copy_function=lambda s, d: Path(d).symlink_to(s))
    (tampered / "wheels" / small).unlink()
    (tampered / "wheels" / small).write_bytes((wheels.root / "wheels" / small).read_bytes() + b"\0")
    tag = f"envkit-test/mirror-bad:{uuid.uuid4().hex[:8]}"
    try:
        with PackageServer(DirStore(tampered), wheels.sha256, _gateway(docker_client)) as server:
            # --no-cache and an empty wheel cache: the mirror is no input of the image, so otherwise
            # the build would rightly reuse what it already has instead of fetching anything.
            result = run_envkit("build", TEST_IMAGE, "--tag", tag, "--index-url", f"{server.url}/simple/",
                                "--ca-bundle", str(torch_image.ca_bundle), "--no-cache", timeout=3600,
                                env={**_direct(server.host), "ENVKIT_STATE_DIR": str(tmp_path / "state")})
        assert result.returncode == 5, result.stderr[-3000:]  # an integrity failure, not a build bug
        text = " ".join(result.stderr.split()).lower()
        assert "hash mismatch for" in text, result.stderr[-3000:]
        assert small.split("-")[0].lower().replace("_", "-") in text.replace("_", "-"), result.stderr[-3000:]
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(tag)
    finally:
        remove_new_images(docker_client, before)
