"""Commands that record and reproduce images: snapshot, restore, diff, export, import, bundle, sbom.

Each parses its options, calls one core function and shows the result. Progress goes to stderr
(live on a terminal, plain lines otherwise); data meant for programs (JSON, image IDs) goes to
stdout. Failures are raised as envkit errors and turned into exit codes by ``envkit.cli.app.main``:
`envkit diff` raises ReproMismatch (exit 9) after showing the differences, so a script can test
`envkit diff A B` directly; a missing image is a UsageError (exit 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from envkit.cli import console
from envkit.errors import ReproMismatch, UsageError

if TYPE_CHECKING:
    from envkit.record.snapshot import Manifest


def _client():  # type: ignore[no-untyped-def]
    from envkit.engine.client import get_client

    return get_client()


@click.command("snapshot")
@click.argument("target", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Manifest file to write (atomically).")
@click.option("--with-host", is_flag=True, help="Record this host's driver, GPUs and engine version.")
@click.option("--verify-report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON report from `envkit verify --json` to keep in the manifest.")
@click.option("--container", metavar="ID", help="A running container instead of NAME|IMAGE: its image, "
              "plus the Python packages changed in it since it started (locked to PyPI wheels).")
@click.option("--sign", "sign_key", metavar="KEY", type=click.Path(dir_okay=False, path_type=Path),
              help="Sign the manifest with this SSH key (ssh-keygen -Y sign); the signature is "
              "written beside it as FILE.sig.")
def snapshot_cmd(
    target: str | None, output: Path, with_host: bool, verify_report: Path | None, container: str | None,
    sign_key: Path | None,
) -> None:
    """Write a manifest of everything that defines NAME or IMAGE (or a running container)."""
    from envkit.engine.client import engine_version, get_client
    from envkit.record.snapshot import snapshot as take

    if (target is None) == (container is None):
        raise UsageError("give NAME|IMAGE or --container ID (one of them, not both)")
    if sign_key is not None and not sign_key.is_file():
        raise UsageError(f"--sign {sign_key}: no such key file")
    report = _read_verify_report(verify_report) if verify_report else None
    client = get_client()
    host = None
    if with_host:
        from envkit.host.gpu import read_host

        host = {"engine": engine_version(client), **read_host().to_json()}
    if container is not None:
        from envkit.record.drift import snapshot_container

        manifest = snapshot_container(client, container, host=host, verify_report=report)
        _show_drift(manifest)
    else:
        manifest = take(client, target or "", host=host, verify_report=report)
    signed = _write_manifest(output, manifest, sign_key)
    for problem in manifest.lock_mismatches:
        console.warning(f"image and lock disagree: {problem}")
    console.success(
        f"wrote {output}: {manifest.image.id[:19]}, {len(manifest.python_packages)} Python and "
        f"{len(manifest.apt_packages)} apt packages" + (f"; signed in {signed}" if signed else "")
    )


MAX_REPORT_BYTES = 1 << 20


def _read_verify_report(path: Path) -> dict[str, Any]:
    """``--verify-report FILE``: a JSON object kept as inert data; anything else is exit 2."""
    from envkit.untrusted import UntrustedError, check_inert, decode, load_json

    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--verify-report {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_REPORT_BYTES:
        raise UsageError(f"--verify-report {path} is larger than {MAX_REPORT_BYTES >> 10} KB")
    try:
        data = load_json(decode(raw))
        if not isinstance(data, dict):
            raise UntrustedError("not a JSON object")
        check_inert(data, max_bytes=MAX_REPORT_BYTES)
    except (UntrustedError, ValueError) as exc:
        raise UsageError(f"--verify-report {path} is not a report of `envkit verify --json`: {exc}") from None
    return data


def _write_manifest(output: Path, manifest: Manifest, sign_key: Path | None) -> Path | None:
    """Write the manifest (and, with a key, its detached signature beside it); the signature's path."""
    from envkit.atomic import write_bytes
    from envkit.record.manifest import manifest_text
    from envkit.record.signing import MANIFEST_NAMESPACE, sign, signature_path

    data = manifest_text(manifest).encode("utf-8")
    signature = sign(data, sign_key, MANIFEST_NAMESPACE) if sign_key is not None else None
    write_bytes(output, data)
    if signature is None:
        return None
    write_bytes(signature_path(output), signature)
    return signature_path(output)


