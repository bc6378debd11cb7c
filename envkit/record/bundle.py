"""Offline bundles: everything `envkit restore --offline` needs, in one tar file.

A bundle holds the manifest, the base image (a docker-archive), every locked wheel the image's
platform installs (and the builder's pinned installer), and the Debian mirror files apt fetched
for the builder and the final stage. ``envkit-bundle.json`` lists each member with its sha256;
a restore checks them all before it builds. The tar is uncompressed (wheels and .debs already
are) so the package server reads members in place, and deterministic: sorted members, fixed
mtimes and owners.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from envkit.atomic import open_atomic, place_file
from envkit.digests import sha256_file, sha256_stream
from envkit.engine.client import find_image, inspect_image, tag_image
from envkit.engine.dockerarchive import load_archive, without_tags
from envkit.errors import IntegrityError, NetworkError, UsageError
from envkit.events import Event, Show, done, drain, phases, relay
from envkit.image.wheelcache import ensure_wheels
from envkit.jsonio import pretty_text
from envkit.lock import mirror
from envkit.record.manifest import Manifest, parse_manifest, read_manifest_bytes
from envkit.record.offline import DirStore, PackageServer, assert_cut_off, internal_network, outside_addresses
from envkit.record.signing import BUNDLE_NAMESPACE, MANIFEST_NAMESPACE, Trust, read_signature, sign, verify
from envkit.untrusted import UntrustedError, decode, load_json

Say = Callable[[str], None]

BUNDLE_SCHEMA = 1
INDEX_NAME = "envkit-bundle.json"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "envkit-bundle.json.sig"  # an SSH signature of the index (bundle --sign)
BASE_NAME = "base/image.tar"
CHUNK = 1 << 20


def apt_commands(plan: Any) -> dict[str, str]:
    """The apt install of the image's system part, as a download-only command."""
    from envkit.image.render import template_context

    context = template_context(plan.render_input)
    command = (
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -q -y --download-only "
        "--no-install-recommends "
    )
    return {"system": command + " ".join(context["system_packages"])}


def record_apt(client: docker.DockerClient, plan: Any, root: Path) -> Generator[Event, None, list[str]]:
    """Run the apt install (download only) in the base, through a recording proxy.

    Yields progress events; returns the recorded file names."""
    store = DirStore(root)
    with internal_network(client) as (network, gateway):
        with PackageServer(store, {}, gateway, record_to=store) as server:
            for stage, command in apt_commands(plan).items():
                yield Event("phase", f"apt: recording the {stage} part's packages")
                try:
                    client.containers.run(
                        plan.base_ref, ["bash", "-c", command], network=network, remove=True,
                        environment={"http_proxy": server.url}, entrypoint="", user="0",
                    )
                except docker.errors.ContainerError as exc:
                    stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
                    raise NetworkError(
                        f"apt could not fetch the {stage} stage's pinned packages",
                        hint="the mirror may no longer carry a pinned version; see the log",
                        details=stderr[-3000:],
                    ) from None
            return sorted(set(server.log.recorded))


def save_base(client: docker.DockerClient, base_ref: str, dest: Path) -> str:
    image = client.images.get(base_ref)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        for chunk in client.api.get_image(base_ref):
            out.write(chunk)
    return str(image.id)


@dataclass
class BundleIndex:
    schema_version: int
    manifest_digest: str
    image_id: str
    base_ref: str
    base_image_id: str
    files: dict[str, dict[str, Any]]  # member -> {"sha256", "size"}
    wheels: dict[str, str]  # wheel file -> sha256

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "manifest_digest": self.manifest_digest,
            "image_id": self.image_id,
            "base_ref": self.base_ref,
            "base_image_id": self.base_image_id,
            "files": self.files,
            "wheels": self.wheels,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundleIndex:
        return cls(**{key: data[key] for key in (
            "schema_version", "manifest_digest", "image_id", "base_ref", "base_image_id", "files", "wheels"
        )})


