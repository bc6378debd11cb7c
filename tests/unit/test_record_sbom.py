"""SBOMs from a manifest: valid CycloneDX 1.6 and SPDX 2.3, byte-identical for one manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.json.json_parser import parse_from_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from envkit.cli.record import SBOM_FORMATS as FORMATS
from envkit.errors import IntegrityError
from envkit.record import sbom
from envkit.record.manifest import (
    SCHEMA_VERSION,
    ImageRecord,
    Manifest,
    StackVersions,
    read_manifest,
    write_manifest,
)
from envkit.record.snapshot import python_packages_against_lock
from tests.fakes import FakeClient
from tests.unit.test_record_snapshot import make_lock, make_spec

IMAGE_ID = "sha256:" + "c" * 64
TORCH_WHEELS = ["a" * 64, "b" * 64]


def _manifest(*, platform: str = "linux/amd64", reverse: bool = False, epoch: int = 1761955200) -> Manifest:
    installed = {
        "torch": {"version": "2.8.0", "record_sha256": "sha256:" + "1" * 64},
        "six": {"version": "1.17.0", "record_sha256": "sha256:" + "2" * 64},
        "nvidia-cudnn-cu12": {"version": "9.10.2.21", "record_sha256": "sha256:" + "3" * 64},
    }
    spec = make_spec(name="pytorch-cuda", tag="2.8", platform=platform)
    lock = make_lock(spec, {"torch": {"version": "2.8.0", "hashes": TORCH_WHEELS},
                            "six": {"version": "1.16.0", "hashes": ["d" * 64]},
                            "nvidia-cudnn-cu12": {"version": "9.10.2.21", "hashes": ["e" * 64]}})
    packages, mismatches = python_packages_against_lock(installed, lock)
    apt = {"python3.11": "3.11.2-6+deb12u6", "libgcc-s1": "1:12.2.0-14", "libstdc++6": "12.2.0-14"}
    if reverse:
        packages = dict(reversed(packages.items()))
        apt = dict(reversed(apt.items()))
    return Manifest(
        schema_version=SCHEMA_VERSION,
        envkit_version="0.1.0",
        source="images/pytorch-cuda/2.8.yaml",
        image=ImageRecord(id=IMAGE_ID, layers=["sha256:" + "f" * 64], tags=["envkit/pytorch-cuda:2.8"], size=10),
        spec=spec,
        spec_digest="sha256:" + "9" * 64,
        lock=lock,
        base={"ref": "envkit/debian:bookworm-minbase", "suite": "bookworm"},
        source_date_epoch=epoch,
        apt_packages=apt,
        python_packages=packages,
        lock_mismatches=mismatches,
        stack=StackVersions(torch="2.8.0", cuda="12.8", cudnn="9.10.2.21", nccl="2.27.3", python="3.11",
                            arch_list=["sm_80", "sm_90"]),
        env=["PATH=/opt/venv/bin"],
        labels={"io.envkit.name": "pytorch-cuda:2.8"},
    )


def _cdx(manifest: Manifest) -> dict:
    return json.loads(sbom.cyclonedx_json(manifest))


def _spdx(manifest: Manifest) -> dict:
    return json.loads(sbom.spdx_json(manifest))


def _output(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """stdout, and stderr with rich's line wrapping undone."""
    captured = capsys.readouterr()
    return captured.out, " ".join(captured.err.split())


def _by_name(components: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in components}


def test_cyclonedx_document_validates_against_the_1_6_schema() -> None:
    text = sbom.cyclonedx_json(_manifest())
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    data = json.loads(text)
    assert (data["bomFormat"], data["specVersion"]) == ("CycloneDX", "1.6")


def test_spdx_document_parses_and_validates_as_spdx_2_3(tmp_path: Path) -> None:
    path = tmp_path / "sbom.spdx.json"
    path.write_text(sbom.spdx_json(_manifest()))
    document = parse_from_file(str(path))
    assert validate_full_spdx_document(document) == []
    assert document.creation_info.spdx_version == "SPDX-2.3"


def test_cyclonedx_describes_the_image_with_its_stack() -> None:
    data = _cdx(_manifest())
    root = data["metadata"]["component"]
    assert root["type"] == "container"
    assert root["name"] == "envkit/pytorch-cuda"
    assert root["version"] == IMAGE_ID
    assert root["purl"] == f"pkg:oci/pytorch-cuda@{IMAGE_ID}?arch=amd64&tag=2.8"
    assert root["hashes"] == [{"alg": "SHA-256", "content": "c" * 64}]
    properties = {p["name"]: p["value"] for p in root["properties"]}
    assert properties["envkit:torch"] == "2.8.0"
    assert properties["envkit:cuda"] == "12.8"
    assert properties["envkit:cudnn"] == "9.10.2.21"
    assert properties["envkit:nccl"] == "2.27.3"
    assert properties["envkit:cuda_arch_list"] == "sm_80,sm_90"
    assert data["metadata"]["timestamp"] == "2025-11-01T00:00:00+00:00"
    assert data["metadata"]["tools"]["components"][0]["name"] == "envkit"
    depends = next(d for d in data["dependencies"] if d["ref"] == root["bom-ref"])
    assert sorted(depends["dependsOn"]) == sorted(c["bom-ref"] for c in data["components"])


