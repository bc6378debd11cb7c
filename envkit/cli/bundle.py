"""`envkit bundle`: gather what an offline restore needs into one file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from envkit.cli import console


@click.command("bundle")
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle file to write (an uncompressed tar; replaced only on success).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def bundle(manifest_path: Path, output: Path, as_json: bool) -> None:
    """Bundle a manifest with its base, wheels and .debs for `envkit restore BUNDLE --offline`."""
    from envkit.engine.client import get_client
    from envkit.record.bundle import make_bundle

    client = get_client()
    progress = console.Progress(f"bundle {manifest_path}")
    with progress.running():
        index = make_bundle(client, manifest_path, output, say=lambda m: progress.update("phase", m))
    size = output.stat().st_size
    if as_json:
        console.out.print_json(json.dumps({
            "bundle": str(output), "size": size, "image_id": index.image_id,
            "files": len(index.files), "wheels": len(index.wheels),
        }))
    console.success(
        f"wrote {output}: {size / 1e9:.2f} GB, {len(index.wheels)} wheels, "
        f"{sum(n.startswith('apt/') for n in index.files)} mirror files, base {index.base_image_id[:19]}"
    )


def commands() -> list[click.Command]:
    return [bundle]