def _trust_options(command: Any) -> Any:
    """``--trust ALLOWED_SIGNERS`` and ``--signer IDENTITY``, shared by restore and bundle."""
    command = click.option(
        "--signer", metavar="IDENTITY", help="With --trust: the one identity that must have signed it.",
    )(command)
    return click.option(
        "--trust", "trust_file", metavar="ALLOWED_SIGNERS", type=click.Path(dir_okay=False, path_type=Path),
        help="Refuse (exit 5) a manifest or bundle not signed by a key in this allowed-signers "
        "file (ssh-keygen format, as git uses).",
    )(command)


def _restore_tags(client: Any, manifest: Manifest, tag: str | None, *, force: bool) -> tuple[str, str | None]:
    """The tags a restore moves: (base image, drift image or None); each checked free or already right."""
    from envkit.record.snapshot import restore_tag

    if manifest.drift is None:
        return restore_tag(client, manifest, tag, force=force), None
    from envkit.record.drift import drift_restore_tag

    # With drift, --tag names the final (drift) image; the base is restored under the spec's tag,
    # or, when that names another image, under the spec's tag plus the manifest's short image ID.
    drift = drift_restore_tag(client, manifest, tag, force=force)
    try:
        base = restore_tag(client, manifest, None, force=force)
    except UsageError:
        repo, _, tag_part = manifest.spec.image_tag.rpartition(":")
        derived = f"{repo}:{tag_part[:114]}-{manifest.image.id[7:19]}"
        base = restore_tag(client, manifest, derived, force=force)
    return base, drift


def _staging_tag(client: Any, tag: str, *, force: bool) -> str:
    """Where a restore's build lands: ``tag`` itself when it is free (or with --force).

    When ``tag`` already names the manifest's image, the build lands on a unique tag beside it, so
    a restore that comes out different leaves ``tag`` where it was (see ``_settle_tag``).
    """
    import uuid

    from envkit.engine.client import find_image

    if force or find_image(client, tag) is None:
        return tag
    repo, _, part = tag.rpartition(":")
    return f"{repo}:{part[:110]}-restore-{uuid.uuid4().hex[:8]}"


def _settle_tag(client: Any, result: Any, tag: str, expected: str) -> Any:
    """Move ``tag`` from the staging tag to the restored image only when it is ``expected``."""
    from dataclasses import replace

    from envkit.engine.client import tag_image

    if result.tag == tag or result.image_id != expected:
        return result
    tag_image(client, result.image_id, tag)
    client.api.remove_image(result.tag, noprune=True)
    return replace(result, tag=tag)


@click.command("restore")
@click.argument("manifest_path", metavar="MANIFEST|BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tag", help="Tag for the restored image (default: the spec's name:tag).")
@click.option("--force", is_flag=True, help="Move the tag even when it names another image.")
@click.option("--no-cache", is_flag=True, help="Rebuild every step.")
@click.option("--offline", is_flag=True, help="Build from a bundle (`envkit bundle`) with the build "
              "network cut off: only the bundle's wheels and mirror files are reachable.")
@click.option("--ca-bundle", envvar="ENVKIT_CA_BUNDLE", help="CA bundle the host trusts when it fetches "
              "wheels "
              "(default: PIP_CERT, SSL_CERT_FILE or REQUESTS_CA_BUNDLE).")
@click.option("--from-registry", is_flag=True, help="Only pull from the manifest's registry "
              "locations; never rebuild.")
