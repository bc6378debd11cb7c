"""Minimal Debian bases made locally with mmdebstrap, loaded with a deterministic image ID.

No registry is needed: the rootfs comes from a Debian mirror. With SOURCE_DATE_EPOCH fixed,
mmdebstrap writes the same tarball twice from the same mirror state, and envkit's own config makes
the image ID follow from it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

from envkit import labels
from envkit.engine.client import image_exists
from envkit.engine.dockerarchive import load_image, rfc3339, sha256_file
from envkit.errors import BuildFailed, Interrupted, NetworkError, UsageError
from envkit.events import Event, done, drain, relay
from envkit.platforms import DEFAULT_PLATFORM, architecture
from envkit.spec.model import Bootstrap

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# /dev nodes are made by the runtime in every container; shipping them in a layer only adds noise.
MMDEBSTRAP_SKIP = ("output/dev", "output/mknod")


@dataclass(frozen=True)
class BasePlan:
    bootstrap: Bootstrap
    source_date_epoch: int
    platform: str = DEFAULT_PLATFORM

    @property
    def key(self) -> str:
        bootstrap = self.bootstrap
        parts = [bootstrap.suite, bootstrap.mirror, bootstrap.variant, str(self.source_date_epoch)]
        if self.platform != DEFAULT_PLATFORM:  # amd64 bases keep the tags they always had
            parts.append(self.platform)
        text = "|".join(parts)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        return f"envkit/debian:{self.bootstrap.suite}-{self.bootstrap.variant}-{self.key}"

    def command(self, out: Path) -> list[str]:
        mode = "root" if os.geteuid() == 0 else "unshare"
        cmd = ["mmdebstrap", f"--variant={self.bootstrap.variant}", f"--mode={mode}", "--format=tar"]
        cmd += [f"--skip={item}" for item in MMDEBSTRAP_SKIP]
        cmd += [self.bootstrap.suite, str(out), self.bootstrap.mirror]
        return cmd


def parse_base_name(name: str, *, mirror: str | None = None, source_date_epoch: int = 0) -> BasePlan:
    """``debian:bookworm`` -> a plan with the default mirror."""
    distro, _, suite = name.partition(":")
    if distro != "debian" or not suite:
        raise UsageError(f"{name!r} is not a base envkit can bootstrap (expected debian:<suite>)")
    fields = {"suite": suite}
    if mirror:
        fields["mirror"] = mirror
    try:
        bootstrap = Bootstrap(**fields)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None
    return BasePlan(bootstrap=bootstrap, source_date_epoch=source_date_epoch)


def bootstrap_rootfs(plan: BasePlan, out: Path) -> str:
    """Run mmdebstrap into ``out`` and return the tarball's sha256."""
    return drain(bootstrap_events(plan, out))


def bootstrap_events(plan: BasePlan, out: Path) -> Iterator[Event]:
    """``bootstrap_rootfs`` as events: mmdebstrap's output lines, then the tarball's sha256."""
    if shutil.which("mmdebstrap") is None:
        raise UsageError(
            "mmdebstrap is not installed", hint="apt-get install mmdebstrap (scripts/engine.sh does)"
        )
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(plan.source_date_epoch))
    cmd = plan.command(out)
    tail: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            yield Event("log", line)
        code = proc.wait()
    except KeyboardInterrupt:
        raise Interrupted("base bootstrap interrupted; nothing was loaded") from None
    finally:
        # Also when the caller stops reading (Ctrl-C while it shows a line): no mmdebstrap left behind.
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    if code != 0:
        text = "\n".join(tail)
        error = NetworkError if ("Could not resolve" in text or "Failed to fetch" in text) else BuildFailed
        raise error(f"mmdebstrap failed for {plan.bootstrap.suite} (exit {code})", details=text)
    yield done("bootstrapped", sha256_file(out))


def base_config(plan: BasePlan, diff_id: str, platform: str = DEFAULT_PLATFORM) -> dict[str, object]:
    """The base image's config; ``platform`` is the spec's (the rootfs is bootstrapped for it)."""
    created = rfc3339(plan.source_date_epoch)
    return {
        "architecture": architecture(platform),
        "os": "linux",
        "created": created,
        "config": {
            "Env": [f"PATH={DEFAULT_PATH}"],
            "Cmd": ["bash"],
            "Labels": {
                labels.BASE_SUITE: plan.bootstrap.suite,
                labels.BASE_MIRROR: plan.bootstrap.mirror,
                labels.BASE_VARIANT: plan.bootstrap.variant,
                labels.BASE_ROOTFS: diff_id,
                labels.SOURCE_DATE_EPOCH: str(plan.source_date_epoch),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"envkit base debian:{plan.bootstrap.suite}"}],
    }


@dataclass(frozen=True)
class BaseResult:
    tag: str
    image_id: str
    rootfs_sha256: str
    created: bool


def ensure_base(client: docker.DockerClient, plan: BasePlan, *, force: bool = False) -> BaseResult:
    """Bootstrap and load the base unless an image with its tag already exists."""
    return drain(base_events(client, plan, force=force))


def base_events(client: docker.DockerClient, plan: BasePlan, *, force: bool = False) -> Iterator[Event]:
    """``ensure_base`` as events: the bootstrap's log lines, then the BaseResult."""
    if not force and image_exists(client, plan.tag):
        image = client.images.get(plan.tag)
        rootfs = (image.labels or {}).get(labels.BASE_ROOTFS, "")
        present = BaseResult(tag=plan.tag, image_id=image.id, rootfs_sha256=rootfs, created=False)
        yield done("present", present)
        return
    with tempfile.TemporaryDirectory(prefix="envkit-base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        diff_id = yield from relay(bootstrap_events(plan, rootfs))
        config = base_config(plan, diff_id, plan.platform)
        image_id = load_image(client, config, [(diff_id, rootfs)], [plan.tag])
    yield done("loaded", BaseResult(tag=plan.tag, image_id=image_id, rootfs_sha256=diff_id, created=True))

