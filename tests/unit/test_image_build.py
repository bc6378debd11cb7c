"""Build pipeline pieces that need no engine, and faults injected through a fake client."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from envkit.atomic import write_text
from envkit.errors import BuildFailed, IntegrityError, Interrupted, NetworkError, UsageError
from envkit.image import build as build_mod
from envkit.image.context import BuildContext, detect_ca_bundle, proxy_build_args
from envkit.lock.apt import parse_dry_run
from tests.fakes import FakeClient


def test_context_tar_is_deterministic_and_sorted() -> None:
    first, second = BuildContext(), BuildContext()
    for ctx, order in ((first, ["b", "a", "c/d"]), (second, ["c/d", "a", "b"])):
        for name in order:
            ctx.add(name, name.encode() * 3, executable=name == "a")
    assert first.to_tar(1700000000) == second.to_tar(1700000000)
    assert first.digest() == second.digest()
    with tarfile.open(fileobj=io.BytesIO(first.to_tar(1700000000))) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["a", "b", "c/d"]
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", 1700000000)}
    assert members[0].mode == 0o755 and members[1].mode == 0o644


def test_context_refuses_paths_outside_it() -> None:
    ctx = BuildContext()
    for bad in ("/etc/passwd", "../x", "a/../../b"):
        with pytest.raises(ValueError):
            ctx.add(bad, b"")


def test_ca_bundle_detection_order(tmp_path: Path) -> None:
    pip, ssl = tmp_path / "pip.pem", tmp_path / "ssl.pem"
    pip.write_text("p")
    ssl.write_text("s")
    assert detect_ca_bundle(None, {"SSL_CERT_FILE": str(ssl), "PIP_CERT": str(pip)}) == pip
    assert detect_ca_bundle(None, {"PIP_CERT": str(tmp_path / "missing"), "SSL_CERT_FILE": str(ssl)}) == ssl
    assert detect_ca_bundle(None, {}) is None
    assert detect_ca_bundle(str(pip), {"SSL_CERT_FILE": str(ssl)}) == pip
    with pytest.raises(UsageError, match="no such file"):
        detect_ca_bundle(str(tmp_path / "nope.pem"), {})


def test_proxy_variables_become_build_args() -> None:
    env = {"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "localhost", "PATH": "/bin"}
    assert proxy_build_args(env) == {"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "localhost"}


def test_apt_dry_run_parsing() -> None:
    output = (
        "NOTE: This is only a simulation!\n"
        "Inst libssl3 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian:12.11/stable [amd64])\n"
        "Inst python3.11-minimal (3.11.2-6+deb12u6 Debian:12.11/stable [amd64])\n"
        "Inst libc6:amd64 (2.36-9+deb12u10 Debian:12.11/stable [amd64])\n"
        "Conf python3.11-minimal (3.11.2-6+deb12u6 Debian:12.11/stable [amd64])\n"
    )
    assert parse_dry_run(output) == {
        "libc6": "2.36-9+deb12u10",
        "libssl3": "3.0.17-1~deb12u2",
        "python3.11-minimal": "3.11.2-6+deb12u6",
    }


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "manifest.json"
    write_text(target, "old")

    def boom(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


UV_HASH_LOG = [
    "Step 10/20 : RUN /opt/envkit-tools/bin/uv pip install ...",
    "error: Failed to download `six==1.16.0`",
    "  Caused by: Hash mismatch for `six==1.16.0`",
    "",
    "Expected:",
    "  sha256:" + "0" * 64,
    "",
    "Computed:",
    "  sha256:" + "8" * 64,
]


def test_hash_mismatch_is_an_integrity_error_naming_package_and_both_hashes() -> None:
    error = build_mod._classify_failure("returned a non-zero code: 1", UV_HASH_LOG, "Step 10/20 : RUN uv")
    assert isinstance(error, IntegrityError)
    assert error.exit_code == 5
    assert "six==1.16.0" in error.message
    assert "sha256:" + "0" * 64 in error.message and "sha256:" + "8" * 64 in error.message


def test_network_failures_and_plain_failures_are_told_apart() -> None:
    net = build_mod._classify_failure("code: 100", ["W: Failed to fetch http://deb.debian.org/..."], "Step 3/9 : RUN")
    assert isinstance(net, NetworkError) and net.exit_code == 6
    plain = build_mod._classify_failure("code: 100", ["E: Unable to locate package nope"], "Step 3/9 : RUN")
    assert isinstance(plain, BuildFailed) and plain.exit_code == 4
    assert "Step 3/9" in plain.message and "Unable to locate package nope" in (plain.details or "")


def _plan() -> Any:
    spec = SimpleNamespace(source_date_epoch=0, platform="linux/amd64")
    return SimpleNamespace(spec=spec)


@pytest.fixture
def no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_mod, "make_context", lambda plan: BuildContext())


STREAM = [
    {"stream": "Step 1/3 : FROM base\n"},
    {"stream": " ---> abc\nStep 2/3 : RUN apt-get"},
    {"stream": " install x\n ---> Running in 0123456789ab\n"},
    {"stream": "\x1b[91mGet:1 http://deb.debian.org bookworm InRelease\n\x1b[0m"},
]


def test_stream_yields_steps_joining_split_lines(no_context: None) -> None:
    client = FakeClient(build_stream=[*STREAM, {"stream": "Successfully built 0123456789abcdef\n"}])
    events = list(build_mod._stream_build(client, _plan(), nocache=False))
    steps = [(e.step, e.message) for e in events if e.kind == "step"]
    assert steps == [(1, "FROM base"), (2, "RUN apt-get install x")]
    downloads = [e.message for e in events if e.kind == "download"]
    assert downloads == ["Get:1 http://deb.debian.org bookworm InRelease"]
    assert events[-1].kind == "done" and events[-1].data["image_id"] == "0123456789abcdef"


def test_interrupt_removes_started_containers_and_raises_130(no_context: None) -> None:
    client = FakeClient(build_stream=STREAM + [{"stream": "more\n"}], build_interrupt_after=4)
    api = client.api
    with pytest.raises(Interrupted) as info:
        list(build_mod._stream_build(client, _plan(), nocache=False))
    assert info.value.exit_code == 130
    assert api.closed
    assert api.removed == ["0123456789ab"]


def test_error_chunk_fails_the_build_and_cleans_up(no_context: None) -> None:
    client = FakeClient(build_stream=[*STREAM, {"stream": "E: Unable to locate package nope\n"}, {"error": "returned a non-zero code: 100"}])
    api = client.api
    with pytest.raises(BuildFailed) as info:
        list(build_mod._stream_build(client, _plan(), nocache=False))
    assert "Step 2/3" in info.value.message
    assert api.removed == ["0123456789ab"]