# A member of a bundle: relative, plain segments, nothing that climbs out or hides.
_SEGMENT = r"[A-Za-z0-9_+~@=][A-Za-z0-9._+~@=%\-]{0,254}"
# Mirror files keep their URL path (apt/<host>/debian/dists/<suite>/main/binary-amd64/by-hash/SHA256/<hex>
# is ten segments), so the depth allows for deep mirror layouts.
MEMBER_RE = re.compile(rf"(?:{_SEGMENT}/){{0,31}}{_SEGMENT}")
MAX_INDEX_BYTES = 16 << 20
_INDEX_KEYS = (
    "schema_version", "manifest_digest", "image_id", "base_ref", "base_image_id", "files", "wheels",
)


def parse_index(raw: bytes, where: str) -> BundleIndex:
    """The bundle index, every field by its grammar: exit 5 for a damaged one, 2 for a newer schema."""
    from envkit.lock.grammar import SHA256_DIGEST_RE, SHA256_HEX_RE
    from envkit.record.manifest import IMAGE_TAG_REF_RE, WHEEL_FILENAME_RE

    def bad(problem: str) -> IntegrityError:
        return IntegrityError(f"{where}: {INDEX_NAME} {problem}")

    if len(raw) > MAX_INDEX_BYTES:
        raise bad(f"is larger than {MAX_INDEX_BYTES >> 20} MB")
    try:
        data = load_json(decode(raw))
    except UntrustedError as exc:
        raise bad(f"is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise bad("is not an object")
    version = data.get("schema_version")
    if type(version) is not int:
        raise bad("has no schema_version")
    if version > BUNDLE_SCHEMA:
        raise UsageError(f"{where} is bundle schema {version}; this envkit reads up to {BUNDLE_SCHEMA}")
    if set(data) != set(_INDEX_KEYS):
        raise bad(f"has keys {sorted(map(str, data))}, expected {sorted(_INDEX_KEYS)}")
    for key in ("manifest_digest", "image_id", "base_image_id"):
        if not isinstance(data[key], str) or not SHA256_DIGEST_RE.fullmatch(data[key]):
            raise bad(f"{key} is not a sha256 digest")
    if not isinstance(data["base_ref"], str) or not IMAGE_TAG_REF_RE.fullmatch(data["base_ref"]):
        raise bad("base_ref is not an image repository:tag")
    files, wheels = data["files"], data["wheels"]
    if not isinstance(files, dict) or not isinstance(wheels, dict):
        raise bad("files and wheels must be objects")
    for name, info in files.items():
        if not MEMBER_RE.fullmatch(name) or ".." in name.split("/") or name in (INDEX_NAME, MANIFEST_NAME):
            raise bad(f"lists a member with a name a bundle cannot hold: {name[:80]!r}")
        if (not isinstance(info, dict) or set(info) != {"sha256", "size"}
                or not isinstance(info["sha256"], str) or not SHA256_HEX_RE.fullmatch(info["sha256"])
                or type(info["size"]) is not int or info["size"] < 0):
            raise bad(f"entry of {name} is not {{sha256: 64 hex, size: bytes}}")
    for name, digest in wheels.items():
        if not WHEEL_FILENAME_RE.fullmatch(name) or f"wheels/{name}" not in files:
            raise bad(f"lists a wheel that is not a wheel file of the bundle: {name[:80]!r}")
        if digest != files[f"wheels/{name}"]["sha256"]:
            raise bad(f"gives {name} two different sha256 digests")
    if BASE_NAME not in files:
        raise bad(f"lists no {BASE_NAME}")
    return BundleIndex.from_json(data)


def _members(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        yield path.relative_to(root).as_posix(), path


def _add(tar: tarfile.TarFile, name: str, size: int, mtime: int, source: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, source)


def write_bundle(
    output: Path, manifest_text: str, index: BundleIndex, root: Path, epoch: int, *,
    sign_key: Path | None = None,
) -> None:
    """The bundle tar, written atomically: the old file survives any failure.

    With ``sign_key`` the index (the manifest's digest and every member's sha256) is signed and
    the signature is the third member.
    """
    index_text = pretty_text(index.to_json())
    heads = [(INDEX_NAME, index_text.encode()), (MANIFEST_NAME, manifest_text.encode())]
    if sign_key is not None:
        heads.append((SIGNATURE_NAME, sign(heads[0][1], sign_key, BUNDLE_NAMESPACE)))
    with open_atomic(output) as handle, tarfile.open(
        fileobj=handle, mode="w", format=tarfile.PAX_FORMAT
    ) as tar:
        for name, data in heads:
            _add(tar, name, len(data), epoch, _Bytes(data))
        for name, path in _members(root):
            with path.open("rb") as source:
                _add(tar, name, path.stat().st_size, epoch, source)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def make_bundle(
    client: docker.DockerClient, manifest_path: Path, output: Path, *, sign_key: Path | None = None,
    trust: Trust | None = None,
) -> BundleIndex:
    """Gather what an offline restore of ``manifest_path`` needs into ``output``."""
    return drain(bundle_events(client, manifest_path, output, sign_key=sign_key, trust=trust))


def read_trusted_manifest(path: Path, trust: Trust | None) -> tuple[bytes, Manifest]:
    """A manifest file's bytes and model; with ``trust``, its detached signature checked first (exit 5)."""
    raw = read_manifest_bytes(path)
    if trust is not None:
        verify(raw, read_signature(path), trust, MANIFEST_NAMESPACE, str(path))
    return raw, parse_manifest(raw, str(path))


def _work_dir(output: Path) -> tempfile.TemporaryDirectory[str]:
    """The one place a bundle run writes before the bundle itself: a temporary directory beside it."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=".envkit-bundle-", dir=output.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}",
                         hint="choose a place you can write to") from None


def bundle_events(
    client: docker.DockerClient, manifest_path: Path, output: Path, *, sign_key: Path | None = None,
    trust: Trust | None = None, index_url: str | None = None,
) -> Iterator[Event]:
    """``make_bundle`` as progress events; the last one carries the BundleIndex.

    ``index_url`` is a package mirror to download the wheels from (see envkit.lock.mirror)."""
    from envkit.atomic import check_output_path
    from envkit.image.base import ensure_base
    from envkit.image.build import TOOLS_LOCK
    from envkit.record.snapshot import plan_from_manifest

    raw, manifest = read_trusted_manifest(Path(manifest_path), trust)
    manifest_text = raw.decode("utf-8")
    if manifest.lock is None:
        raise UsageError(f"{manifest_path} carries no lock: only locked images can be bundled")
    if manifest.drift is not None:
        raise UsageError(
            f"{manifest_path} records a container's drift, which a bundle does not carry yet",
            hint="bundle the manifest of the container's image (envkit snapshot IMAGE) instead",
        )
    output = Path(output).absolute()
    check_output_path(output)
    with _work_dir(output) as tmp:
        root = Path(tmp) / "members"
        plan = plan_from_manifest(manifest, ca_bundle=None)
        if plan.base_plan is not None:
            yield Event("phase", f"base: {plan.base_ref}")
            ensure_base(client, plan.base_plan)
        base_id = save_base(client, plan.base_ref, root / BASE_NAME)
        expected_base = manifest.lock.base.get("image_id")
        if expected_base and expected_base != base_id:
            raise IntegrityError(f"base {plan.base_ref} is {base_id}, the lock records {expected_base}")
        suite = manifest.lock.base.get("suite") or "bookworm"
        indexes = mirror.choose(
            cli_url=index_url, spec_url=plan.spec.index_url, spec_extra=plan.spec.extra_index_url,
            torch_index=plan.resolved.index_url,
        )
        # From the host's wheel cache (what a build of the image already fetched), each wheel
        # checked against the lock; only what the cache lacks is downloaded.
        (root / "wheels").mkdir(parents=True, exist_ok=True)
        sets = ((plan.requirements or "", "wheels"), (TOOLS_LOCK.read_text(), "tool wheels"))
        for text, label in sets:
            fetch = ensure_wheels(text, python=plan.spec.python, platform=plan.spec.platform, suite=suite,
                                  index_args=indexes.pip_args(), label=label)
            cached = yield from relay(fetch)
            for name, path in sorted(cached.paths.items()):
                place_file(path, root / "wheels" / name)
        yield from record_apt(client, plan, root)
        files = {
            name: {"sha256": sha256_file(path), "size": path.stat().st_size} for name, path in _members(root)
        }
        wheels = {
            name.removeprefix("wheels/"): info["sha256"] for name, info in files.items()
            if name.startswith("wheels/")
        }
        index = BundleIndex(
            schema_version=BUNDLE_SCHEMA, manifest_digest=manifest.digest, image_id=manifest.image.id,
            base_ref=plan.base_ref, base_image_id=base_id, files=files, wheels=wheels,
        )
        mirror_files = sum(name.startswith("apt/") for name in files)
        yield Event("phase", f"writing {output.name}: {len(wheels)} wheels, {mirror_files} mirror files")
        write_bundle(output, manifest_text, index, root, manifest.source_date_epoch, sign_key=sign_key)
    yield done(f"wrote {output}", index)


@dataclass
class OpenBundle:
    path: Path
    index: BundleIndex
    manifest_text: str
    signer: str | None = None  # who signed the index, when a restore was given --trust


def is_bundle(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:") as tar:
            # The writer puts the index first: no need to walk every header of a 4 GB file.
            first, second = tar.next(), tar.next()
            return INDEX_NAME in {m.name for m in (first, second) if m is not None}
    except (tarfile.TarError, OSError):
        return False


def open_bundle(path: Path, *, show: Show | None = None, trust: Trust | None = None) -> OpenBundle:
    """Read a bundle's index and manifest and check every member against its sha256 (exit 5);
    progress goes to ``show`` as phase events.

    With ``trust`` the index's signature is checked first (exit 5 when missing or wrong); the
    index binds the manifest (by digest) and every member (by sha256).
    """
    say = phases(show)
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise IntegrityError(f"{path} is not a readable bundle: {exc}") from None
    try:
        with tar:
            return _check_bundle(Path(path), tar, say, trust)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise IntegrityError(f"{path} is damaged or truncated: {exc}") from None


def _check_bundle(path: Path, tar: tarfile.TarFile, say: Say, trust: Trust | None) -> OpenBundle:
    members: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        if member.name in members:
            raise IntegrityError(f"{path} holds {member.name[:80]!r} twice: not a bundle envkit wrote")
        if member.isfile():
            members[member.name] = member
    if INDEX_NAME not in members or MANIFEST_NAME not in members:
        raise IntegrityError(f"{path} has no {INDEX_NAME} or {MANIFEST_NAME}: not an envkit bundle")
    if members[INDEX_NAME].size > MAX_INDEX_BYTES:
        raise IntegrityError(f"{path}: {INDEX_NAME} is larger than {MAX_INDEX_BYTES >> 20} MB")
    raw_index = _read(tar, members[INDEX_NAME])
    signer = None
    if trust is not None:
        signature = _read(tar, members[SIGNATURE_NAME]) if SIGNATURE_NAME in members else None
        signer = verify(raw_index, signature, trust, BUNDLE_NAMESPACE, str(path))
    index = parse_index(raw_index, str(path))
    if members[MANIFEST_NAME].size > MAX_INDEX_BYTES * 4:
        raise IntegrityError(f"{path}: {MANIFEST_NAME} is too large to be a manifest")
    try:
        manifest_text = decode(_read(tar, members[MANIFEST_NAME]))
    except UntrustedError as exc:
        raise IntegrityError(f"{path}: {MANIFEST_NAME} is {exc}") from None
    say(f"checking {len(index.files)} files of {path.name}")
    for name, info in sorted(index.files.items()):
        member = members.get(name)
        if member is None:
            raise IntegrityError(f"{path} lacks {name}, which its index lists (truncated?)")
        if _member_sha256(tar, member) != info["sha256"]:
            raise IntegrityError(f"{path}: {name} does not match its sha256 (edited or damaged)")
    return OpenBundle(path=path, index=index, manifest_text=manifest_text, signer=signer)


def bundle_manifest(bundle: OpenBundle) -> Manifest:
    """The bundle's manifest, checked and bound to its index (exit 5 when it is not the one indexed)."""
    manifest = parse_manifest(bundle.manifest_text, f"{bundle.path}:{MANIFEST_NAME}")
    if manifest.digest != bundle.index.manifest_digest:
        raise IntegrityError(f"{bundle.path}: its manifest is not the one its index was made for")
    return manifest


def _member_sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    source = tar.extractfile(member)
    assert source is not None
    return sha256_stream(source)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    source = tar.extractfile(member)
    assert source is not None
    return source.read()


def load_base(client: docker.DockerClient, bundle: OpenBundle) -> Iterator[Event]:
    """Load the bundle's base image unless the engine already has it under the same ID."""
    ref, expected = bundle.index.base_ref, bundle.index.base_image_id
    attrs = find_image(client, ref)
    present = attrs["Id"] if attrs is not None else None
    if present == expected:
        return
    if present is not None:
        raise IntegrityError(f"{ref} on this engine is {present}, the bundle's base is {expected}",
                             hint=f"remove the local {ref} and restore again")
    yield Event("phase", f"base: loading {ref} from the bundle")
    # Loaded with every tag the archive names removed: loading moves no tag on this engine.
    with tarfile.open(bundle.path, "r:") as tar:
        source = tar.extractfile(BASE_NAME)
        if source is None:
            raise IntegrityError(f"{bundle.path} lacks {BASE_NAME}")
        load_archive(client, without_tags(iter(lambda: source.read(CHUNK), b"")))
    if find_image(client, expected) is None:
        raise IntegrityError(f"the bundle's base did not load as {expected}, the ID its index records")
    # Checked free above; tagged only now that the loaded image is the one the index records.
    if find_image(client, ref) is None:
        tag_image(client, expected, ref)
    loaded = inspect_image(client, ref)["Id"]
    if loaded != expected:
        raise IntegrityError(f"{ref} is {loaded}, the bundle's base is {expected}")


def restore_offline_events(
    client: docker.DockerClient, bundle: OpenBundle, manifest: Manifest, *, tag: str | None = None,
    nocache: bool = False,
) -> Iterator[Event]:
    """Restore from an opened bundle with the build network cut off; yields build events."""
    from envkit.record.offline import TarStore
    from envkit.record.snapshot import restore_events

    if manifest.digest != bundle.index.manifest_digest:
        raise IntegrityError(f"{bundle.path}: its manifest is not the one its index was made for")
    yield from load_base(client, bundle)
    with internal_network(client) as (network, gateway):
        tried = assert_cut_off(client, network, bundle.index.base_ref, outside_addresses())
        yield Event("phase", f"network: {network} is cut off "
                    f"({', '.join(tried) or 'no outside address to try'} unreachable)")
        with PackageServer(TarStore(bundle.path), bundle.index.wheels, gateway) as server:
            proxy = {"http_proxy": server.url, "HTTP_PROXY": server.url,
                     "no_proxy": gateway, "NO_PROXY": gateway}
            try:
                yield from restore_events(
                    client, manifest, tag=tag, nocache=nocache, offline_index=f"{server.url}/simple/",
                    network_mode=network, buildargs=proxy,
                )
            except Exception as exc:
                missing = sorted(set(server.log.missing))
                if missing and hasattr(exc, "hint"):
                    exc.hint = "the bundle lacks: " + ", ".join(missing[:8])
                raise