@click.option("--rebuild", is_flag=True, help="Rebuild even when the manifest names registry "
              "locations; never pull.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_trust_options
def restore_cmd(
    manifest_path: Path, tag: str | None, force: bool, no_cache: bool, offline: bool, ca_bundle: str | None,
    from_registry: bool, rebuild: bool, as_json: bool, trust_file: Path | None, signer: str | None,
) -> None:
    """Rebuild the image a manifest describes and prove it is the same image (exit 9 if not).

    When the manifest names registry locations (`envkit push`, then `envkit snapshot`), the image
    is pulled by digest from the first that answers and its ID checked against the manifest (exit
    5 if it differs, no tag moved); it is rebuilt only when no location answers.
    """
    from envkit.cli.image import check_tag
    from envkit.engine.client import get_client
    from envkit.record.bundle import (
        bundle_manifest,
        is_bundle,
        open_bundle,
        read_trusted_manifest,
        restore_offline_events,
    )
    from envkit.record.signing import trust_from_options
    from envkit.record.snapshot import restore_events

    if not manifest_path.is_file():
        raise UsageError(f"{manifest_path}: no such manifest or bundle")
    bundled = is_bundle(manifest_path)
    if offline and not bundled:
        raise UsageError(f"--offline needs a bundle, and {manifest_path} is not one",
                         hint=f"make one with network: envkit bundle {manifest_path} -o env.bundle")
    if tag is not None:
        check_tag(tag)
    if from_registry and (rebuild or offline):
        raise UsageError("--from-registry cannot go with --rebuild or --offline")
    trust = trust_from_options(trust_file, signer)
    progress = console.Progress(f"restore {manifest_path}")
    manifest = None if bundled else read_trusted_manifest(manifest_path, trust)[1]
    client = get_client()
    with progress.running():
        if bundled:
            opened = open_bundle(manifest_path, show=progress.show, trust=trust)
            manifest = bundle_manifest(opened)
        assert manifest is not None
        tag, drift_tag = _restore_tags(client, manifest, tag, force=force)
        # The tag comes from the user or the spec, never from the manifest (see _restore_tags).
        fetched = None if offline or rebuild else _fetch_from_registry(
            client, manifest, tag=tag, required=from_registry, say=progress.say)
        staging = _staging_tag(client, tag, force=force)
        if offline:
            events = restore_offline_events(client, opened, manifest, tag=staging, nocache=no_cache)
        else:
            events = restore_events(client, manifest, tag=staging, nocache=no_cache, ca_bundle=ca_bundle)
        # A generator runs nothing until read: when the image was pulled, no build step starts.
        if fetched is not None:
            result = fetched
        else:
            built = console.show_job(progress.title, events, progress)
            result = _settle_tag(client, built, tag, manifest.image.id)
    if manifest.drift is not None:
        _finish_drift_restore(client, manifest, result, tag=drift_tag, nocache=no_cache, as_json=as_json)
        return
    identical = result.image_id == manifest.image.id
    if as_json:
        console.out.print_json(json.dumps({**result.to_json(), "expected": manifest.image.id,
                                           "identical": identical, "offline": offline}))
    if identical:
        how = " (offline, from the bundle alone)" if offline else ""
        if getattr(result, "location", None):
            how = f" (pulled from {result.location}, no build step)"
        console.success(f"identical: {result.tag} is {result.image_id}, the manifest's image{how}")
        return
    from envkit.record.diff import diff_images
    from envkit.record.diff import render as render_diff

    console.warning(f"restored {result.image_id[:19]}, not the manifest's {manifest.image.id[:19]}: "
                    "reading the image to explain the difference (a few minutes for a large one)")
    difference = diff_images(client, manifest, result.image_id)
    render_diff(difference, console.console)
    kept = f" (tagged {result.tag}; {tag} was left where it was)" if result.tag != tag else ""
    raise ReproMismatch(f"restored {result.image_id}{kept}, the manifest records {manifest.image.id}")


def _fetch_from_registry(client: Any, manifest: Any, *, tag: str | None, required: bool, say: Any) -> Any:
    """The manifest's image pulled from its registry locations, or None to rebuild it instead."""
    from envkit.record.fetch import fetch_manifest_image, registry_only_failure

    if not manifest.image.locations and not required:
        return None
    result, attempts = fetch_manifest_image(client, manifest, tag=tag, say=say)
    if result is None and required:
        raise registry_only_failure(manifest, attempts)
    for attempt in attempts:
        console.warning(f"{attempt.location} did not answer: {attempt.reason}")
    if result is None:
        console.warning(f"none of the manifest's {len(attempts)} registry location(s) answered: rebuilding")
    return result


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--files", is_flag=True, help="List every added, removed and changed file.")
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON on stdout.")
def diff_cmd(a: str, b: str, files: bool, as_json: bool) -> None:
    """Explain how images (IDs, tags or manifest files) A and B differ. Exit 0 identical, 9 not."""
    from envkit.record.diff import diff_images, is_manifest_ref, render

    needs_engine = not (is_manifest_ref(a) and is_manifest_ref(b))
    client = _client() if needs_engine else None
    result = diff_images(client, a, b, files=files)
    if as_json:
        console.out.print(result.to_json(), markup=False, highlight=False, soft_wrap=True)
    else:
        render(result, console.out)
    if not result.identical:
        raise ReproMismatch(result.headline())


@click.command("export")
@click.argument("image")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Archive to write (zstd-compressed).")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True, help="zstd level.")
@click.option("--format", "fmt", type=click.Choice(["docker-archive", "oci"]), default="docker-archive",
              show_default=True, help="Archive layout inside the zstd stream.")
def export_cmd(image: str, output: Path, level: int, fmt: str) -> None:
    """Write IMAGE to FILE as a zstd-compressed docker-archive or OCI layout; the image ID survives."""
    from envkit.engine.archive import export_image
    from envkit.image.seal import human_bytes

    client = _client()
    progress = console.Progress(f"export {image}")
    with progress.running():
        result = export_image(client, image, output, level=level, fmt=fmt,
                              show=progress.show)
    console.success(
        f"exported {image} ({result.image_id[:19]}) to {result.path}: "
        f"{human_bytes(result.uncompressed_bytes)} -> {human_bytes(result.compressed_bytes)}"
    )
    console.out.print(result.path)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-size", metavar="SIZE", help="Refuse archives larger than SIZE once decompressed "
              "(e.g. 20G; default: the engine's free disk space less a margin).")
