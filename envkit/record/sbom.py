"""Software bills of materials from a manifest: CycloneDX 1.6 JSON and SPDX 2.3 JSON.

Each document is a pure function of the manifest. Its time is the manifest's SOURCE_DATE_EPOCH,
its serial number and namespace derive from the manifest's content digest and its components are
sorted, so one manifest always gives the same bytes. Every document is checked against its
format's schema (CycloneDX) or rules (SPDX) before it is returned; one that fails is an envkit bug
and raises InvalidSbom, which the CLI reports as an internal error.

What goes in: the image (the described component, with the torch/CUDA/cuDNN/NCCL stack as
properties), every Python distribution in its venv as ``pkg:pypi`` and every dpkg package as
``pkg:deb``.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from cyclonedx.exception import MissingOptionalDependencyException
from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
from spdx_tools.spdx.model import (
    Actor,
    ActorType,
    Annotation,
    AnnotationType,
    Checksum,
    ChecksumAlgorithm,
    CreationInfo,
    Document,
    ExternalPackageRef,
    ExternalPackageRefCategory,
    Package,
    PackagePurpose,
    Relationship,
    RelationshipType,
    SpdxNoAssertion,
)
from spdx_tools.spdx.parser.error import SPDXParsingError
from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from envkit import __version__, platforms
from envkit.errors import EnvkitError, IntegrityError
from envkit.record.manifest import Manifest, PythonPackage, content_digest
from envkit.spec import compat

PYPI_INDEX = "https://pypi.org/simple"
DEBIAN_RELEASES = {"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14"}
SPDX_NAMESPACE_BASE = "https://spdx.org/spdxdocs"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SPDX_ID_BAD = re.compile(r"[^A-Za-z0-9.-]+")


class InvalidSbom(RuntimeError):
    """A generated document that its own format rejects: a bug in envkit, not bad input."""


@dataclass(frozen=True)
class PythonItem:
    name: str
    version: str | None
    purl: PackageURL
    locked_sha256: tuple[str, ...]
    record_sha256: str | None
    index_url: str

    @property
    def installed_sha256(self) -> str | None:
        """The installed wheel's hash, known only when the lock allows exactly one artifact.

        The image installs with ``--require-hashes``, so the wheel pip took is one of
        ``locked_sha256``; which one is not recorded (the lock keeps no file names), so with several
        candidates none of them is claimed as the component's own hash.
        """
        return self.locked_sha256[0] if len(self.locked_sha256) == 1 else None


@dataclass(frozen=True)
class DebItem:
    name: str
    version: str
    purl: PackageURL


@dataclass(frozen=True)
class ImageItem:
    name: str
    reference: str
    image_id: str
    purl: PackageURL
    properties: tuple[tuple[str, str], ...]


def document_time(manifest: Manifest) -> datetime:
    return datetime.fromtimestamp(manifest.source_date_epoch, tz=timezone.utc)


def manifest_digest(manifest: Manifest) -> str:
    """The digest the manifest records (what it was written with), else the digest of its content."""
    return manifest.digest or content_digest(manifest.model_dump(mode="json"))


def document_uuid(manifest: Manifest) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"envkit:sbom:{manifest_digest(manifest)}")


def sha256_hex(value: str, owner: str) -> str:
    """``sha256:<hex>`` or bare hex -> lowercase hex; anything else is a damaged manifest."""
    algorithm, sep, digest = value.partition(":")
    digest = digest if sep else algorithm
    if (sep and algorithm.lower() != "sha256") or not _SHA256_RE.match(digest.lower()):
        raise IntegrityError(f"the manifest lists {value!r} for {owner}, which is not a sha256 digest")
    return digest.lower()


def deb_arch(manifest: Manifest) -> str:
    return platforms.architecture(manifest.spec.platform)


def debian_distro(manifest: Manifest) -> str | None:
    bootstrap = manifest.spec.base.bootstrap
    suite = manifest.base.get("suite") or (bootstrap.suite if bootstrap is not None else None)
    if not suite:
        return None
    return f"debian-{DEBIAN_RELEASES[suite]}" if suite in DEBIAN_RELEASES else str(suite)


def index_url(manifest: Manifest) -> str:
    """The index the lock was resolved against: PyPI, or PyTorch's own for a non-default CUDA build."""
    spec = manifest.spec
    try:
        resolved = compat.resolve(spec.torch.version, spec.torch.cuda, spec.python)
    except EnvkitError:
        return PYPI_INDEX
    return (resolved.index_url or PYPI_INDEX).rstrip("/")


