"""The layered build on the real engine: the Python layers envkit writes, shared across a family.

The session's torch build (tests/conftest.py) is the first image; resnet:2.8, built here, is a
second image of the same torch build and must reuse its CUDA and torch layers without sending them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, BuiltImage, image_ids, remove_new_images, run_envkit

pytestmark = pytest.mark.docker

LIMIT = 5_000_000_000  # no layer over 5 GB: registries refuse larger ones


def docker_run(image: str, *cmd: str) -> str:
    out = subprocess.run(["docker", "run", "--rm", image, *cmd], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_python_packages_come_as_layers_of_their_own(torch_image: BuiltImage, docker_client) -> None:  # type: ignore[no-untyped-def]
    layers = torch_image.build_json["layers"]
    names = [layer["name"] for layer in layers]
    # CUDA, the base and torch at the bottom, shared by the family; the rest of the Python set on top.
    assert names[:3] == ["python-cuda", "base-1", "python-torch"], names
    assert names[-1] == "python-python", names
    assert len(names) > 4 and all(name.startswith("system-") for name in names[3:-1]), names
    attrs = docker_client.api.inspect_image(torch_image.tag)
    assert attrs["RootFS"]["Layers"] == [layer["diff_id"] for layer in layers]
    history = [h for h in docker_client.api.history(torch_image.tag) if h["Size"]]
    assert any("envkit python layer cuda: nvidia_cublas_cu12" in h["CreatedBy"] for h in history)
    assert all(int(h["Size"]) < LIMIT for h in history)
    # Files of the environment belong to the default user; pip's own comes from the venv module.
    out = docker_run(torch_image.tag, "stat", "-c", "%u %n", "/opt/venv/lib/python3.11/site-packages/torch",
                     "/opt/venv/bin/pip", "/opt/venv/bin/torchrun")
    assert [line.split()[0] for line in out.splitlines()] == ["1000", "1000", "1000"]
    # The engine keeps the image and nothing else: neither its build of the system part nor helpers.
    assert torch_image.build_json["unsealed_id"]
    assert not [i for i in docker_client.api.images(all=True, quiet=True)
                if i == torch_image.build_json["unsealed_id"]]
    assert not docker_client.api.images(name="envkit-cache/system")


def test_a_second_image_of_the_family_reuses_the_cuda_and_torch_layers(
    torch_image: BuiltImage, docker_client  # type: ignore[no-untyped-def]
) -> None:
    before = image_ids(docker_client)
    try:
        result = run_envkit("build", "resnet:2.8", "--tag", "envkit-test/resnet:layers", "--json",
                            "--ca-bundle", str(torch_image.ca_bundle), timeout=1800)
        assert result.returncode == 0, result.stderr[-4000:]
        built = json.loads(result.stdout)
        by_name = {layer["name"]: layer for layer in built["layers"]}
        first = {layer["name"]: layer for layer in torch_image.build_json["layers"]}
        for name in ("python-cuda", "base-1", "python-torch"):
            assert by_name[name]["diff_id"] == first[name]["diff_id"], name
            assert by_name[name]["sent"] is False, name  # the engine had them: not written again
        mine = docker_client.api.inspect_image(built["image_id"])["RootFS"]["Layers"]
        theirs = docker_client.api.inspect_image(torch_image.tag)["RootFS"]["Layers"]
        assert mine[:3] == theirs[:3]  # the same chain: stored once by the engine
    finally:
        remove_new_images(docker_client, before)


def test_an_image_with_the_same_system_part_is_built_without_the_engine_and_gives_the_engine_s_image(
    torch_image: BuiltImage, docker_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """A copy of the session's spec with another description (a label) and its lock: the sealed
    system part is remembered from the session's build, so the engine builds nothing and every layer
    is held; a --no-cache build of the same copy, through the engine, gives the same image."""
    from envkit.spec.catalog import load

    spec = tmp_path / "2.8.yaml"
    text = (REPO / "images" / "pytorch-cuda" / "2.8.yaml").read_text()
    spec.write_text(text.replace("description: PyTorch 2.8.0", "description: Relabelled PyTorch 2.8.0"))
    lock = json.loads((REPO / "images" / "pytorch-cuda" / "2.8.lock").read_text())
    lock["spec_digest"] = load(str(spec)).spec.digest()
    spec.with_suffix(".lock").write_text(json.dumps(lock, indent=2, sort_keys=True))
    before = image_ids(docker_client)
    try:
        first = run_envkit("build", str(spec), "--tag", "envkit-test/relabel:memo", "--json",
                           "--ca-bundle", str(torch_image.ca_bundle), timeout=1800)
        assert first.returncode == 0, first.stderr[-4000:]
        assert "the engine builds nothing" in first.stderr
        memo = json.loads(first.stdout)
        assert memo["unsealed_id"] == "" and memo["durations"]["build"] == 0
        assert [layer["diff_id"] for layer in memo["layers"]] == [
            layer["diff_id"] for layer in torch_image.build_json["layers"]]
        assert not any(layer["sent"] for layer in memo["layers"])
        assert memo["image_id"] != torch_image.image_id  # the labels differ
        labels = docker_client.api.inspect_image(memo["image_id"])["Config"]["Labels"]
        assert labels["org.opencontainers.image.description"].startswith("Relabelled PyTorch")
        assert labels["io.envkit.base.suite"] == "bookworm"  # the base's labels stay
        second = run_envkit("build", str(spec), "--tag", "envkit-test/relabel:fresh", "--json", "--no-cache",
                            "--ca-bundle", str(torch_image.ca_bundle), timeout=1800)
        assert second.returncode == 0, second.stderr[-4000:]
        fresh = json.loads(second.stdout)
        assert fresh["unsealed_id"]  # really built by the engine this time
        assert fresh["image_id"] == memo["image_id"]
    finally:
        remove_new_images(docker_client, before)
        for tag in ("envkit-test/relabel:memo", "envkit-test/relabel:fresh"):
            try:
                docker_client.api.remove_image(tag, noprune=True)
            except Exception:  # noqa: BLE001 - gone with the image
                pass
