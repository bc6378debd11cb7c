"""Seal, diff, export and import against a real Docker engine, with tiny images built here.

The test images need no registry and no binaries: a base made from a tar written in Python and
loaded with `docker import`, then COPY-only builds whose files carry different mtimes and
different volatile contents (logs, caches, machine-id, a timestamp .pyc) on every build.
Every image and tag created here is removed afterwards.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from click.testing import CliRunner

from envkit.errors import EnvkitError, Interrupted, ReproMismatch, UsageError
from envkit.events import Event
from tests.tarfiles import tar_of

pytestmark = pytest.mark.docker

EPOCH = 1_600_000_000


class Images:
    """Builds tiny images and remembers everything it creates, for removal."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.run = uuid.uuid4().hex[:10]
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.base = f"envkit-test-seal-base:{self.run}"
        self.client.api.import_image_from_data(
            tar_of({"bin": None, "etc": None, "tmp": None, "var": None, "opt": None,
                  "etc/os-release": b"ID=envkit-test\n"}, mtime=1_500_000_000),
            repository=self.base.split(":")[0], tag=self.run,
        )
        self.tags.append(self.base)

    def tag(self, name: str) -> str:
        ref = f"envkit-test-seal-{name}:{self.run}"
        self.tags.append(ref)
        return ref

    def build(self, name: str, *, build_time: int, torch: str = "2.7.1", extra: bytes = b"same",
              volatile: bool = True) -> str:
        ref = self.tag(name)
        seed = f"{name}-{build_time}".encode()
        site = "venv/lib/python3.11/site-packages"
        pyc = b"\xa7\r\r\n" + struct.pack("<III", 0, build_time, 10) + b"\xe3code"
        dockerfile = f"""FROM {self.base}
LABEL io.envkit.source-date-epoch={EPOCH} io.envkit.torch={torch}
COPY sys/ /
ENV TORCH_VERSION={torch}
COPY --chown=1000:1000 venv/ /opt/venv/
COPY app/ /opt/app/
USER 1000
""".encode()
        files: dict[str, bytes | None] = {
            "Dockerfile": dockerfile,
            "sys/var/log/dpkg.log": seed,
            "sys/var/cache/ldconfig/aux-cache": seed,
            "sys/var/cache/apt/pkgcache.bin": seed,
            "sys/etc/machine-id": seed,
            "sys/tmp/build-scratch": seed,
            "sys/var/lib/dpkg/status": b"Package: libc6\nStatus: install ok installed\nVersion: 2.36\n",
            f"{site}/torch-{torch}.dist-info/METADATA": f"Name: torch\nVersion: {torch}\n".encode(),
            f"{site}/torch/__init__.py": f"__version__ = '{torch}'\n".encode(),
            f"{site}/torch/__pycache__/__init__.cpython-311.pyc": pyc,
            "app/probe.py": b"print('probe')\n" + extra,
        }
        if not volatile:
            files = {k: v for k, v in files.items() if not k.startswith("sys/") or "dpkg/status" in k}
        for directory in sorted({str(Path(k).parent) for k in files if "/" in k}, reverse=True):
            parts = Path(directory).parts
            for i in range(1, len(parts) + 1):
                files.setdefault(str(Path(*parts[:i])), None)
        files = dict(sorted(files.items()))
        stream = self.client.api.build(
            fileobj=io.BytesIO(tar_of(files, mtime=build_time)), custom_context=True, tag=ref, nocache=True,
            rm=True, forcerm=True, decode=True,
        )
        for line in stream:
            if "error" in line:
                raise AssertionError(f"test image build failed: {line['error']}")
        image_id = self.client.api.inspect_image(ref)["Id"]
        self.ids.add(image_id)
        return image_id

    def image_id(self, ref: str) -> str:
        return self.client.api.inspect_image(ref)["Id"]

    def cleanup(self) -> None:
        for ref in reversed(self.tags):
            try:
                self.ids.add(self.client.api.inspect_image(ref)["Id"])
                self.client.api.remove_image(ref)
            except docker.errors.APIError:
                pass
        for image_id in self.ids:
            try:
                self.client.api.remove_image(image_id, force=True)
            except docker.errors.APIError:
                pass


