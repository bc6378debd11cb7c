"""Showing container drift: the summary of `snapshot --container` and the drift half of `restore`.

The core is envkit.record.drift; this module only drives it and prints. Progress goes to stderr, JSON to
stdout, failures are raised as envkit errors (exit 9 when the base or the drift image differs).
"""

from __future__ import annotations

import json
from typing import Any

import docker

from envkit.cli import console
from envkit.errors import ReproMismatch


def show_snapshot(manifest: Any) -> None:
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


def finish_restore(
    client: docker.DockerClient,
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
    progress = console.Progress("drift layer")
    result = None
    with progress.running():
        for event in drift_events(client, manifest, base.image_id, tag=tag, nocache=nocache):
            if event.kind == "done":
                result = event.data["result"]
            else:
                progress.update(event.kind, event.message, event.step, event.total)
    assert result is not None
    if as_json:
        console.out.print_json(json.dumps({**base.to_json(), "expected": manifest.image.id,
                                           "identical": True, "drift": result.to_json()}))
    console.success(
        f"restored base identical ({base.image_id}) + drift layer: {result.packages} packages"
        + (f", {result.removed} removed" if result.removed else "")
        + f" -> {result.tag} {result.image_id}"
    )
