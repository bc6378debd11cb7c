"""Offline restore: a bundle alone rebuilds the identical image on another engine, network cut."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

from tests.conftest import BuiltImage, SecondEngine, image_ids, run_envkit


def test_offline_restore_on_a_second_engine_gives_the_identical_image(
    torch_image: BuiltImage, second_engine: SecondEngine, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.json"
    assert run_envkit("snapshot", torch_image.tag, "-o", str(manifest)).returncode == 0

    refused = run_envkit("restore", str(manifest), "--offline")
    assert refused.returncode == 2, refused.stderr
    assert "needs a bundle" in refused.stderr

    bundle = tmp_path / "env.bundle"
    made = run_envkit("bundle", str(manifest), "-o", str(bundle), "--json")
    assert made.returncode == 0, made.stderr[-3000:]
    info = json.loads(made.stdout)
    assert info["image_id"] == torch_image.image_id
    assert info["wheels"] >= 28  # the 28 locked wheels and the builder's installer
    assert bundle.stat().st_size == info["size"]

    engine2 = second_engine.client
    assert torch_image.image_id not in image_ids(engine2)
    target = f"envkit-test/offline:{uuid.uuid4().hex[:8]}"
    restored = run_envkit("restore", str(bundle), "--offline", "--tag", target, "--json", env=second_engine.env)
    assert restored.returncode == 0, restored.stderr[-4000:]
    result = json.loads(restored.stdout)
    assert result["identical"] is True and result["offline"] is True
    assert result["image_id"] == torch_image.image_id
    assert engine2.images.get(target).id == torch_image.image_id  # type: ignore[attr-defined]
    # The build ran on a network with no way out: restore proved it before building.
    assert "is cut off" in restored.stderr
    assert not engine2.networks.list(filters={"label": "io.envkit.offline"})  # type: ignore[attr-defined]


def test_not_a_bundle_exits_2_and_a_damaged_one_exits_5(tmp_path: Path) -> None:
    from envkit.record.bundle import BundleIndex, write_bundle

    fake = tmp_path / "zeros.bundle"
    fake.write_bytes(b"\0" * 4096)
    result = run_envkit("restore", str(fake), "--offline")
    assert result.returncode == 2, result.stderr

    # An index that passes its own grammar, but whose wheel's bytes do not match the sha256 it lists.
    members = tmp_path / "members"
    (members / "wheels").mkdir(parents=True)
    (members / "base").mkdir()
    (members / "wheels" / "a-1-py3-none-any.whl").write_bytes(b"wheel")
    (members / "base" / "image.tar").write_bytes(b"base")
    files = {
        "wheels/a-1-py3-none-any.whl": {"sha256": "0" * 64, "size": 5},
        "base/image.tar": {"sha256": hashlib.sha256(b"base").hexdigest(), "size": 4},
    }
    index = BundleIndex(1, "sha256:" + "1" * 64, "sha256:" + "2" * 64, "envkit/debian:bookworm", "sha256:" + "3" * 64,
                        files, {"a-1-py3-none-any.whl": "0" * 64})
    damaged = tmp_path / "damaged.bundle"
    write_bundle(damaged, "{}", index, members, 0)
    result = run_envkit("restore", str(damaged), "--offline")
    assert result.returncode == 5, result.stderr
    assert "does not match its sha256" in result.stderr