@pytest.fixture()
def client(docker_client: docker.DockerClient) -> docker.DockerClient:
    """The session's engine client (tests/conftest.py: a missing engine fails, never skips)."""
    return docker_client


@pytest.fixture()
def images(client: docker.DockerClient) -> Iterator[Images]:
    made = Images(client)
    try:
        yield made
    finally:
        made.cleanup()


def _seal(client, ref: str, tmp_path: Path, **kwargs):
    from envkit.image.seal import seal_image

    result = seal_image(client, ref, tmp_dir=tmp_path, **kwargs)
    assert os.listdir(tmp_path) == []  # temporary files gone
    return result


def test_two_nocache_builds_seal_to_the_same_image_id(client, images: Images, tmp_path: Path) -> None:
    first = images.build("app-a", build_time=EPOCH + 1_000)
    second = images.build("app-b", build_time=EPOCH + 90_000)
    assert first != second
    ref_a, ref_b = images.tags[-2], images.tags[-1]
    sealed_a = _seal(client, ref_a, tmp_path)
    messages: list[str] = []
    sealed_b = _seal(client, ref_b, tmp_path, show=lambda event: messages.append(event.message))
    images.ids.update({sealed_a.image_id, sealed_b.image_id})
    assert sealed_a.image_id == sealed_b.image_id
    assert sealed_a.diff_ids == sealed_b.diff_ids
    # The second seal's layers are already in the engine: none is sent again.
    assert any(m.startswith("loading sealed image") and "(0 of" in m for m in messages), messages
    assert images.image_id(ref_a) == sealed_a.image_id  # the tag moved
    attrs = client.api.inspect_image(sealed_a.image_id)
    assert attrs["Created"].startswith("2020-09-13T12:26:40")
    assert attrs["Config"]["User"] == "1000" and attrs["Config"]["Image"] == ""
    assert all(h["Created"] == EPOCH for h in client.api.history(sealed_a.image_id))
    # Sealing a sealed image changes nothing.
    again = _seal(client, ref_a, tmp_path)
    assert again.image_id == sealed_a.image_id


def test_interrupt_while_sealing_keeps_the_old_tag(client, images: Images, tmp_path: Path) -> None:
    from envkit.image.seal import seal_image

    original = images.build("interrupt", build_time=EPOCH + 5)
    ref = images.tags[-1]
    for stage in ("rewriting layer 2", "loading sealed image"):
        def interrupt(event: Event, stage: str = stage) -> None:
            if event.message.startswith(stage):
                raise KeyboardInterrupt

        with pytest.raises(Interrupted, match="unsealed") as info:
            seal_image(client, ref, tmp_dir=tmp_path, show=interrupt)
        assert info.value.exit_code == 130
        assert images.image_id(ref) == original
        assert os.listdir(tmp_path) == []