def import_cmd(file: Path, max_size: str | None) -> None:
    """Load an archive written by `envkit export` (docker-archive or OCI layout; zstd, gzip or plain)."""
    from envkit.engine.archive import import_image, parse_size

    cap = parse_size(max_size) if max_size is not None else None
    client = _client()
    progress = console.Progress(f"import {file}")
    with progress.running():
        result = import_image(client, file, max_size=cap, show=progress.show)
    for ref, image_id in zip(result.loaded, result.image_ids, strict=False):
        console.success(f"loaded {ref} ({image_id[:19]})")
    for image_id in result.image_ids:
        console.out.print(image_id)


@click.command("bundle")
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle file to write (an uncompressed tar; replaced only on success).")
@click.option("--index-url", envvar="ENVKIT_INDEX_URL",
              help="A PyPI mirror (PEP 503 simple index) to fetch wheels from; the lock's hashes are "
              "still enforced [env: ENVKIT_INDEX_URL].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--sign", "sign_key", metavar="KEY", type=click.Path(dir_okay=False, path_type=Path),
              help="Sign the bundle (its index: the manifest's digest and every file's sha256) with "
              "this SSH key.")
@_trust_options
def bundle_cmd(
    manifest_path: Path, output: Path, index_url: str | None, as_json: bool, sign_key: Path | None,
    trust_file: Path | None, signer: str | None,
) -> None:
    """Bundle a manifest with its base, wheels and .debs for `envkit restore BUNDLE --offline`."""
    from envkit.engine.client import get_client
    from envkit.record.bundle import bundle_events
    from envkit.record.signing import trust_from_options

    trust = trust_from_options(trust_file, signer)
    if sign_key is not None and not sign_key.is_file():
        raise UsageError(f"--sign {sign_key}: no such key file")
    client = get_client()
    events = bundle_events(client, manifest_path, output, sign_key=sign_key, trust=trust, index_url=index_url)
    index = console.show_job(f"bundle {manifest_path}", events)
    size = output.stat().st_size
    if as_json:
        console.out.print_json(json.dumps({
            "bundle": str(output), "size": size, "image_id": index.image_id,
            "files": len(index.files), "wheels": len(index.wheels),
        }))
    console.success(
        f"wrote {output}: {size / 1e9:.2f} GB, {len(index.wheels)} wheels, "
        f"{sum(n.startswith('apt/') for n in index.files)} mirror files, base {index.base_image_id[:19]}"
        + ("; signed" if sign_key is not None else "")
    )