def test_purls_for_python_deb_and_image_packages() -> None:
    components = _by_name(_cdx(_manifest())["components"])
    assert components["torch"]["purl"] == "pkg:pypi/torch@2.8.0"
    assert components["nvidia-cudnn-cu12"]["purl"] == "pkg:pypi/nvidia-cudnn-cu12@9.10.2.21"
    assert components["python3.11"]["purl"] == (
        "pkg:deb/debian/python3.11@3.11.2-6%2Bdeb12u6?arch=amd64&distro=debian-12"
    )
    assert components["libstdc++6"]["purl"].startswith("pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?")
    assert components["libgcc-s1"]["version"] == "1:12.2.0-14"


def test_deb_arch_follows_the_spec_platform() -> None:
    data = _cdx(_manifest(platform="linux/arm64"))
    components = _by_name(data["components"])
    assert components["python3.11"]["purl"].endswith("?arch=arm64&distro=debian-12")
    assert "arch=arm64" in data["metadata"]["component"]["purl"]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["envkit-test/drift:1", "envkit/pytorch-cuda:2.8"], ("envkit/pytorch-cuda", "2.8")),
        (["envkit-test/pytorch-cuda:2.8-abc"], ("envkit-test/pytorch-cuda", "2.8-abc")),
        ([], ("envkit/pytorch-cuda", "2.8")),
    ],
)
def test_the_image_is_named_by_its_spec_tag_when_it_carries_it(tags: list[str], expected: tuple[str, str]) -> None:
    manifest = _manifest()
    manifest = manifest.model_copy(update={"image": manifest.image.model_copy(update={"tags": tags})})
    assert sbom.image_reference(manifest) == expected
    assert _cdx(manifest)["metadata"]["component"]["name"] == expected[0]


def test_cyclonedx_hashes_come_from_the_lock() -> None:
    components = _by_name(_cdx(_manifest())["components"])
    # One locked wheel: with hashes required, it is the installed artifact.
    assert components["nvidia-cudnn-cu12"]["hashes"] == [{"alg": "SHA-256", "content": "e" * 64}]
    # Several wheels: all on the distribution reference, none claimed as the component's own.
    torch = components["torch"]
    assert "hashes" not in torch
    (reference,) = torch["externalReferences"]
    assert reference["type"] == "distribution"
    assert reference["url"] == "https://pypi.org/simple/torch/"
    assert [h["content"] for h in reference["hashes"]] == ["a" * 64, "b" * 64]
    properties = {p["name"]: p["value"] for p in torch["properties"]}
    assert properties["envkit:record_sha256"] == "sha256:" + "1" * 64
    # six is installed at 1.17.0 but locked at 1.16.0: the lock's hash is not six 1.17.0's.
    assert "hashes" not in components["six"]
    assert "externalReferences" not in components["six"]