def python_item(name: str, package: PythonPackage, index: str) -> PythonItem:
    version = package.version or package.lock_version
    # Lock hashes describe the locked version's wheels; for a different installed version they do not apply.
    locked = package.lock_hashes if package.lock_version == version else []
    return PythonItem(
        name=name,
        version=version,
        purl=PackageURL(type="pypi", name=name, version=version),
        locked_sha256=tuple(sorted({sha256_hex(h, name) for h in locked})),
        record_sha256=sha256_hex(package.record_sha256, name) if package.record_sha256 else None,
        index_url=index,
    )


def python_items(manifest: Manifest) -> list[PythonItem]:
    index = index_url(manifest)
    packages = manifest.python_packages
    return [python_item(name, packages[name], index) for name in sorted(packages)]


def deb_items(manifest: Manifest) -> list[DebItem]:
    qualifiers = {"arch": deb_arch(manifest)}
    distro = debian_distro(manifest)
    if distro:
        qualifiers["distro"] = distro
    return [
        DebItem(name, version, PackageURL("deb", "debian", name, version, qualifiers))
        for name, version in sorted(manifest.apt_packages.items())
    ]


def image_reference(manifest: Manifest) -> tuple[str, str]:
    """(repository, tag): the spec's envkit/NAME:TAG when the image carries it, else its first tag."""
    own = manifest.spec.image_tag
    chosen = own if own in manifest.image.tags or not manifest.image.tags else manifest.image.tags[0]
    repository, _, tag = chosen.rpartition(":")
    return repository, tag


def stack_properties(manifest: Manifest) -> tuple[tuple[str, str], ...]:
    stack = manifest.stack
    values = {
        "envkit:torch": stack.torch,
        "envkit:cuda": stack.cuda,
        "envkit:cudnn": stack.cudnn,
        "envkit:nccl": stack.nccl,
        "envkit:python": stack.python,
        "envkit:cuda_arch_list": ",".join(stack.arch_list) or None,
        "envkit:source": manifest.source,
        "envkit:spec_digest": manifest.spec_digest or None,
        "envkit:manifest_digest": manifest_digest(manifest),
        "envkit:source_date_epoch": str(manifest.source_date_epoch),
        "envkit:base": manifest.base.get("ref"),
        "envkit:base_rootfs": manifest.base.get("rootfs"),
        "envkit:image_tags": ",".join(manifest.image.tags) or None,
    }
    return tuple(sorted((key, str(value)) for key, value in values.items() if value))


def image_item(manifest: Manifest) -> ImageItem:
    repository, tag = image_reference(manifest)
    # A locally built image has no registry manifest digest; its ID (the config digest) names it.
    purl = PackageURL(
        type="oci",
        name=repository.rpartition("/")[2].lower(),
        version=f"sha256:{sha256_hex(manifest.image.id, 'the image')}",
        qualifiers={"arch": deb_arch(manifest), "tag": tag},
    )
    return ImageItem(
        name=repository,
        reference=f"{repository}:{tag}",
        image_id=manifest.image.id,
        purl=purl,
        properties=stack_properties(manifest),
    )


# --------------------------------------------------------------------------- CycloneDX


