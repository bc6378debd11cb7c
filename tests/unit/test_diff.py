"""Image diffs from synthetic layers and manifests: no engine needed."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

from envkit.errors import UsageError
from envkit.record.diff import (
    ImageView,
    LayerView,
    apt_packages_from,
    compare_views,
    diff_images,
    inspect_or_usage,
    load_manifest,
    merge_captured,
    python_packages_from,
    render,
    scan_layer,
)
from tests.fakes import FakeClient, FakeImage

DPKG_STATUS = b"""Package: libc6
Status: install ok installed
Version: 2.36-9+deb12u4
Description: GNU C Library
 continued line: not a field

Package: removed-pkg
Status: deinstall ok config-files
Version: 1.0

Package: zlib1g
Status: install ok installed
Version: 1:1.2.13.dfsg-1
"""


def _metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\nlong text\n".encode()


def _layer(files: dict[str, bytes | None], mtime: int = 1_700_000_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _scan(files: dict[str, bytes | None], mtime: int = 1_700_000_000):
    return scan_layer(io.BufferedReader(io.BytesIO(_layer(files, mtime))))


SITE = "opt/venv/lib/python3.11/site-packages"


def test_scan_layer_hashes_files_and_captures_metadata() -> None:
    layer = _scan({f"{SITE}/torch-2.8.0.dist-info/METADATA": _metadata("torch", "2.8.0"), "opt/a": b"abc"})
    entry = layer.files["opt/a"]
    assert entry.size == 3
    assert entry.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert f"{SITE}/torch-2.8.0.dist-info/METADATA" in layer.captured
    assert "opt/a" not in layer.captured


def test_merge_applies_whiteouts_and_opaque_dirs() -> None:
    base = _scan({
        f"{SITE}/torch-2.7.1.dist-info/METADATA": _metadata("torch", "2.7.1"),
        f"{SITE}/old_pkg-1.0.dist-info/METADATA": _metadata("old_pkg", "1.0"),
        "var/lib/dpkg/status": DPKG_STATUS,
    })
    upper = _scan({
        f"{SITE}/.wh.torch-2.7.1.dist-info": b"",
        f"{SITE}/torch-2.8.0.dist-info/METADATA": _metadata("torch", "2.8.0"),
    })
    merged = merge_captured([base, upper])
    assert python_packages_from(merged) == {"torch": "2.8.0", "old-pkg": "1.0"}
    opaque = _scan({f"{SITE}/.wh..wh..opq": b"", f"{SITE}/numpy-2.1.0.dist-info/METADATA": _metadata("numpy", "2.1.0")})
    merged = merge_captured([base, opaque])
    assert python_packages_from(merged) == {"numpy": "2.1.0"}
    assert "var/lib/dpkg/status" in merged


def test_apt_packages_only_installed() -> None:
    assert apt_packages_from(DPKG_STATUS) == {"libc6": "2.36-9+deb12u4", "zlib1g": "1:1.2.13.dfsg-1"}


def _view(ref: str, image_id: str, layers: list[dict[str, bytes | None]], *, mtime: int = 1,
          labels: dict | None = None, env: list[str] | None = None, py: dict | None = None) -> ImageView:
    scanned = [_scan(files, mtime) for files in layers]
    return ImageView(
        ref=ref,
        source="image",
        image_id=image_id,
        config={"created": f"t{mtime}", "config": {"Labels": labels or {}, "Env": env or [], "User": "app"}},
        python_packages=py or {},
        apt_packages={},
        layers=[LayerView(digest=f"sha256:{i}{image_id}", files=s.files) for i, s in enumerate(scanned)],
    )


def test_compare_names_every_kind_of_difference() -> None:
    shared = {"bin": None, "bin/sh": b"sh"}
    a = _view("a", "A", [shared, {"opt/x": b"1", "opt/gone": b"g", "opt/same": b"s"}], mtime=1,
              labels={"io.envkit.torch": "2.7.1", "keep": "1"}, env=["PATH=/bin", "OLD=1"],
              py={"torch": "2.7.1", "nvidia-nccl-cu12": "2.26.2"})
    b = _view("b", "B", [shared, {"opt/x": b"22", "opt/new": b"n", "opt/same": b"s"}], mtime=2,
              labels={"io.envkit.torch": "2.8.0", "keep": "1"}, env=["PATH=/bin", "NEW=2"],
              py={"torch": "2.8.0", "nvidia-nccl-cu12": "2.27.3", "triton": "3.4.0"})
    b.layers[0] = LayerView(digest=a.layers[0].digest, files=b.layers[0].files)
    diff = compare_views(a, b)
    assert not diff.identical
    assert [(c.key, c.a, c.b) for c in diff.labels] == [("io.envkit.torch", "2.7.1", "2.8.0")]
    assert {(c.key, c.kind) for c in diff.env} == {("NEW", "added"), ("OLD", "removed")}
    assert {(c.key, c.kind, c.a, c.b) for c in diff.python_packages} == {
        ("nvidia-nccl-cu12", "changed", "2.26.2", "2.27.3"),
        ("torch", "changed", "2.7.1", "2.8.0"),
        ("triton", "added", None, "3.4.0"),
    }
    assert [c.key for c in diff.config] == ["created"]
    assert diff.layers[0].same
    layer = diff.layers[1]
    assert [f.path for f in layer.added] == ["opt/new"]
    assert [f.path for f in layer.removed] == ["opt/gone"]
    assert [(c.path, c.a.size, c.b.size) for c in layer.changed] == [("opt/x", 1, 2)]
    assert layer.mtime_only == 1  # opt/same: same bytes, other mtime
    assert "Python packages" in diff.headline()
    payload = json.loads(diff.to_json())
    assert payload["identical"] is False
    assert payload["layers"][1]["counts"] == {"added": 1, "removed": 1, "changed": 1}
    console = Console(record=True, width=200)
    render(diff, console)
    text = console.export_text()
    assert "torch" in text and "2.7.1" in text and "2.8.0" in text and "opt/new" in text


def test_summary_caps_file_lists_but_keeps_counts() -> None:
    many = {f"f{i:03d}": b"x" for i in range(30)}
    a = _view("a", "A", [{}])
    b = _view("b", "B", [many])
    summary = compare_views(a, b)
    assert len(summary.layers[0].added) == 10 and summary.layers[0].counts["added"] == 30
    full = compare_views(a, b, files=True)
    assert len(full.layers[0].added) == 30


def test_manifests_compare_without_engine(tmp_path: Path) -> None:
    base = {
        "image_id": "sha256:aaa",
        "layers": ["sha256:l1", "sha256:l2"],
        "python_packages": {"torch": "2.7.1"},
        "apt_packages": [{"name": "libc6", "version": "2.36"}],
        "config": {"Env": ["A=1"], "Labels": {"x": "1"}},
    }
    other = dict(base, image_id="sha256:bbb", layers=["sha256:l1", "sha256:l3"],
                 python_packages={"torch": "2.8.0"})
    path = tmp_path / "a.json"
    path.write_text(json.dumps(base))
    diff = diff_images(None, str(path), other)
    assert not diff.identical
    assert [(c.key, c.a, c.b) for c in diff.python_packages] == [("torch", "2.7.1", "2.8.0")]
    assert diff.layers[0].same and not diff.layers[1].same and not diff.layers[1].files_available
    assert diff.notes
    same = diff_images(None, str(path), base)
    assert same.identical


def test_manifest_view_accepts_inspect_style_config() -> None:
    view = load_manifest({"image_id": "x", "layers": [{"digest": "sha256:1"}],
                          "config": {"Config": {"Env": ["A=1"]}, "Architecture": "amd64"}})
    assert view.layers[0].digest == "sha256:1"
    assert view.config["config"]["Env"] == ["A=1"] and view.config["architecture"] == "amd64"


def test_missing_image_is_a_usage_error_naming_it() -> None:
    with pytest.raises(UsageError, match="nosuch:1") as info:
        diff_images(FakeClient(), "nosuch:1", "other:2")
    assert info.value.exit_code == 2


_ONLY_TAGGED = {"envkit/pytorch-cuda:2.8": FakeImage("sha256:" + "8" * 64)}


def test_a_catalog_name_means_its_image_tag() -> None:
    assert inspect_or_usage(FakeClient(_ONLY_TAGGED), "pytorch-cuda:2.8")["Id"] == "sha256:" + "8" * 64
    with pytest.raises(UsageError, match=r"pytorch-cuda:2.7 \(envkit/pytorch-cuda:2.7\) not found") as info:
        inspect_or_usage(FakeClient(_ONLY_TAGGED), "pytorch-cuda:2.7")
    assert "envkit build pytorch-cuda:2.7" in (info.value.hint or "")


def test_missing_manifest_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        diff_images(None, str(tmp_path / "nope.json"), {"image_id": "x"})
