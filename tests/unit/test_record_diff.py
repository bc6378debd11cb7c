"""Image diffs from synthetic layers and manifests: no engine needed."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import docker.errors
import pytest
from rich.console import Console

from envkit.cli.app import main
from envkit.errors import IntegrityError, UsageError
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
from envkit.record.manifest import read_manifest, write_manifest
from tests.fakes import FakeClient, FakeImage
from tests.unit.test_record_snapshot import _manifest

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


def _manifest_file(tmp_path: Path, name: str, **update: object) -> Path:
    """A snapshot manifest (the one schema `envkit snapshot` writes), sealed, written to ``name``."""
    manifest = _manifest()
    if update:
        manifest = manifest.model_copy(update=update)
    path = tmp_path / name
    write_manifest(path, manifest)
    return path


def test_manifests_compare_without_engine(tmp_path: Path) -> None:
    base = _manifest()
    a = _manifest_file(tmp_path, "a.json")
    other = base.model_copy(update={
        "image": base.image.model_copy(update={"id": "sha256:" + "b" * 64,
                                               "layers": [base.image.layers[0], "sha256:" + "3" * 64]}),
        "python_packages": {**base.python_packages,
                            "torch": base.python_packages["torch"].model_copy(update={"version": "2.8.1"})},
        "labels": {**base.labels, "x": "1"},
    })
    b = _manifest_file(tmp_path, "b.json", **dict(other))
    diff = diff_images(None, str(a), str(b))
    assert not diff.identical
    assert [(c.key, c.a, c.b) for c in diff.python_packages] == [("torch", "2.8.0", "2.8.1")]
    assert [(c.key, c.a, c.b) for c in diff.labels] == [("x", None, "1")]
    assert not diff.env and not diff.apt_packages and not diff.config
    assert [layer.same for layer in diff.layers] == [True, False]
    assert not diff.layers[1].files_available and diff.notes
    diff = diff_images(None, str(a), other)
    assert diff.a == str(a) and diff.b == other.image.id and not diff.identical


def test_a_manifest_against_itself_is_identical(tmp_path: Path) -> None:
    path = _manifest_file(tmp_path, "m.json")
    same = diff_images(None, str(path), str(path))
    assert same.identical and same.a_id == _manifest().image.id
    assert diff_images(None, str(path), read_manifest(path)).identical


def test_diff_cli_exits_0_for_a_manifest_against_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _manifest_file(tmp_path, "m.json")
    assert main(["diff", str(path), str(path)]) == 0
    assert "identical" in capsys.readouterr().out


def test_a_tampered_manifest_is_an_integrity_error(tmp_path: Path) -> None:
    path = _manifest_file(tmp_path, "m.json")
    good = _manifest_file(tmp_path, "good.json")
    path.write_text(path.read_text().replace("2.8.0", "2.8.1", 1))
    with pytest.raises(IntegrityError, match="does not match its digest") as info:
        diff_images(None, str(good), str(path))
    assert info.value.exit_code == 5
    assert main(["diff", str(path), str(good)]) == 5


class _OneImage:
    """An engine holding one image; reading its layers (docker save) is a test failure."""

    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        self.api = self

    def inspect_image(self, ref: str) -> dict:
        if ref not in ("envkit/x:1", self.image_id):
            raise docker.errors.ImageNotFound(f"No such image: {ref}")
        return {"Id": self.image_id, "RepoTags": ["envkit/x:1"]}

    def get_image(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("an image with the manifest's ID needs no docker save")


def test_a_manifest_against_the_image_it_came_from_is_identical(tmp_path: Path) -> None:
    """The recorded inputs of the bug: a snapshot manifest against its own image reported dozens of
    differences (labels, env, every package), since diff read another manifest shape."""
    path = _manifest_file(tmp_path, "m.json")
    client = _OneImage(_manifest().image.id)
    for a, b in ((str(path), "envkit/x:1"), ("envkit/x:1", str(path))):
        diff = diff_images(client, a, b)
        assert diff.identical, diff.headline()
        assert not (diff.labels or diff.env or diff.python_packages or diff.apt_packages or diff.config)


def test_a_manifest_view_holds_what_the_snapshot_recorded() -> None:
    manifest = _manifest()
    view = load_manifest(manifest)
    assert view.image_id == manifest.image.id and view.source == "manifest"
    assert [layer.digest for layer in view.layers] == manifest.image.layers
    assert view.python_packages == {"six": "1.17.0", "torch": "2.8.0"}
    assert view.config["config"] == {"Env": manifest.env, "Labels": manifest.labels}
    assert view.apt_packages == manifest.apt_packages


def test_the_old_manifest_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"image_id": "sha256:aaa", "layers": [], "python_packages": {}}))
    with pytest.raises(IntegrityError, match="schema_version"):
        load_manifest(str(path))


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
