"""Commands for reproducible images: seal, diff, export, import.

Each parses its options, calls one core function and shows the result. Progress goes to stderr
(live on a terminal, plain lines otherwise); data meant for programs (JSON, image IDs) goes to
stdout. Failures are raised as envkit errors and turned into exit codes by ``envkit.cli.app.main``:
`envkit diff` raises ReproMismatch (exit 9) after showing the differences, so a script can test
`envkit diff A B` directly; a missing image is a UsageError (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from envkit.cli import console
from envkit.errors import ReproMismatch


def _client():  # type: ignore[no-untyped-def]
    from envkit.engine.client import get_client

    return get_client()


@click.command("seal")
@click.argument("image")
@click.option("--tag", help="Tag for the sealed image (default: the tag given as IMAGE moves).")
@click.option("--source-date-epoch", type=int, envvar="SOURCE_DATE_EPOCH",
              help="Clamp times to this epoch [env: SOURCE_DATE_EPOCH] (default: the image's "
              "io.envkit.source-date-epoch label).")
@click.option("--tmp-dir", type=click.Path(file_okay=False, path_type=Path), envvar="ENVKIT_TMPDIR",
              help="Where the rewritten layers are staged [env: ENVKIT_TMPDIR].")
@click.option("--keep-layers", is_flag=True,
              help="Seal the config only; for builds whose layers are already deterministic (seconds, "
              "not minutes, for a large image).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def seal_cmd(image: str, tag: str | None, source_date_epoch: int | None, tmp_dir: Path | None,
             keep_layers: bool, as_json: bool) -> None:
    """Rewrite IMAGE into deterministic layers and config, and move its tag to the result."""
    from envkit.image.seal import human_bytes, seal_image

    client = _client()
    progress = console.Progress(f"seal {image}")
    with progress.running():
        result = seal_image(
            client,
            image,
            source_date_epoch=source_date_epoch,
            tag=tag,
            tmp_dir=tmp_dir,
            rewrite_layers=not keep_layers,
            progress=lambda msg: progress.update("phase", msg),
        )
    console.success(
        f"sealed {image}: {result.image_id} ({len(result.layers)} layers, "
        f"{human_bytes(result.unsealed_size)} -> {human_bytes(result.sealed_size)}, {result.seconds:.1f}s)"
    )
    if as_json:
        console.out.print_json(json.dumps(result.to_dict()))
    else:
        console.out.print(result.image_id)


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
    from envkit.image.archive import export_image
    from envkit.image.seal import human_bytes

    client = _client()
    progress = console.Progress(f"export {image}")
    with progress.running():
        result = export_image(client, image, output, level=level, fmt=fmt,
                              progress=lambda msg: progress.update("phase", msg))
    console.success(
        f"exported {image} ({result.image_id[:19]}) to {result.path}: "
        f"{human_bytes(result.uncompressed_bytes)} -> {human_bytes(result.compressed_bytes)}"
    )
    console.out.print(result.path)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_cmd(file: Path) -> None:
    """Load an archive written by `envkit export` (docker-archive or OCI layout; zstd, gzip or plain)."""
    from envkit.image.archive import import_image

    client = _client()
    progress = console.Progress(f"import {file}")
    with progress.running():
        result = import_image(client, file, progress=lambda msg: progress.update("phase", msg))
    for ref, image_id in zip(result.loaded, result.image_ids, strict=False):
        console.success(f"loaded {ref} ({image_id[:19]})")
    for image_id in result.image_ids:
        console.out.print(image_id)


def commands() -> list[click.Command]:
    """The commands this module adds to the `envkit` group."""
    return [seal_cmd, diff_cmd, export_cmd, import_cmd]
