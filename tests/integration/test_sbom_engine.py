"""envkit sbom on a real image: CycloneDX and SPDX name torch, the NVIDIA wheels and Debian's Python."""

from __future__ import annotations

import json
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.json.json_parser import parse_from_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from tests.conftest import REPO, BuiltImage, run_envkit


def _locked_python(name: str) -> str:
    lock = json.loads((REPO / "images/pytorch-cuda/2.8.lock").read_text())
    return lock["apt"][name]


def test_cyclonedx_sbom_of_the_torch_image(torch_image: BuiltImage, tmp_path: Path) -> None:
    output = tmp_path / "sbom.cdx.json"
    result = run_envkit("sbom", torch_image.tag, "--format", "cyclonedx", "-o", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""
    text = output.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    data = json.loads(text)

    root = data["metadata"]["component"]
    assert root["type"] == "container"
    assert root["version"] == torch_image.image_id
    properties = {p["name"]: p["value"] for p in root["properties"]}
    assert properties["envkit:torch"] == "2.8.0"
    assert properties["envkit:cuda"] == "12.8"

    components = {c["name"]: c for c in data["components"]}
    torch = components["torch"]
    assert (torch["version"], torch["purl"]) == ("2.8.0", "pkg:pypi/torch@2.8.0")
    assert torch["externalReferences"][0]["hashes"], "torch's locked wheel hashes are missing"
    nvidia = sorted(name for name in components if name.startswith("nvidia-"))
    assert nvidia, "no nvidia-* wheel in the SBOM"
    cudnn = components["nvidia-cudnn-cu12"]
    assert cudnn["version"] and cudnn["purl"] == f"pkg:pypi/nvidia-cudnn-cu12@{cudnn['version']}"
    python = components["python3.11"]
    assert python["version"] == _locked_python("python3.11")
    assert python["purl"].startswith("pkg:deb/debian/python3.11@")
    assert python["purl"].endswith("?arch=amd64&distro=debian-12")


def test_spdx_sbom_of_the_torch_image_matches_the_manifest_route(
    torch_image: BuiltImage, tmp_path: Path
) -> None:
    output = tmp_path / "sbom.spdx.json"
    result = run_envkit("sbom", torch_image.tag, "--format", "spdx", "-o", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert validate_full_spdx_document(parse_from_file(str(output))) == []
    data = json.loads(output.read_text())
    packages = {p["name"]: p for p in data["packages"]}
    assert packages["torch"]["versionInfo"] == "2.8.0"
    assert packages["torch"]["externalRefs"][0]["referenceLocator"] == "pkg:pypi/torch@2.8.0"
    assert any(name.startswith("nvidia-") and p["versionInfo"] for name, p in packages.items())
    assert packages["python3.11"]["versionInfo"] == _locked_python("python3.11")
    image = next(p for p in data["packages"] if p["SPDXID"] == "SPDXRef-Image")
    assert image["versionInfo"] == torch_image.image_id

    manifest = tmp_path / "m.json"
    assert run_envkit("snapshot", torch_image.tag, "-o", str(manifest)).returncode == 0
    from_manifest = run_envkit("sbom", str(manifest), "--format", "spdx")
    assert from_manifest.returncode == 0, from_manifest.stderr[-3000:]
    assert from_manifest.stdout == output.read_text()
