"""diff of a snapshot manifest against the real engine: its own image is identical (exit 0).

The images are tiny (a hand-made rootfs, no Python in it), so the one step that runs Python inside
the image, listing its packages, is replaced by the lists the image's files hold; everything else
(inspect, labels, layers, `docker save` of the other image, the CLI) is the real thing.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from envkit.record.diff import diff_images
from envkit.record.manifest import write_manifest
from envkit.spec.model import load_spec
from tests.conftest import run_envkit
from tests.tarfiles import tar_of

pytestmark = pytest.mark.docker

SITE = "opt/venv/lib/python3.11/site-packages"
SPEC = """name: tiny
tag: "1"
base:
  bootstrap:
    suite: bookworm
python: "3.11"
torch:
  version: "2.8.0"
  cuda: "12.8"
source_date_epoch: 1761955200
"""


class TinyImages:
    def __init__(self, client: docker.DockerClient, spec_path: Path) -> None:
        self.client, self.run, self.spec_path = client, uuid.uuid4().hex[:10], spec_path
        self.refs: list[str] = []
        self.base = f"envkit-test/diff-base:{self.run}"
        files: dict[str, bytes | None] = {"etc": None, "var": None, "var/lib": None, "var/lib/dpkg": None,
                                          "var/lib/dpkg/status": b"Package: libc6\nStatus: install ok installed\n"
                                                                 b"Version: 2.36\n"}
        parts = SITE.split("/")
        for i in range(1, len(parts) + 1):
            files["/".join(parts[:i])] = None
        files[f"{SITE}/tiny-1.0.dist-info"] = None
        files[f"{SITE}/tiny-1.0.dist-info/METADATA"] = b"Name: tiny\nVersion: 1.0\n"
        client.api.import_image_from_data(tar_of(files, mtime=1_500_000_000), repository=self.base.split(":")[0], tag=self.run)
        self.refs.append(self.base)

    def build(self, name: str, extra_label: str) -> str:
        spec = load_spec(self.spec_path)
        ref = f"envkit-test/diff-{name}:{self.run}"
        dockerfile = (
            f"FROM {self.base}\n"
            f'LABEL "io.envkit.name"="{self.spec_path}" "io.envkit.spec-digest"="{spec.digest()}" '
            f'"io.envkit.python"="3.11" "io.envkit.extra"="{extra_label}"\n'
            "ENV A=1\n"
        )
        stream = self.client.api.build(fileobj=io.BytesIO(tar_of({"Dockerfile": dockerfile.encode()}, mtime=1_500_000_000)),
                                       custom_context=True, tag=ref, rm=True, forcerm=True, decode=True)
        for line in stream:
            if "error" in line:
                raise AssertionError(f"test image build failed: {line['error']}")
        self.refs.append(ref)
        return ref

    def cleanup(self) -> None:
        for ref in reversed(self.refs):
            try:
                self.client.api.remove_image(ref, force=True)
            except docker.errors.APIError:
                pass


@pytest.fixture()
def tiny(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[TinyImages]:
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(SPEC)
    made = TinyImages(docker_client, spec_path)
    try:
        yield made
    finally:
        made.cleanup()


def test_a_manifest_against_its_own_image_is_identical(
    docker_client: docker.DockerClient, tiny: TinyImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envkit.record import snapshot as snapshot_mod

    # What the collect script would find in the image's files (there is no Python to run it).
    found = {"python": {"tiny": {"version": "1.0", "record_sha256": None}}, "apt": {"libc6": "2.36"}}
    monkeypatch.setattr(snapshot_mod, "collect_packages", lambda client, image_id: found)
    ref = tiny.build("one", "a")
    manifest = snapshot_mod.snapshot(docker_client, ref)
    path = tmp_path / "m.json"
    write_manifest(path, manifest)

    assert diff_images(docker_client, str(path), ref).identical
    for a, b in ((str(path), ref), (ref, str(path)), (str(path), str(path))):
        result = run_envkit("diff", a, b)
        assert result.returncode == 0, result.stdout + result.stderr

    tampered = tmp_path / "tampered.json"
    tampered.write_text(path.read_text().replace('"1.0"', '"1.1"', 1))
    result = run_envkit("diff", str(tampered), ref)
    assert result.returncode == 5, result.stdout + result.stderr

    # Against another image, only what really differs is reported: here, one label.
    other = tiny.build("two", "b")
    diff = diff_images(docker_client, str(path), other)
    assert not diff.identical
    assert [(c.key, c.a, c.b) for c in diff.labels] == [("io.envkit.extra", "a", "b")]
    assert not (diff.env or diff.python_packages or diff.apt_packages or diff.config)
    assert run_envkit("diff", str(path), other).returncode == 9
