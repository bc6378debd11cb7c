"""Locks against the real engine: a tampered wheel hash fails the build with exit 5 and the old tag
stays; the -devel image compiles a torch C++ extension and has ptxas; `lock --check` catches a
stale lock."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, BuiltImage, image_ids, remove_new_images, run_envkit


def _copy_catalog_image(tmp_path: Path, name: str, tag: str) -> Path:
    """A spec and its lock, copied out of the catalog (same content, so the lock stays fresh)."""
    spec = tmp_path / f"{tag}.yaml"
    shutil.copy(REPO / "images" / name / f"{tag}.yaml", spec)
    shutil.copy(REPO / "images" / name / f"{tag}.lock", spec.with_suffix(".lock"))
    return spec


def test_tampered_wheel_hash_fails_with_exit_5_and_keeps_the_old_tag(
    torch_image: BuiltImage, docker_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    spec = _copy_catalog_image(tmp_path, "pytorch-cuda", "2.8")
    lock_path = spec.with_suffix(".lock")
    lock = json.loads(lock_path.read_text())
    text = lock["python_requirements"]
    block = re.search(r"(?ms)^filelock==(\S+) \\\n(.*?)(?=^\S)", text)
    assert block, "the 2.8 lock pins filelock"
    version, hashes = block.group(1), block.group(2)
    bogus = "sha256:" + "0" * 64
    tampered = re.sub(r"sha256:[0-9a-f]{64}", bogus, hashes)
    lock["python_requirements"] = text.replace(hashes, tampered)
    # The package table says the same, so the lock is consistent and only the wheel's bytes refute it.
    lock["packages"]["filelock"]["hashes"] = ["0" * 64] * len(lock["packages"]["filelock"]["hashes"])
    lock_path.write_text(json.dumps(lock, indent=2, sort_keys=True))

    target = f"envkit-test/tampered:{uuid.uuid4().hex[:8]}"
    repo, tag = target.split(":")
    docker_client.api.tag(torch_image.image_id, repo, tag)
    try:
        result = run_envkit("build", str(spec), "--tag", target, "--ca-bundle", str(torch_image.ca_bundle))
        assert result.returncode == 5, result.stderr[-3000:]
        assert f"filelock=={version}" in result.stderr
        assert bogus in result.stderr
        computed = re.search(r"computed (sha256:[0-9a-f]{64})", result.stderr)
        assert computed and computed.group(1) != bogus
        assert docker_client.images.get(target).id == torch_image.image_id
    finally:
        docker_client.images.remove(target)


def test_lock_check_catches_a_spec_changed_after_locking(tmp_path: Path) -> None:
    catalog = tmp_path / "images"
    shutil.copytree(REPO / "images", catalog)
    fresh = run_envkit("lock", "--check", env={"ENVKIT_IMAGES_DIR": str(catalog)})
    assert fresh.returncode == 0, fresh.stderr
    spec = catalog / "pytorch-cuda" / "2.8.yaml"
    spec.write_text(spec.read_text().replace('torchvision: "0.23.0"', "torchvision: null"))
    stale = run_envkit("lock", "--check", env={"ENVKIT_IMAGES_DIR": str(catalog)})
    assert stale.returncode == 9, stale.stderr
    assert re.search(r"pytorch-cuda:2\.8\s+stale", stale.stderr)
    # A build refuses the stale lock rather than silently resolving something else.
    refused = run_envkit("build", "pytorch-cuda:2.8", env={"ENVKIT_IMAGES_DIR": str(catalog)})
    assert refused.returncode == 2
    assert "stale" in refused.stderr


EXTENSION = r"""
import torch
from torch.utils.cpp_extension import load_inline
source = '''
#include <torch/extension.h>
torch::Tensor scaled_add(torch::Tensor a, torch::Tensor b, double alpha) { return a + alpha * b; }
'''
module = load_inline(name="envkit_ext", cpp_sources=[source], functions=["scaled_add"],
                     build_directory="/tmp/ext", verbose=False)
out = module.scaled_add(torch.ones(3), torch.arange(3.0), 2.0)
print(out.tolist())
"""


@pytest.fixture(scope="module")
def devel_image(docker_client, torch_image: BuiltImage):  # type: ignore[no-untyped-def]
    before = image_ids(docker_client)
    tag = f"envkit-test/pytorch-cuda:2.8-devel-{uuid.uuid4().hex[:8]}"
    result = run_envkit(
        "build", "pytorch-cuda:2.8-devel", "--tag", tag, "--ca-bundle", str(torch_image.ca_bundle)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    yield tag
    remove_new_images(docker_client, before)


def test_devel_image_compiles_a_torch_cpp_extension_and_has_ptxas(devel_image: str) -> None:
    run = subprocess.run(
        ["docker", "run", "--rm", "-e", "MAX_JOBS=2", devel_image, "bash", "-c",
         "mkdir -p /tmp/ext && python - <<'EOF'\n" + EXTENSION + "EOF\n"
         "ptxas --version | tail -2"],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[1.0, 3.0, 5.0]" in run.stdout
    assert re.search(r"release 12\.8", run.stdout), run.stdout  # ptxas of the image's CUDA
