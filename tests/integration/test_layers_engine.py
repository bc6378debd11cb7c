"""The layered build on the real engine: the Python layers envkit writes, shared across a family.

The session's torch build (tests/conftest.py) is the first image; resnet:2.8, built here, is a
second image of the same torch build and must reuse its CUDA and torch layers without sending them.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import BuiltImage, image_ids, remove_new_images, run_envkit

pytestmark = pytest.mark.docker

LIMIT = 5_000_000_000  # no layer over 5 GB: registries refuse larger ones


def docker_run(image: str, *cmd: str) -> str:
    out = subprocess.run(["docker", "run", "--rm", image, *cmd], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_python_packages_come_as_layers_of_their_own(torch_image: BuiltImage, docker_client) -> None:  # type: ignore[no-untyped-def]
    layers = torch_image.build_json["layers"]
    names = [layer["name"] for layer in layers]
    assert names[:4] == ["python-cuda", "base-1", "python-torch", "python-python"], names
    assert all(name.startswith("system-") for name in names[4:])
    attrs = docker_client.api.inspect_image(torch_image.tag)
    assert attrs["RootFS"]["Layers"] == [layer["diff_id"] for layer in layers]
    history = [h for h in docker_client.api.history(torch_image.tag) if h["Size"]]
    assert any("envkit python layer cuda: nvidia_cublas_cu12" in h["CreatedBy"] for h in history)
    assert all(int(h["Size"]) < LIMIT for h in history)
    # Files of the environment belong to the default user; pip's own comes from the venv module.
    out = docker_run(torch_image.tag, "stat", "-c", "%u %n", "/opt/venv/lib/python3.11/site-packages/torch",
                     "/opt/venv/bin/pip", "/opt/venv/bin/torchrun")
    assert [line.split()[0] for line in out.splitlines()] == ["1000", "1000", "1000"]
    # The engine keeps the image and one cache image of the system part; no helper images.
    dangling = docker_client.api.images(filters={"dangling": True}, quiet=True)
    assert not set(dangling) & {attrs["Id"]}


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