def cyclonedx_bom(manifest: Manifest) -> Bom:
    image = image_item(manifest)
    root = Component(
        type=ComponentType.CONTAINER,
        name=image.name,
        version=image.image_id,
        bom_ref=image.purl.to_string(),
        purl=image.purl,
        hashes=[_cdx_sha256(sha256_hex(image.image_id, "the image"))],
        properties=[_cdx_property(name, value) for name, value in image.properties],
    )
    components = [_cdx_python(item) for item in python_items(manifest)]
    components += [_cdx_deb(item) for item in deb_items(manifest)]
    envkit_tool = Component(type=ComponentType.APPLICATION, name="envkit", version=__version__)
    bom = Bom(
        serial_number=document_uuid(manifest),
        metadata=BomMetaData(
            timestamp=document_time(manifest),
            tools=ToolRepository(components=[envkit_tool]),
            component=root,
        ),
        components=components,
    )
    bom.register_dependency(root, components)
    return bom


def _cdx_sha256(digest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=digest)


def _cdx_property(name: str, value: str) -> Property:
    return Property(name=name, value=value)


def _cdx_python(item: PythonItem) -> Component:
    references = []
    if item.locked_sha256:
        # Every wheel the lock allows for this version (pip installed one of them, hashes required):
        # CycloneDX carries such a set as a distribution reference with hashes, as requirement files
        # with several --hash options are described by the CycloneDX Python tooling.
        references.append(ExternalReference(
            type=ExternalReferenceType.DISTRIBUTION,
            url=XsUri(f"{item.index_url}/{item.name}/"),
            comment="wheels the lock allows for this version; the image installed one of them",
            hashes=[_cdx_sha256(digest) for digest in item.locked_sha256],
        ))
    properties = []
    if item.record_sha256:
        properties.append(_cdx_property("envkit:record_sha256", f"sha256:{item.record_sha256}"))
    return Component(
        type=ComponentType.LIBRARY,
        name=item.name,
        version=item.version,
        bom_ref=item.purl.to_string(),
        purl=item.purl,
        hashes=[_cdx_sha256(item.installed_sha256)] if item.installed_sha256 else [],
        external_references=references,
        properties=properties,
    )


def _cdx_deb(item: DebItem) -> Component:
    return Component(
        type=ComponentType.LIBRARY, name=item.name, version=item.version, bom_ref=item.purl.to_string(),
        purl=item.purl,
    )


def check_cyclonedx(text: str) -> None:
    """Validate against the CycloneDX 1.6 JSON schema; skipped when jsonschema is not installed."""
    try:
        error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    except MissingOptionalDependencyException:
        return
    if error is not None:
        raise InvalidSbom(f"the CycloneDX document fails the 1.6 schema: {error}")


def cyclonedx_json(manifest: Manifest) -> str:
    """The manifest as a CycloneDX 1.6 JSON document."""
    text = JsonV1Dot6(cyclonedx_bom(manifest)).output_as_string(indent=2) + "\n"
    check_cyclonedx(text)
    return text


# --------------------------------------------------------------------------- SPDX


def spdx_id(kind: str, name: str, taken: set[str]) -> str:
    """``SPDXRef-<kind>-<name>`` with characters SPDX IDs lack replaced; unique within ``taken``."""
    candidate = f"SPDXRef-{kind}-{_SPDX_ID_BAD.sub('-', name)}"
    if candidate in taken:
        candidate += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    taken.add(candidate)
    return candidate


