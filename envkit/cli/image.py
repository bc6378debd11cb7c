"""Commands that make images: list, render, base, build, lock, seal.

Each parses its options, calls one core function and shows the result. Progress goes to stderr
(live on a terminal, plain lines otherwise); data meant for programs (JSON, Dockerfiles, image IDs)
goes to stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from envkit.cli import console
from envkit.errors import UsageError


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def list_cmd(as_json: bool) -> None:
    """Show the catalog: name:tag, torch, CUDA, cuDNN, Python, variant."""
    from envkit.image.build import resolve_spec
    from envkit.spec.catalog import list_catalog_paths, load

    rows = []
    for ref_name, _ in list_catalog_paths():
        ref = load(ref_name)
        resolved = resolve_spec(ref)
        rows.append(
            {
                "image": ref_name,
                "torch": resolved.torch,
                "torchvision": ref.spec.torchvision,
                "cuda": resolved.cuda,
                "cudnn": resolved.cudnn,
                "nccl": resolved.nccl,
                "python": ref.spec.python,
                "variant": ref.spec.variant,
                "locked": ref.lock_path.is_file(),
            }
        )
    if as_json:
        console.out.print_json(json.dumps(rows))
        return
    table = Table("image", "torch", "CUDA", "cuDNN", "Python", "variant", "locked")
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(
            row["image"],
            row["torch"],
            row["cuda"],
            row["cudnn"] or "-",
            row["python"],
            row["variant"],
            "yes" if row["locked"] else "no",
        )
    console.out.print(table)


@click.command("render")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
@click.option("--ca-bundle", envvar="ENVKIT_CA_BUNDLE",
              help="CA bundle the host trusts when it fetches wheels.")
def render_cmd(name: str, output: Path | None, ca_bundle: str | None) -> None:
    """Print the Dockerfile for NAME (catalog name:tag or spec file). Needs no engine."""
    from envkit.atomic import write_text
    from envkit.image.build import render_only

    text = render_only(name, ca_bundle=ca_bundle)
    if output:
        write_text(output, text)
        console.info(f"wrote {output}")
    else:
        sys.stdout.write(text)


@click.command("base")
@click.argument("name", default="debian:bookworm")
@click.option("--mirror", help="Debian mirror URL (default: the spec default).")
@click.option("--source-date-epoch", type=int, envvar="SOURCE_DATE_EPOCH", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Bootstrap again even if the image exists.")
def base_cmd(name: str, mirror: str | None, source_date_epoch: int, force: bool) -> None:
    """Bootstrap a minimal Debian base with mmdebstrap and load it as a local image."""
    from envkit.engine.client import get_client
    from envkit.image.base import base_events, parse_base_name

    plan = parse_base_name(name, mirror=mirror, source_date_epoch=source_date_epoch)
    client = get_client()
    result = console.show_job(f"base {plan.tag}", base_events(client, plan, force=force))
    state = "bootstrapped" if result.created else "already present"
    console.success(f"{result.tag} {state}: {result.image_id} (rootfs {result.rootfs_sha256})")
    console.out.print(result.tag)


@click.command("build")
@click.argument("name")
@click.option("--tag", "tag", help="Tag for the image (default envkit/NAME:TAG).")
@click.option("--no-cache", is_flag=True, help="Build every step again.")
@click.option("--ca-bundle", envvar="ENVKIT_CA_BUNDLE", help="CA bundle the host trusts when it fetches "
              "wheels (default: PIP_CERT, SSL_CERT_FILE or REQUESTS_CA_BUNDLE).")
@click.option("--index-url", envvar="ENVKIT_INDEX_URL",
              help="A PyPI mirror (PEP 503 simple index) to fetch wheels from; the lock's hashes are "
              "still enforced [env: ENVKIT_INDEX_URL].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def build_cmd(
    name: str, tag: str | None, no_cache: bool, ca_bundle: str | None, index_url: str | None, as_json: bool,
) -> None:
    """Render and build NAME on the Docker engine."""
    from envkit.engine.client import get_client
    from envkit.image.build import build_image, ensure_requirements, plan_build

    if tag is not None:
        check_tag(tag)
    # Order matters: spec and compatibility errors (exit 2) before the engine (3) before the network.
    plan = plan_build(name, ca_bundle=ca_bundle, with_requirements=False, index_url=index_url)
    client = get_client()
    ensure_requirements(plan)
    if plan.lock_source == "resolved now":
        console.warning(f"{plan.ref.display} has no lock; resolved the Python set now (run `envkit lock`)")
    result = console.show_job(
        f"build {tag or plan.tag}", build_image(client, plan, tag=tag, nocache=no_cache)
    )
    console.success(
        f"built {result.tag} {result.image_id[:19]} in {result.durations['total']:.1f}s "
        f"({result.size / 1e9:.2f} GB)"
    )
    if as_json:
        console.out.print_json(json.dumps(result.to_json()))


@click.command("lock")
@click.argument("names", nargs=-1)
@click.option("--all", "all_images", is_flag=True, help="Every catalog image.")
@click.option("--check", is_flag=True, help="Only check: exit 9 when a lock is stale or missing.")
@click.option("--index-url", envvar="ENVKIT_INDEX_URL",
              help="A PyPI mirror (PEP 503 simple index) to fetch wheels from; the lock's hashes are "
              "still enforced [env: ENVKIT_INDEX_URL].")
def lock_cmd(names: tuple[str, ...], all_images: bool, check: bool, index_url: str | None) -> None:
    """Resolve and write images/<name>/<tag>.lock (wheels with hashes, base, apt versions)."""
    from envkit.errors import ReproMismatch
    from envkit.events import follow
    from envkit.image.locking import check_locks, lock_events

    if check:
        statuses = check_locks(list(names) or None)
        for status in statuses:
            console.info(f"{status.name:<28} {status.state}")
        bad = [s.name for s in statuses if s.state != "fresh"]
        if bad:
            raise ReproMismatch(
                f"{len(bad)} lock(s) do not match their spec: {', '.join(bad)}",
                hint="run `envkit lock NAME` and commit the new lock",
            )
        console.success(f"all {len(statuses)} lock(s) match their specs")
        return
    if not names and not all_images:
        raise UsageError("name an image to lock, or pass --all")
    from envkit.engine.client import get_client
    from envkit.spec.catalog import list_catalog_paths

    targets = list(names) or [ref for ref, _ in list_catalog_paths()]
    client = get_client()
    for name in targets:
        events = lock_events(client, name, index_url=index_url)
        plan, written = follow(events, lambda event: console.info(event.message))
        console.success(
            f"{plan.ref.lock_path.name}: {len(written.packages)} wheels, {len(written.apt)} apt packages, "
            f"base {written.base.get('rootfs', written.base.get('ref'))}"
        )


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
    from envkit.engine.client import get_client
    from envkit.image.seal import human_bytes, seal_image

    client = get_client()
    progress = console.Progress(f"seal {image}")
    with progress.running():
        result = seal_image(
            client,
            image,
            source_date_epoch=source_date_epoch,
            tag=tag,
            tmp_dir=tmp_dir,
            rewrite_layers=not keep_layers,
            show=progress.show,
        )
    console.success(
        f"sealed {image}: {result.image_id} ({len(result.layers)} layers, "
        f"{human_bytes(result.unsealed_size)} -> {human_bytes(result.sealed_size)}, {result.seconds:.1f}s)"
    )
    if as_json:
        console.out.print_json(json.dumps(result.to_dict()))
    else:
        console.out.print(result.image_id)


def check_tag(tag: str) -> None:
    from envkit.spec.model import IMAGE_TAG_RE

    repo, sep, tag_part = tag.rpartition(":")
    if not sep or not repo or not IMAGE_TAG_RE.match(tag_part) or any(c.isupper() for c in repo):
        raise UsageError(f"--tag {tag!r} is not a valid repository:tag")