def test_spdx_packages_purls_checksums_and_relationships() -> None:
    data = _spdx(_manifest())
    packages = _by_name(data["packages"])
    image = packages["envkit/pytorch-cuda"]
    assert image["primaryPackagePurpose"] == "CONTAINER"
    assert image["checksums"] == [{"algorithm": "SHA256", "checksumValue": "c" * 64}]
    assert "envkit:torch=2.8.0" in image["comment"].splitlines()
    locators = {p["name"]: p["externalRefs"][0]["referenceLocator"] for p in data["packages"]}
    assert locators["torch"] == "pkg:pypi/torch@2.8.0"
    assert locators["python3.11"] == "pkg:deb/debian/python3.11@3.11.2-6%2Bdeb12u6?arch=amd64&distro=debian-12"
    assert packages["nvidia-cudnn-cu12"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": "e" * 64}]
    assert "checksums" not in packages["torch"]
    (note,) = packages["torch"]["annotations"]
    assert note["comment"] == f"envkit:locked_sha256=sha256:{'a' * 64},sha256:{'b' * 64}"
    assert "checksums" not in packages["six"]
    assert packages["libstdc++6"]["SPDXID"] == "SPDXRef-deb-libstdc-6"
    assert data["creationInfo"]["created"] == "2025-11-01T00:00:00Z"
    described = [r for r in data["relationships"] if r["relationshipType"] == "DESCRIBES"]
    assert described == [{"spdxElementId": "SPDXRef-DOCUMENT", "relatedSpdxElement": "SPDXRef-Image",
                          "relationshipType": "DESCRIBES"}]
    contained = {r["relatedSpdxElement"] for r in data["relationships"] if r["relationshipType"] == "CONTAINS"}
    assert contained == {p["SPDXID"] for p in data["packages"]} - {"SPDXRef-Image"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_manifest_gives_byte_identical_documents(fmt: str, tmp_path: Path) -> None:
    first = sbom.render(_manifest(), fmt)
    assert sbom.render(_manifest(), fmt) == first
    assert sbom.render(_manifest(reverse=True), fmt) == first
    path = tmp_path / "m.json"
    write_manifest(path, _manifest())
    assert sbom.render(read_manifest(path), fmt) == first
    assert sbom.render(_manifest(epoch=1700000000), fmt) != first


def test_serial_number_and_namespace_derive_from_the_manifest() -> None:
    cdx, spdx = _cdx(_manifest()), _spdx(_manifest())
    serial = str(sbom.document_uuid(_manifest()))
    assert cdx["serialNumber"] == f"urn:uuid:{serial}"
    assert spdx["documentNamespace"].endswith(serial)
    other = str(sbom.document_uuid(_manifest(epoch=1700000000)))
    assert other != serial
    assert [c["name"] for c in cdx["components"]] == sorted(c["name"] for c in cdx["components"])


def test_every_format_the_cli_offers_has_a_renderer() -> None:
    assert set(FORMATS) == set(sbom.RENDERERS)


def test_a_malformed_lock_hash_is_an_integrity_error() -> None:
    manifest = _manifest()
    torch = manifest.python_packages["torch"].model_copy(update={"lock_hashes": ["md5:abc"]})
    broken = manifest.model_copy(update={"python_packages": {**manifest.python_packages, "torch": torch}})
    with pytest.raises(IntegrityError, match="torch") as info:
        sbom.cyclonedx_json(broken)
    assert info.value.exit_code == 5


def test_documents_that_fail_validation_are_internal_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(sbom.InvalidSbom, match="1.6 schema"):
        sbom.check_cyclonedx(json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": 3}))
    monkeypatch.setattr(sbom, "spdx_id", lambda kind, name, taken: f"not an id {name}")
    with pytest.raises(sbom.InvalidSbom, match="SPDX document"):
        sbom.spdx_json(_manifest())


def test_cli_writes_a_manifest_sbom_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from envkit.cli.app import main

    manifest_path = tmp_path / "m.json"
    write_manifest(manifest_path, _manifest())
    output = tmp_path / "out" / "sbom.cdx.json"
    assert main(["sbom", str(manifest_path), "--format", "cyclonedx", "-o", str(output)]) == 0
    out, err = _output(capsys)
    assert out == ""
    assert "wrote" in err and "CycloneDX 1.6" in err
    assert "six: installed 1.17.0, lock 1.16.0" in err
    assert output.read_text() == sbom.cyclonedx_json(read_manifest(manifest_path))
    assert [p.name for p in output.parent.iterdir()] == ["sbom.cdx.json"]


def test_cli_prints_only_the_document_without_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from envkit.cli.app import main

    manifest_path = tmp_path / "m.json"
    write_manifest(manifest_path, _manifest())
    assert main(["sbom", str(manifest_path), "--format", "spdx"]) == 0
    out = capsys.readouterr().out
    assert out == sbom.spdx_json(read_manifest(manifest_path))


def test_cli_refuses_an_unknown_format_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from envkit.cli.app import main

    manifest_path = tmp_path / "m.json"
    write_manifest(manifest_path, _manifest())
    assert main(["sbom", str(manifest_path), "--format", "xml"]) == 2
    assert main(["sbom", str(manifest_path)]) == 2
    assert "--format" in _output(capsys)[1]


def test_cli_refuses_an_edited_manifest_with_exit_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from envkit.cli.app import main

    manifest_path = tmp_path / "m.json"
    write_manifest(manifest_path, _manifest())
    manifest_path.write_text(manifest_path.read_text().replace('"2.8.0"', '"2.8.1"', 1))
    output = tmp_path / "sbom.json"
    assert main(["sbom", str(manifest_path), "--format", "spdx", "-o", str(output)]) == 5
    assert "does not match its digest" in _output(capsys)[1]
    assert not output.exists()


def test_cli_names_a_missing_image_with_exit_2(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from envkit.cli.app import main

    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: FakeClient())
    assert main(["sbom", "envkit-test/absent:nothing", "--format", "cyclonedx"]) == 2
    out, err = _output(capsys)
    assert "image envkit-test/absent:nothing not found" in err
    assert out == ""


def test_cli_reports_an_invalid_document_as_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from envkit.cli.app import main

    manifest_path = tmp_path / "m.json"
    write_manifest(manifest_path, _manifest())
    monkeypatch.setattr(sbom, "spdx_id", lambda kind, name, taken: f"not an id {name}")
    assert main(["sbom", str(manifest_path), "--format", "spdx"]) == 1
    out, err = _output(capsys)
    assert "internal error" in err and "InvalidSbom" in err
    assert out == ""