SBOM_FORMATS = ("cyclonedx", "spdx")


def load_sbom_target(target: str) -> Manifest:
    """A manifest file is read (and its digest checked); anything else is snapshotted from the engine."""
    from envkit.record.snapshot import read_manifest

    path = Path(target)
    if path.is_file() and path.suffix not in (".yaml", ".yml"):
        return read_manifest(path)
    from envkit.engine.client import get_client
    from envkit.record.snapshot import snapshot

    return snapshot(get_client(), target)


@click.command("sbom")
@click.argument("target", metavar="IMAGE|MANIFEST")
@click.option("--format", "fmt", type=click.Choice(SBOM_FORMATS), required=True,
              help="cyclonedx (CycloneDX 1.6 JSON) or spdx (SPDX 2.3 JSON).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (atomically) instead of stdout.")
def sbom_cmd(target: str, fmt: str, output: Path | None) -> None:
    """Write a software bill of materials for IMAGE (NAME or a tag) or a MANIFEST from `envkit snapshot`.

    The same manifest always gives the same bytes: the document's time is the image's
    SOURCE_DATE_EPOCH and its serial number derives from the manifest's digest.
    """
    from envkit.atomic import write_text
    from envkit.record.sbom import FORMAT_NAMES, render

    manifest = load_sbom_target(target)
    for problem in manifest.lock_mismatches:
        console.warning(f"image and lock disagree: {problem}")
    text = render(manifest, fmt)
    if output is None:
        sys.stdout.write(text)
        return
    write_text(output, text)
    console.success(
        f"wrote {output}: {FORMAT_NAMES[fmt]}, {len(manifest.python_packages)} Python and "
        f"{len(manifest.apt_packages)} apt packages in {manifest.image.id[:19]}"
    )


def _show_drift(manifest: Any) -> None:
    """What `snapshot --container` recorded beyond the image, and what restore will not rebuild."""
    drift = manifest.drift
    if drift is None:
        return
    added = sum(1 for wheel in drift.wheels if wheel.image_version is None)
    counts = drift.docker_diff
    console.info(
        f"drift of container {drift.container_name}: {added} Python package(s) added, "
        f"{len(drift.wheels) - added} changed, {len(drift.removed)} removed; docker diff: "
        f"{counts.added} added, {counts.changed} changed, {counts.deleted} deleted paths"
    )
    for wheel in drift.wheels:
        was = f" (image {wheel.image_version})" if wheel.image_version else ""
        console.info(f"  locked {wheel.name} {wheel.version}{was}: {wheel.filename}")
    for name, version in drift.removed.items():
        console.info(f"  removed {name} {version}")
    for line in drift.apt_changes:
        console.warning(f"dpkg change in the container is recorded but not restored: {line}")
    console.info("files changed outside Python packages are counted only; restore does not rebuild them")


def _finish_drift_restore(
    client: Any,
    manifest: Any,
    base: Any,
    *,
    tag: str | None,
    nocache: bool,
    as_json: bool,
) -> None:
    """The base was restored as ``base`` (a BuildResult); prove it, then build the drift layer."""
    from envkit.record.drift import drift_events

    if base.image_id != manifest.image.id:
        from envkit.record.diff import diff_images
        from envkit.record.diff import render as render_diff

        render_diff(diff_images(client, manifest, base.image_id), console.console)
        raise ReproMismatch(
            f"restored base {base.image_id}, the manifest records {manifest.image.id}; "
            "no drift layer was built"
        )
    events = drift_events(client, manifest, base.image_id, tag=tag, nocache=nocache)
    result = console.show_job("drift layer", events)
    if as_json:
        console.out.print_json(json.dumps({**base.to_json(), "expected": manifest.image.id,
                                           "identical": True, "drift": result.to_json()}))
    console.success(
        f"restored base identical ({base.image_id}) + drift layer: {result.packages} packages"
        + (f", {result.removed} removed" if result.removed else "")
        + f" -> {result.tag} {result.image_id}"
    )