def test_disk_full_while_sealing_is_clear_and_keeps_the_tag(
    client, images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import envkit.image.seal as seal

    original = images.build("enospc", build_time=EPOCH + 5)
    ref = images.tags[-1]
    real = seal.rewrite_layer
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(seal, "rewrite_layer", full_disk)
    with pytest.raises(EnvkitError, match="disk full") as info:
        seal.seal_image(client, ref, tmp_dir=tmp_path)
    assert "unsealed" in str(info.value)
    assert images.image_id(ref) == original
    assert os.listdir(tmp_path) == []


def test_diff_names_the_differences_and_exits_9(client, images: Images) -> None:
    from envkit.cli.record import diff_cmd
    from envkit.record.diff import diff_images

    images.build("old", build_time=EPOCH + 5, torch="2.7.1")
    images.build("new", build_time=EPOCH + 5, torch="2.8.0", extra=b"changed")
    old, new = images.tags[-2], images.tags[-1]
    result = diff_images(client, old, new)
    assert not result.identical
    assert ("io.envkit.torch", "2.7.1", "2.8.0") in [(c.key, c.a, c.b) for c in result.labels]
    assert ("TORCH_VERSION", "2.7.1", "2.8.0") in [(c.key, c.a, c.b) for c in result.env]
    assert [(c.key, c.a, c.b) for c in result.python_packages] == [("torch", "2.7.1", "2.8.0")]
    assert result.apt_packages == []
    changed = {c.path for layer in result.layers for c in layer.changed}
    added = {f.path for layer in result.layers for f in layer.added}
    assert "opt/app/probe.py" in changed
    assert "opt/venv/lib/python3.11/site-packages/torch-2.8.0.dist-info/METADATA" in added

    run = CliRunner().invoke(diff_cmd, [old, new, "--json"])
    assert isinstance(run.exception, ReproMismatch), run.output
    assert run.exception.exit_code == 9
    payload = json.loads(run.stdout)
    assert payload["identical"] is False
    assert any(c["key"] == "torch" for c in payload["python_packages"])

    same = CliRunner().invoke(diff_cmd, [old, old])
    assert same.exit_code == 0, same.output

    missing = CliRunner().invoke(diff_cmd, [old, f"envkit-test-seal-missing:{images.run}"])
    assert isinstance(missing.exception, UsageError)
    assert "envkit-test-seal-missing" in str(missing.exception)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci"])
def test_export_import_round_trip_keeps_the_id(client, images: Images, tmp_path: Path, fmt: str) -> None:
    from envkit.engine.archive import export_image, import_image

    images.build("export", build_time=EPOCH + 5)
    ref = images.tags[-1]
    sealed = _seal(client, ref, tmp_path / "seal")
    images.ids.add(sealed.image_id)
    out = tmp_path / "out" / "image.tar.zst"
    exported = export_image(client, ref, out, fmt=fmt)
    assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert exported.image_id == sealed.image_id
    assert [p.name for p in out.parent.iterdir()] == ["image.tar.zst"]  # no temporary left
    client.api.remove_image(ref)  # its only tag: the image goes with it
    with pytest.raises(docker.errors.ImageNotFound):
        client.api.inspect_image(sealed.image_id)
    imported = import_image(client, out)
    assert imported.image_ids == (sealed.image_id,)
    assert images.image_id(ref) == sealed.image_id


def _rebuilt_twin(client: docker.DockerClient, ref: str) -> str:
    """Load a copy of `ref` with the same layers and another build's config (times, container).

    What two builds give when the build itself made the layers deterministic: the classic builder
    still stamps its own time, container and parent image into the config.
    """
    from envkit.engine.client import engine_chains
    from envkit.engine.dockerarchive import archive_stream, load_archive

    with tarfile.open(fileobj=io.BytesIO(b"".join(client.api.get_image(ref)))) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())[0]
        config = json.loads(tf.extractfile(manifest["Config"]).read())
    config["created"] = "2031-02-03T04:05:06.789Z"
    config["container"] = uuid.uuid4().hex
    config["config"]["Image"] = "sha256:" + uuid.uuid4().hex * 2
    for entry in config["history"]:
        entry["created"] = "2031-02-03T04:05:06Z"
    raw = json.dumps(config).encode()
    layers = [(d, "") for d in config["rootfs"]["diff_ids"]]
    loaded = load_archive(client, archive_stream(raw, layers, epoch=0, present=engine_chains(client)))
    return client.api.inspect_image(loaded[0])["Id"]


def test_config_only_seal_of_deterministic_builds(client, images: Images, tmp_path: Path) -> None:
    first = images.build("keep", build_time=EPOCH - 100, volatile=False)
    second = _rebuilt_twin(client, first)
    images.ids.add(second)
    twin_ref = images.tag("keep-twin")
    client.api.tag(second, *twin_ref.split(":"))
    layers = client.api.inspect_image(first)["RootFS"]["Layers"]
    assert first != second and client.api.inspect_image(second)["RootFS"]["Layers"] == layers
    messages: list[str] = []
    sealed_a = _seal(client, images.tags[-2], tmp_path, rewrite_layers=False, show=lambda event: messages.append(event.message))
    sealed_b = _seal(client, twin_ref, tmp_path, rewrite_layers=False)
    images.ids.update({sealed_a.image_id, sealed_b.image_id})
    assert sealed_a.image_id == sealed_b.image_id
    assert client.api.inspect_image(sealed_a.image_id)["RootFS"]["Layers"] == layers
    assert any("(0 of" in m for m in messages), messages  # no layer data sent