def spdx_document(manifest: Manifest) -> Document:
    image = image_item(manifest)
    # Older spdx-tools releases append "Z" even to an aware datetime, so they are given a naive UTC one.
    created = document_time(manifest).replace(tzinfo=None)
    tool = Actor(ActorType.TOOL, f"envkit-{__version__}")
    root = _spdx_image(image)
    taken = {root.spdx_id}
    packages, annotations = [], []
    for item in python_items(manifest):
        package, annotation = _spdx_python(item, spdx_id("pypi", item.name, taken), tool, created)
        packages.append(package)
        annotations.extend(annotation)
    packages += [_spdx_deb(item, spdx_id("deb", item.name, taken)) for item in deb_items(manifest)]
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, root.spdx_id)]
    relationships += [Relationship(root.spdx_id, RelationshipType.CONTAINS, p.spdx_id) for p in packages]
    slug = _SPDX_ID_BAD.sub("-", image.reference)
    creation = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name=image.reference,
        document_namespace=f"{SPDX_NAMESPACE_BASE}/{slug}-{document_uuid(manifest)}",
        creators=[tool],
        created=created,
    )
    return Document(
        creation, packages=[root, *packages], relationships=relationships, annotations=annotations
    )


def _spdx_checksum(digest: str) -> Checksum:
    return Checksum(ChecksumAlgorithm.SHA256, digest)


def _spdx_purl(purl: PackageURL) -> ExternalPackageRef:
    return ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl.to_string())


def _spdx_image(image: ImageItem) -> Package:
    return Package(
        spdx_id="SPDXRef-Image",
        name=image.name,
        version=image.image_id,
        download_location=SpdxNoAssertion(),
        files_analyzed=False,
        checksums=[_spdx_checksum(sha256_hex(image.image_id, "the image"))],
        external_references=[_spdx_purl(image.purl)],
        primary_package_purpose=PackagePurpose.CONTAINER,
        comment="\n".join(f"{name}={value}" for name, value in image.properties),
    )


def _spdx_python(
    item: PythonItem, spdx_ref: str, tool: Actor, created: datetime
) -> tuple[Package, list[Annotation]]:
    annotations = []
    if len(item.locked_sha256) > 1:
        # SPDX checksums are all of one file, so the lock's several candidate wheels go in an annotation.
        annotations.append(Annotation(
            spdx_ref, AnnotationType.OTHER, tool, created,
            "envkit:locked_sha256=" + ",".join(f"sha256:{digest}" for digest in item.locked_sha256),
        ))
    package = Package(
        spdx_id=spdx_ref,
        name=item.name,
        version=item.version,
        download_location=f"{item.index_url}/{item.name}/",
        files_analyzed=False,
        checksums=[_spdx_checksum(item.installed_sha256)] if item.installed_sha256 else [],
        external_references=[_spdx_purl(item.purl)],
        primary_package_purpose=PackagePurpose.LIBRARY,
        comment=f"envkit:record_sha256=sha256:{item.record_sha256}" if item.record_sha256 else None,
    )
    return package, annotations


def _spdx_deb(item: DebItem, spdx_ref: str) -> Package:
    return Package(
        spdx_id=spdx_ref,
        name=item.name,
        version=item.version,
        download_location=SpdxNoAssertion(),
        files_analyzed=False,
        external_references=[_spdx_purl(item.purl)],
    )


def check_spdx(text: str) -> None:
    """Parse the emitted JSON back with spdx-tools and validate it against SPDX 2.3."""
    try:
        document = JsonLikeDictParser().parse(json.loads(text))
    except SPDXParsingError as exc:
        raise InvalidSbom(f"the SPDX document does not parse: {'; '.join(exc.get_messages())}") from None
    problems = validate_full_spdx_document(document)
    if problems:
        listed = "; ".join(p.validation_message for p in problems[:5])
        raise InvalidSbom(f"the SPDX document fails SPDX 2.3 validation ({len(problems)} problems): {listed}")


def spdx_json(manifest: Manifest) -> str:
    """The manifest as an SPDX 2.3 JSON document."""
    data = DocumentConverter().convert(spdx_document(manifest))
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    check_spdx(text)
    return text


RENDERERS: dict[str, Callable[[Manifest], str]] = {"cyclonedx": cyclonedx_json, "spdx": spdx_json}
FORMAT_NAMES = {"cyclonedx": "CycloneDX 1.6", "spdx": "SPDX 2.3"}


def render(manifest: Manifest, fmt: str) -> str:
    return RENDERERS[fmt](manifest)
