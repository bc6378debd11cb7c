"""The catalog: NAME as ``name:tag`` or a path, listing in version order, and what is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from envkit.errors import UsageError
from envkit.resources import images_dir
from envkit.spec import catalog


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A catalog of one image with three tags (2.8, 2.10, 2.8-dev), in a temporary directory."""
    root = tmp_path / "images"
    (root / "resnet").mkdir(parents=True)
    source = (images_dir() / "resnet" / "2.8.yaml").read_text()
    for tag in ("2.8", "2.10", "2.8-dev"):
        (root / "resnet" / f"{tag}.yaml").write_text(source.replace('tag: "2.8"', f'tag: "{tag}"'))
    monkeypatch.setenv("ENVKIT_IMAGES_DIR", str(root))
    monkeypatch.chdir(tmp_path)
    return root


def test_a_catalog_name_maps_to_its_file_and_lock(images: Path) -> None:
    ref = catalog.load("resnet:2.8")
    assert ref.path == images / "resnet" / "2.8.yaml"
    assert ref.lock_path == images / "resnet" / "2.8.lock"
    assert ref.display == "images/resnet/2.8.yaml"
    assert (ref.spec.name, ref.spec.tag) == ("resnet", "2.8")


def test_listing_sorts_tags_as_versions(images: Path) -> None:
    assert [name for name, _ in catalog.list_catalog_paths()] == ["resnet:2.8", "resnet:2.8-dev", "resnet:2.10"]
    assert [spec.tag for _, spec in catalog.list_catalog()] == ["2.8", "2.8-dev", "2.10"]


def test_a_missing_catalog_name_exits_2_naming_the_known_images(images: Path) -> None:
    with pytest.raises(UsageError) as info:
        catalog.load("resnet:9.9")
    assert info.value.exit_code == 2
    assert "no catalog image resnet:9.9" in str(info.value)
    assert "resnet:2.8, resnet:2.8-dev, resnet:2.10" in (info.value.hint or "")


@pytest.mark.parametrize("name", ["resnet", ":2.8", "resnet:", "resnet:../x"])
def test_a_name_that_is_neither_a_catalog_name_nor_a_file_exits_2(images: Path, name: str) -> None:
    with pytest.raises(UsageError) as info:
        catalog.spec_path(name)
    assert info.value.exit_code == 2


def test_a_path_is_used_as_given_and_a_missing_one_exits_2(images: Path, tmp_path: Path) -> None:
    local = tmp_path / "mine.yaml"
    shutil.copy(images / "resnet" / "2.8.yaml", local)
    assert catalog.spec_path(str(local)) == local
    assert catalog.load("./mine.yaml").spec.name == "resnet"
    with pytest.raises(UsageError, match="does not exist"):
        catalog.spec_path("./absent.yaml")


def test_the_catalog_wins_over_a_local_file_of_the_same_name(images: Path, tmp_path: Path) -> None:
    (tmp_path / "resnet:2.8").write_text("not a spec")
    assert catalog.spec_path("resnet:2.8") == images / "resnet" / "2.8.yaml"
    (tmp_path / "resnet:7").write_text("not a spec")
    with pytest.raises(UsageError) as info:
        catalog.spec_path("resnet:7")
    assert "write ./resnet:7 to use the file" in (info.value.hint or "")


def test_a_spec_whose_name_does_not_match_its_place_exits_2(images: Path) -> None:
    moved = images / "resnet" / "3.0.yaml"
    shutil.copy(images / "resnet" / "2.8.yaml", moved)
    with pytest.raises(UsageError, match="do not match the file's place in the catalog") as info:
        catalog.load("resnet:3.0")
    assert info.value.exit_code == 2


def test_image_ref_for_maps_catalog_names_and_passes_image_references(images: Path) -> None:
    tag = catalog.load("resnet:2.8").spec.image_tag
    assert catalog.image_ref_for("resnet:2.8") == tag
    assert catalog.image_ref_for("sha256:" + "a" * 64) == "sha256:" + "a" * 64
    assert catalog.image_ref_for("ghcr.io/org/img:1") == "ghcr.io/org/img:1"
