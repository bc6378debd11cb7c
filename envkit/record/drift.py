"""Container drift: Python packages changed by hand in a running container, locked and restored.

``snapshot_container`` takes the usual manifest of the container's image, lists the Python
distributions inside the running container (``docker exec`` of the same collect script) and records
what differs: distributions added or changed (a new version) are locked to the PyPI wheel that fits
the image (name, version, file, URL, sha256), removed ones are listed, and ``docker diff``'s counts
are kept for information. Only packages from the index can be locked; anything else is refused.

``drift_events`` builds the drift on top of the restored base image, with no network on the
engine: the host downloads the locked wheels and checks their sha256, a staging stage lays them out
with ``wheelinstall`` (standard library only) under a staging root, and the final stage removes the
files of replaced or removed distributions (by their RECORD) and copies the staged tree over
``/opt/venv``. The result is sealed with the manifest's SOURCE_DATE_EPOCH, its Python set is
checked against the container's, and only then is the tag moved.

Not restored: files changed outside Python distributions (``docker diff`` is recorded as counts
only) and dpkg changes (listed in ``apt_changes`` for information).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import docker
import docker.errors
import requests
import requests.exceptions
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version
from pydantic import ValidationError

from envkit import labels, platforms
from envkit.engine.client import tag_image
from envkit.errors import IntegrityError, NetworkError, ReproMismatch, UsageError
from envkit.record.manifest import DiffCounts, Drift, LockedWheel, Manifest, first_problem, seal_manifest
from envkit.record.snapshot import COLLECT_SCRIPT, collect_packages, snapshot
from envkit.resources import incontainer_dir

if TYPE_CHECKING:
    from envkit.image.build import BuildEvent

__all__ = ["DiffCounts", "Drift", "LockedWheel"]  # the drift models live in record.manifest

VENV = "/opt/venv"
PYPI_JSON = "https://pypi.org/pypi/{name}/{version}/json"
PYPI_SIMPLE = "https://pypi.org/simple/{name}/"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
DRIFT_LABEL = labels.DRIFT
HTTP_TIMEOUT = 60
_STAGE = "/stage"
_CONTEXT_DIR = "/tmp/envkit-drift"

# Runs in the final stage with the image's Python and no site (standard library only); the file's
# docstring says what it removes and what it never touches. Arguments: PREFIX NAME...
REMOVE_SCRIPT = (incontainer_dir() / "remove_dists.py").read_text(encoding="utf-8")


@dataclass(frozen=True)
class PackageChanges:
    added: dict[str, str]
    changed: dict[str, tuple[str, str]]  # name -> (image version, container version)
    removed: dict[str, str]

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


@dataclass(frozen=True)
class DriftResult:
    image_id: str
    tag: str
    unsealed_id: str
    packages: int
    removed: int
    layers: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


# ---------------------------------------------------------------------------------------------
# What changed


def _versions(packages: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in packages.items():
        version = value.get("version") if isinstance(value, dict) else getattr(value, "version", value)
        out[name] = str(version)
    return out


def changed_keys(before: dict[str, str], after: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """The keys only ``after`` has, those whose value changed, and those only ``before`` has, sorted."""
    return (
        sorted(set(after) - set(before)),
        sorted(n for n in set(after) & set(before) if before[n] != after[n]),
        sorted(set(before) - set(after)),
    )


def compare_packages(image: dict[str, Any], container: dict[str, Any]) -> PackageChanges:
    """Distributions added, changed (by version) and removed in the container, by normalized name."""
    before, after = _versions(image), _versions(container)
    added, changed, removed = changed_keys(before, after)
    return PackageChanges(
        added={n: after[n] for n in added},
        changed={n: (before[n], after[n]) for n in changed},
        removed={n: before[n] for n in removed},
    )


def change_lines(
    before: dict[str, str], after: dict[str, str], added: str, changed: str, removed: str
) -> list[str]:
    """One line a key only ``after`` has, whose value changed, or only ``before`` has, in that order.

    Each template is formatted with ``name``, ``before`` (the key's value in ``before``) and
    ``after`` (its value in ``after``), where the key has one there.
    """
    only_after, different, only_before = changed_keys(before, after)
    lines = [added.format(name=n, after=after[n]) for n in only_after]
    lines += [changed.format(name=n, before=before[n], after=after[n]) for n in different]
    lines += [removed.format(name=n, before=before[n]) for n in only_before]
    return lines


def apt_changes(image: dict[str, str], container: dict[str, str]) -> list[str]:
    return change_lines(
        image, container, "{name}: added {after}", "{name}: {before} -> {after}", "{name}: removed {before}"
    )


# ---------------------------------------------------------------------------------------------
# Which wheel fits the image


def glibc_version(apt: dict[str, str]) -> tuple[int, int]:
    """The image's glibc from dpkg's libc6 version (2.17 when unknown: the manylinux2014 floor)."""
    match = re.match(r"^(?:\d+:)?(\d+)\.(\d+)", apt.get("libc6", ""))
    return (int(match.group(1)), int(match.group(2))) if match else (2, 17)


def machine(platform: str) -> str:
    return platforms.machine(platform)


def image_tags(python: str, glibc: tuple[int, int], arch: str) -> list[str]:
    """Wheel tags a CPython ``python`` on that glibc and machine installs, most preferred first."""
    major, minor = (int(part) for part in python.split(".")[:2])
    linux = platforms.manylinux_platforms(arch, glibc)
    interpreter = f"cp{major}{minor}"
    tags = [*cpython_tags((major, minor), abis=[interpreter], platforms=linux),
            *compatible_tags((major, minor), interpreter, linux)]
    return [str(tag) for tag in tags]


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str  # hex, "" when the index gives none


def files_from_json(release: dict[str, Any], base_url: str = PYPI_JSON) -> list[IndexFile]:
    """The files of one release from PyPI's JSON API (``urls``); relative URLs made absolute."""
    return [
        IndexFile(str(f.get("filename", "")), urljoin(base_url, str(f.get("url", ""))),
                  str((f.get("digests") or {}).get("sha256", "")))
        for f in release.get("urls") or []
        if f.get("packagetype") == "bdist_wheel"
    ]


def files_from_simple(project: dict[str, Any], version: str, base_url: str = PYPI_SIMPLE) -> list[IndexFile]:
    """The wheels of ``version`` from a PEP 691 simple-index page (what pip itself reads)."""
    try:
        wanted = Version(version)
    except InvalidVersion:
        return []
    files = []
    for f in project.get("files") or []:
        filename = str(f.get("filename", ""))
        try:
            _, file_version, _, _ = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue  # an sdist, or a name no installer would take
        if file_version == wanted:
            files.append(IndexFile(filename, urljoin(base_url, str(f.get("url", ""))),
                                   str((f.get("hashes") or {}).get("sha256", ""))))
    return files


def choose_wheel(files: list[IndexFile], tags: list[str], *, name: str, version: str,
                 image_version: str | None = None) -> LockedWheel:
    """The wheel of a release that the image would install (best tag first); sdists do not count."""
    rank = {tag: index for index, tag in enumerate(tags)}
    best: tuple[int, str, IndexFile] | None = None
    for file in files:
        try:
            _, _, _, file_tags = parse_wheel_filename(file.filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        score = min((rank[str(t)] for t in file_tags if str(t) in rank), default=None)
        if score is not None and (best is None or (score, file.filename) < best[:2]):
            best = (score, file.filename, file)
    if best is None:
        raise UsageError(
            f"{name} {version} has no wheel on PyPI that fits the image",
            hint="drift can only be locked for packages installed from wheels on the package index",
        )
    chosen = best[2]
    if not re.fullmatch(r"[0-9a-f]{64}", chosen.sha256):
        raise IntegrityError(f"PyPI gives no sha256 for {chosen.filename}")
    return LockedWheel(name=name, version=version, image_version=image_version, filename=chosen.filename,
                       url=chosen.url, sha256=f"sha256:{chosen.sha256}")


# ---------------------------------------------------------------------------------------------
# The index


def http_session() -> requests.Session:
    """A session that trusts the same CA bundle as builds (PIP_CERT, SSL_CERT_FILE, ...)."""
    from envkit.image.context import detect_ca_bundle

    session = requests.Session()
    bundle = detect_ca_bundle(None)
    session.verify = str(bundle) if bundle else True
    return session


def _get(session: requests.Session, url: str, what: str, **headers: str) -> requests.Response | None:
    """The response, None for a 404; unreachable or other answers are network errors (exit 6)."""
    try:
        response = session.get(url, timeout=HTTP_TIMEOUT, headers=headers or None)
    except requests.exceptions.RequestException as exc:
        raise NetworkError(f"cannot reach PyPI for {what}: {exc}",
                           hint="check the proxy variables and the CA bundle") from exc
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise NetworkError(f"PyPI answered {response.status_code} for {what} ({url})")
    return response


def release_files(session: requests.Session, name: str, version: str) -> list[IndexFile]:
    """The wheels PyPI has for ``name`` ``version``: the JSON API, else the simple index.

    Neither knowing the release means it did not come from PyPI: an error (exit 2).
    """
    what = f"{name} {version}"
    response = _get(session, PYPI_JSON.format(name=name, version=version), what)
    if response is not None:
        return files_from_json(dict(response.json()), response.url)
    response = _get(session, PYPI_SIMPLE.format(name=name), what, Accept=SIMPLE_JSON)
    files = files_from_simple(dict(response.json()), version, response.url) if response is not None else []
    if not files and (response is None or not _has_version(dict(response.json()), version)):
        raise UsageError(
            f"{what} is installed in the container but is not on PyPI "
            "(installed from a local path, a URL or another index?)",
            hint="drift can only be locked for packages from the package index; add it to the "
            "image spec instead, or install the released version from PyPI in the container",
        )
    return files


def _has_version(project: dict[str, Any], version: str) -> bool:
    try:
        return Version(version) in {Version(v) for v in project.get("versions") or []}
    except InvalidVersion:
        return False


def lock_changes(changes: PackageChanges, tags: list[str], session: requests.Session) -> list[LockedWheel]:
    wanted: dict[str, tuple[str, str | None]] = {n: (v, None) for n, v in changes.added.items()}
    wanted.update({n: (new, old) for n, (old, new) in changes.changed.items()})
    wheels = []
    for name in sorted(wanted):
        version, image_version = wanted[name]
        files = release_files(session, name, version)
        wheels.append(choose_wheel(files, tags, name=name, version=version, image_version=image_version))
    return wheels


# ---------------------------------------------------------------------------------------------
# The container


def running_container(client: docker.DockerClient, ref: str) -> Any:
    try:
        container = client.containers.get(ref)
    except docker.errors.NotFound:
        raise UsageError(f"container {ref} not found", hint="`docker ps` lists running containers") from None
    if container.status != "running":
        raise UsageError(f"container {ref} is {container.status}, not running",
                         hint=f"start it (`docker start {ref}`) and snapshot again")
    return container


def collect_in_container(container: Any) -> dict[str, Any]:
    """The collect script, run by docker exec inside the running container (as root, no bytecode)."""
    exit_code, output = container.exec_run(["python3", "-B", "-c", COLLECT_SCRIPT], user="0", demux=True)
    stdout, stderr = output if isinstance(output, tuple) else (output, b"")
    if exit_code != 0 or not stdout:
        detail = (stderr or b"").decode(errors="replace").strip()[-500:]
        raise UsageError(f"could not list the packages inside container {container.name}: {detail}")
    return dict(json.loads(stdout.decode().strip().splitlines()[-1]))


def diff_counts(client: docker.DockerClient, container_id: str) -> DiffCounts:
    kinds = [int(change.get("Kind", -1)) for change in client.api.diff(container_id) or []]
    return DiffCounts(added=kinds.count(1), changed=kinds.count(0), deleted=kinds.count(2))


def snapshot_container(
    client: docker.DockerClient,
    ref: str,
    *,
    host: dict[str, Any] | None = None,
    verify_report: dict[str, Any] | None = None,
    session: requests.Session | None = None,
) -> Manifest:
    """The manifest of the container's image, with the container's drift locked into it."""
    container = running_container(client, ref)
    image_id = str(container.attrs["Image"])
    base = snapshot(client, image_id, host=host, verify_report=verify_report)
    found = collect_in_container(container)
    changes = compare_packages(base.python_packages, found["python"])
    tags = image_tags(base.stack.python or "3.11", glibc_version(base.apt_packages),
                      machine(base.spec.platform))
    wheels = lock_changes(changes, tags, session or http_session())
    try:
        drift = Drift(
            container_id=container.id,
            container_name=container.name,
            wheels=wheels,
            removed=changes.removed,
            python_packages=dict(sorted(_versions(found["python"]).items())),
            apt_changes=apt_changes(base.apt_packages, dict(found.get("apt") or {})),
            docker_diff=diff_counts(client, container.id),
        )
    except ValidationError as exc:
        raise IntegrityError(
            f"the container holds a value a manifest refuses: {first_problem(exc)}"
        ) from None
    return seal_manifest(base.model_copy(update={"drift": drift}))


# ---------------------------------------------------------------------------------------------
# Restoring: the drift layer on top of the restored base


def drift_tag(manifest: Manifest, tag: str | None) -> str:
    """``--tag``, else the spec's tag with ``-drift`` added (never a tag the file names)."""
    if tag:
        return tag
    base = manifest.spec.image_tag
    repo, _, tag_part = base.rpartition(":")
    return f"{repo}:{tag_part[:122]}-drift"


def drift_restore_tag(client: docker.DockerClient, manifest: Manifest, tag: str | None, *,
                      force: bool = False) -> str:
    """The drift image's tag, refused (exit 2) when it names an image that is not this drift's."""
    from envkit.engine.client import find_image

    target = drift_tag(manifest, tag)
    present = find_image(client, target)
    drift = manifest.drift
    if present is not None and drift is not None and not force:
        found = ((present.get("Config") or {}).get("Labels") or {}).get(DRIFT_LABEL)
        if found != drift.digest() and present.get("Id") != manifest.image.id:
            other = str(present.get("Id"))[:19]
            raise UsageError(
                f"{target} already names another image ({other}); restore will not move it",
                hint="choose another --tag, or pass --force to move it",
            )
    return target


def download_wheels(wheels: list[LockedWheel], session: requests.Session) -> dict[str, bytes]:
    """Each locked wheel, checked against its sha256 (exit 5 on a mismatch)."""
    files: dict[str, bytes] = {}
    for wheel in wheels:
        try:
            response = session.get(wheel.url, timeout=HTTP_TIMEOUT)
            response.raise_for_status()
        except requests.exceptions.RequestException as exc:
            raise NetworkError(f"cannot download {wheel.filename}: {exc}",
                               hint="check the proxy variables and the CA bundle") from exc
        actual = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if actual != wheel.sha256:
            raise IntegrityError(
                f"{wheel.filename}: downloaded {actual}, the manifest locks {wheel.sha256}",
                hint="the file on the index is not the one the drift was locked to",
            )
        files[wheel.filename] = response.content
    return files


def render_drift_dockerfile(base_id: str, drift: Drift, *, user: str) -> str:
    """Two stages: wheels laid out in staging; the final stage removes old files, copies the tree."""
    replaced = sorted({w.name for w in drift.wheels if w.image_version is not None} | set(drift.removed))
    switch = user.split(":")[0] not in ("", "0", "root")  # the removal runs as root, then back
    lines = [
        f"# Drift of container {drift.container_name} ({drift.container_id[:12]}) on {base_id}.",
        "# Rendered by envkit from the manifest; the build runs with no network.",
    ]
    if drift.wheels:
        install = [f"{VENV}/bin/python", "-I", "-S", "-B", f"{_CONTEXT_DIR}/wheelinstall.py",
                   "--root", _STAGE, "--prefix", VENV, f"{_CONTEXT_DIR}/wheels"]
        lines += [f"FROM {base_id} AS staging", "USER 0:0", f"COPY drift/ {_CONTEXT_DIR}/",
                  f"RUN {json.dumps(install)}", ""]
    lines.append(f"FROM {base_id}")
    if replaced:
        remove = [f"{VENV}/bin/python", "-I", "-S", "-B", "-c", REMOVE_SCRIPT, VENV, *replaced]
        lines += ["USER 0:0"] if switch else []
        lines.append(f"RUN {json.dumps(remove)}")
    if drift.wheels:
        lines.append(f"COPY --from=staging {_STAGE}{VENV}/ {VENV}/")
    if replaced and switch:
        lines.append(f"USER {user}")
    lines.append(f'LABEL "{DRIFT_LABEL}"="{drift.digest()}"')
    return "\n".join(lines) + "\n"


def drift_context(dockerfile: str, wheels: dict[str, bytes]) -> Any:
    from envkit.image.context import BuildContext

    context = BuildContext()
    context.add("Dockerfile", dockerfile.encode())
    if wheels:
        context.add("drift/wheelinstall.py", (incontainer_dir() / "wheelinstall.py").read_bytes())
        for filename, data in sorted(wheels.items()):
            context.add(f"drift/wheels/{filename}", data)
    return context


def check_drift_image(client: docker.DockerClient, manifest: Manifest, image_id: str) -> None:
    """The new image holds the base's layers and exactly the container's Python set (exit 9 if not)."""
    assert manifest.drift is not None
    layers = list((client.api.inspect_image(image_id).get("RootFS") or {}).get("Layers") or [])
    if layers[: len(manifest.image.layers)] != list(manifest.image.layers):
        raise ReproMismatch(f"the drift image {image_id[:19]} does not keep the base image's layers")
    found = collect_packages(client, image_id)["python"]
    problems = differences(_versions(found), manifest.drift.python_packages)
    touched = {w.name for w in manifest.drift.wheels} | set(manifest.drift.removed)
    for name, package in manifest.python_packages.items():
        record = (found.get(name) or {}).get("record_sha256")
        if name not in touched and name in found and record != package.record_sha256:
            problems.append(f"{name}: its files changed although the drift does not name it")
    if problems:
        raise ReproMismatch(
            f"the drift image {image_id[:19]} does not hold the container's Python set: "
            + "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
            details="\n".join(problems),
            hint="the tag was not moved",
        )


def differences(actual: dict[str, str], expected: dict[str, str]) -> list[str]:
    return change_lines(
        actual,
        expected,
        "{name}: missing (container has {after})",
        "{name}: {before} (container has {after})",
        "{name}: {before} not in the container",
    )


def drift_events(
    client: docker.DockerClient,
    manifest: Manifest,
    base_id: str,
    *,
    tag: str | None = None,
    nocache: bool = False,
    session: requests.Session | None = None,
) -> Iterator[BuildEvent]:
    """Build, seal, check and tag the drift image on ``base_id``; the last event carries a DriftResult."""
    from envkit.image.build import BuildEvent, seal_events, stream_context_build

    drift = manifest.drift
    assert drift is not None
    target = drift_tag(manifest, tag)
    if not drift.wheels and not drift.removed:
        tag_image(client, base_id, target)
        result = DriftResult(base_id, target, base_id, 0, 0, [])
        yield BuildEvent("done", "no Python drift", data={"result": result})
        return
    user = str((client.api.inspect_image(base_id).get("Config") or {}).get("User") or "")
    dockerfile = render_drift_dockerfile(base_id, drift, user=user)
    yield BuildEvent("phase", f"drift: downloading {len(drift.wheels)} locked wheel(s)")
    wheels = download_wheels(drift.wheels, session or http_session())
    tar = drift_context(dockerfile, wheels).to_tar(manifest.source_date_epoch)
    yield BuildEvent("phase", f"drift: building on {base_id[7:19]} (no network)")
    unsealed = ""
    platform = manifest.spec.platform
    # No network at all: the wheels are in the context, and nothing else is fetched.
    for event in stream_context_build(client, tar, platform=platform, nocache=nocache, network_mode="none"):
        if event.kind == "done":
            unsealed = client.images.get(event.data["image_id"]).id
        else:
            yield event
    sealed = yield from seal_events(client, unsealed, manifest.source_date_epoch, nocache=nocache)
    yield BuildEvent("phase", "drift: checking the Python set against the container's")
    check_drift_image(client, manifest, sealed)
    tag_image(client, sealed, target)
    layers = list((client.api.inspect_image(sealed).get("RootFS") or {}).get("Layers") or [])
    result = DriftResult(sealed, target, unsealed, len(drift.wheels), len(drift.removed),
                         layers[len(manifest.image.layers):])
    yield BuildEvent("done", f"built {target}", data={"result": result})
