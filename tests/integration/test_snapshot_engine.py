"""snapshot -> restore on the real engine: the manifest alone rebuilds the same image ID."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

from envkit.record.snapshot import SCHEMA_VERSION, content_digest
from tests.conftest import BuiltImage, run_envkit


def _signing_key(tmp_path: Path, identity: str) -> tuple[Path, Path]:
    """An ed25519 key made for the test and an allowed-signers file that trusts it as ``identity``."""
    key = tmp_path / "signing_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", identity, "-f", str(key)], check=True)
    kind, blob = Path(f"{key}.pub").read_text().split()[:2]
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{identity} {kind} {blob}\n")
    return key, allowed


def test_snapshot_then_restore_gives_the_identical_image(
    torch_image: BuiltImage, docker_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    manifest_path = tmp_path / "m.json"
    key, allowed = _signing_key(tmp_path, "alice@example.org")
    started = time.monotonic()
    snap = run_envkit("snapshot", torch_image.tag, "-o", str(manifest_path), "--sign", str(key))
    snapshot_s = time.monotonic() - started
    assert snap.returncode == 0, snap.stderr
    manifest = json.loads(manifest_path.read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["image"]["id"] == torch_image.image_id
    assert manifest["python_packages"]["torch"]["version"] == "2.8.0"
    assert manifest["python_packages"]["torch"]["lock_version"] == "2.8.0"
    assert manifest["lock_mismatches"] == []
    assert manifest["stack"]["cuda"] == "12.8"
    assert "python3.11" in manifest["apt_packages"]
    assert manifest["digest"] == content_digest(manifest)
    assert (tmp_path / "m.json.sig").is_file()
    print(f"snapshot took {snapshot_s:.1f} s")

    target = f"envkit-test/restored:{uuid.uuid4().hex[:8]}"
    bundle = str(torch_image.ca_bundle)
    # A signed snapshot restored with --trust: the signature is checked before anything is built.
    restored = run_envkit("restore", str(manifest_path), "--tag", target, "--ca-bundle", bundle, "--json",
                          "--trust", str(allowed), "--signer", "alice@example.org")
    try:
        assert restored.returncode == 0, restored.stderr[-3000:]
        result = json.loads(restored.stdout)
        assert result["identical"] is True
        assert result["image_id"] == torch_image.image_id
        assert "identical" in restored.stderr
    finally:
        docker_client.images.remove(target)


def test_edited_and_newer_manifests_are_refused(torch_image: BuiltImage, tmp_path: Path) -> None:
    manifest_path = tmp_path / "m.json"
    key, allowed = _signing_key(tmp_path, "alice@example.org")
    assert run_envkit("snapshot", torch_image.tag, "-o", str(manifest_path), "--sign", str(key)).returncode == 0
    data = json.loads(manifest_path.read_text())

    # One byte changed and the digest recomputed: the digest passes, the signature does not (exit 5).
    resealed = dict(data, envkit_version=data["envkit_version"] + "1")
    resealed["digest"] = content_digest(resealed)
    resealed_path = tmp_path / "resealed.json"
    resealed_path.write_text(json.dumps(resealed))
    (tmp_path / "resealed.json.sig").write_bytes((tmp_path / "m.json.sig").read_bytes())
    refused = run_envkit("restore", str(resealed_path), "--trust", str(allowed), "--signer", "alice@example.org")
    assert refused.returncode == 5, refused.stderr
    assert "alice@example.org" in refused.stderr
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(manifest_path.read_text())
    refused = run_envkit("restore", str(unsigned), "--trust", str(allowed))
    assert refused.returncode == 5 and "not signed" in refused.stderr, refused.stderr

    edited = tmp_path / "edited.json"
    edited.write_text(manifest_path.read_text().replace('"2.8.0"', '"2.8.1"', 1))
    refused = run_envkit("restore", str(edited))
    assert refused.returncode == 5, refused.stderr
    assert "digest" in refused.stderr

    newer = dict(data, schema_version=SCHEMA_VERSION + 1)
    newer["digest"] = content_digest(newer)
    newer_path = tmp_path / "newer.json"
    newer_path.write_text(json.dumps(newer))
    refused = run_envkit("restore", str(newer_path))
    assert refused.returncode == 2, refused.stderr
    assert "schema_version" in refused.stderr


def test_snapshot_of_a_missing_image_exits_2(tmp_path: Path) -> None:
    result = run_envkit("snapshot", "envkit-test/absent:nothing", "-o", str(tmp_path / "m.json"))
    assert result.returncode == 2
    assert "envkit-test/absent:nothing" in result.stderr
    assert not (tmp_path / "m.json").exists()
