"""``envkit sbom``: a CycloneDX or SPDX bill of materials for an image or a manifest (envkit.record.sbom)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from envkit.cli import console

if TYPE_CHECKING:
    from envkit.record.snapshot import Manifest

FORMATS = ("cyclonedx", "spdx")


def load_target(target: str) -> Manifest:
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
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="cyclonedx (CycloneDX 1.6 JSON) or spdx (SPDX 2.3 JSON).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (atomically) instead of stdout.")
def sbom(target: str, fmt: str, output: Path | None) -> None:
    """Write a software bill of materials for IMAGE (NAME or a tag) or a MANIFEST from `envkit snapshot`.

    The same manifest always gives the same bytes: the document's time is the image's
    SOURCE_DATE_EPOCH and its serial number derives from the manifest's digest.
    """
    from envkit.atomic import write_text
    from envkit.record.sbom import FORMAT_NAMES, render

    manifest = load_target(target)
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
