"""Thin commands: parse options, call one core function, show the result.

Only ``main`` turns envkit errors into exit codes (see envkit.errors); tracebacks appear only with
--debug or ENVKIT_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.table import Table

from envkit import __version__
from envkit.cli import console
from envkit.errors import EnvkitError, Interrupted, UsageError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="envkit")
@click.option("--debug", is_flag=True, envvar="ENVKIT_DEBUG", help="Show tracebacks [env: ENVKIT_DEBUG].")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Build, verify and reproduce pinned PyTorch/CUDA/cuDNN images."""
    ctx.obj = {"debug": debug}


@cli.command("list")
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


@cli.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
@click.option("--ca-bundle", envvar="ENVKIT_CA_BUNDLE", help="CA bundle for the builder stage.")
def render(name: str, output: Path | None, ca_bundle: str | None) -> None:
    """Print the Dockerfile for NAME (catalog name:tag or spec file). Needs no engine."""
    from envkit.atomic import write_text
    from envkit.image.build import render_only

    text = render_only(name, ca_bundle=ca_bundle)
    if output:
        write_text(output, text)
        console.info(f"wrote {output}")
    else:
        sys.stdout.write(text)


@cli.command()
@click.argument("name", default="debian:bookworm")
@click.option("--mirror", help="Debian mirror URL (default: the spec default).")
@click.option("--source-date-epoch", type=int, envvar="SOURCE_DATE_EPOCH", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Bootstrap again even if the image exists.")
def base(name: str, mirror: str | None, source_date_epoch: int, force: bool) -> None:
    """Bootstrap a minimal Debian base with mmdebstrap and load it as a local image."""
    from envkit.engine.client import get_client
    from envkit.image.base import ensure_base, parse_base_name

    plan = parse_base_name(name, mirror=mirror, source_date_epoch=source_date_epoch)
    client = get_client()
    progress = console.Progress(f"base {plan.tag}")
    with progress.running():
        result = ensure_base(client, plan, force=force, log=lambda line: progress.update("log", line))
    state = "bootstrapped" if result.created else "already present"
    console.success(f"{result.tag} {state}: {result.image_id} (rootfs {result.rootfs_sha256})")
    console.out.print(result.tag)


@cli.command()
@click.argument("name")
@click.option("--tag", "tag", help="Tag for the image (default envkit/NAME:TAG).")
@click.option("--no-cache", is_flag=True, help="Build every step again.")
@click.option("--ca-bundle", envvar="ENVKIT_CA_BUNDLE", help="CA bundle for the builder stage "
              "(default: PIP_CERT, SSL_CERT_FILE or REQUESTS_CA_BUNDLE).")
@click.option("--no-seal", is_flag=True, help="Skip rewriting the image into deterministic layers.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def build(
    name: str, tag: str | None, no_cache: bool, ca_bundle: str | None, no_seal: bool, as_json: bool
) -> None:
    """Render and build NAME on the Docker engine."""
    from envkit.engine.client import get_client
    from envkit.image.build import build_image, ensure_requirements, plan_build

    if tag is not None:
        _check_tag(tag)
    # Order matters: spec and compatibility errors (exit 2) before the engine (3) before the network.
    plan = plan_build(name, ca_bundle=ca_bundle, with_requirements=False)
    client = get_client()
    ensure_requirements(plan)
    if plan.lock_source == "resolved now":
        console.warning(f"{plan.ref.display} has no lock; resolved the Python set now (run `envkit lock`)")
    progress = console.Progress(f"build {tag or plan.tag}")
    result = None
    with progress.running():
        for event in build_image(client, plan, tag=tag, nocache=no_cache, seal=not no_seal):
            if event.kind == "done":
                result = event.data["result"]
            else:
                progress.update(event.kind, event.message, event.step, event.total)
    assert result is not None
    console.success(
        f"built {result.tag} {result.image_id[:19]} in {result.durations['total']:.1f}s "
        f"({result.size / 1e9:.2f} GB)"
    )
    if as_json:
        console.out.print_json(json.dumps(result.to_json()))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_images", is_flag=True, help="Every catalog image.")
@click.option("--check", is_flag=True, help="Only check: exit 9 when a lock is stale or missing.")
def lock(names: tuple[str, ...], all_images: bool, check: bool) -> None:
    """Resolve and write images/<name>/<tag>.lock (wheels with hashes, base, apt versions)."""
    from envkit.errors import ReproMismatch
    from envkit.image.locking import check_locks, make_lock

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
        plan, written = make_lock(client, name, log=console.info)
        console.success(
            f"{plan.ref.lock_path.name}: {len(written.packages)} wheels, {len(written.apt)} apt packages, "
            f"base {written.base.get('rootfs', written.base.get('ref'))}"
        )


@cli.command()
@click.argument("target", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Manifest file to write (atomically).")
@click.option("--with-host", is_flag=True, help="Record this host's driver, GPUs and engine version.")
@click.option("--verify-report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON report from `envkit verify --json` to keep in the manifest.")
@click.option("--container", metavar="ID", help="A running container instead of NAME|IMAGE: its image, "
              "plus the Python packages changed in it since it started (locked to PyPI wheels).")
def snapshot(
    target: str | None, output: Path, with_host: bool, verify_report: Path | None, container: str | None
) -> None:
    """Write a manifest of everything that defines NAME or IMAGE (or a running container)."""
    from envkit.engine.client import engine_version, get_client
    from envkit.record.snapshot import snapshot as take
    from envkit.record.snapshot import write_manifest

    if (target is None) == (container is None):
        raise UsageError("give NAME|IMAGE or --container ID (one of them, not both)")
    client = get_client()
    host = None
    if with_host:
        from envkit.verify.doctor import read_host

        host = {"engine": engine_version(client), **read_host().to_json()}
    report = json.loads(verify_report.read_text()) if verify_report else None
    if container is not None:
        from envkit.cli.drift import show_snapshot
        from envkit.record.drift import snapshot_container

        manifest = snapshot_container(client, container, host=host, verify_report=report)
        show_snapshot(manifest)
    else:
        manifest = take(client, target or "", host=host, verify_report=report)
    write_manifest(output, manifest)
    for problem in manifest.lock_mismatches:
        console.warning(f"image and lock disagree: {problem}")
    console.success(
        f"wrote {output}: {manifest.image.id[:19]}, {len(manifest.python_packages)} Python and "
        f"{len(manifest.apt_packages)} apt packages"
    )


@cli.command()
@click.argument("manifest_path", metavar="MANIFEST|BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tag", help="Tag for the restored image (default: the manifest's first tag).")
@click.option("--no-cache", is_flag=True, help="Rebuild every step.")
@click.option("--offline", is_flag=True, help="Build from a bundle (`envkit bundle`) with the build "
              "network cut off: only the bundle's wheels and mirror files are reachable.")
@click.option("--ca-bundle", envvar="ENVKIT_CA_BUNDLE", help="CA bundle for the builder stage "
              "(default: PIP_CERT, SSL_CERT_FILE or REQUESTS_CA_BUNDLE).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def restore(
    manifest_path: Path, tag: str | None, no_cache: bool, offline: bool, ca_bundle: str | None,
    as_json: bool,
) -> None:
    """Rebuild the image a manifest describes and prove it is the same image (exit 9 if not)."""
    from envkit.engine.client import get_client
    from envkit.errors import ReproMismatch
    from envkit.record.bundle import is_bundle, open_bundle, restore_offline_events
    from envkit.record.snapshot import parse_manifest, read_manifest, restore_events

    if not manifest_path.is_file():
        raise UsageError(f"{manifest_path}: no such manifest or bundle")
    bundled = is_bundle(manifest_path)
    if offline and not bundled:
        raise UsageError(f"--offline needs a bundle, and {manifest_path} is not one",
                         hint=f"make one with network: envkit bundle {manifest_path} -o env.bundle")
    if tag is not None:
        _check_tag(tag)
    progress = console.Progress(f"restore {manifest_path}")
    say = lambda message: progress.update("phase", message)  # noqa: E731
    manifest = None if bundled else read_manifest(manifest_path)
    client = get_client()
    result = None
    with progress.running():
        if bundled:
            opened = open_bundle(manifest_path, say=say)
            manifest = parse_manifest(opened.manifest_text, f"{manifest_path}:manifest.json")
        assert manifest is not None
        # With drift, --tag names the final (drift) image; the base is restored under its own tag.
        drift_tag, tag = (tag, None) if manifest.drift is not None else (None, tag)
        if offline:
            events = restore_offline_events(client, opened, manifest, tag=tag, nocache=no_cache, say=say)
        else:
            events = restore_events(client, manifest, tag=tag, nocache=no_cache, ca_bundle=ca_bundle)
        for event in events:
            if event.kind == "done":
                result = event.data["result"]
            else:
                progress.update(event.kind, event.message, event.step, event.total)
    assert result is not None
    if manifest.drift is not None:
        from envkit.cli.drift import finish_restore

        finish_restore(client, manifest, result, tag=drift_tag, nocache=no_cache, as_json=as_json)
        return
    identical = result.image_id == manifest.image.id
    if as_json:
        console.out.print_json(json.dumps({**result.to_json(), "expected": manifest.image.id,
                                           "identical": identical, "offline": offline}))
    if identical:
        how = " (offline, from the bundle alone)" if offline else ""
        console.success(f"identical: {result.tag} is {result.image_id}, the manifest's image{how}")
        return
    from envkit.record.diff import diff_images
    from envkit.record.diff import render as render_diff

    console.warning(f"restored {result.image_id[:19]}, not the manifest's {manifest.image.id[:19]}: "
                    "reading the image to explain the difference (a few minutes for a large one)")
    difference = diff_images(client, manifest, result.image_id)
    render_diff(difference, console.console)
    raise ReproMismatch(f"restored {result.image_id}, the manifest records {manifest.image.id}")


def _check_tag(tag: str) -> None:
    from envkit.spec.model import IMAGE_TAG_RE

    repo, sep, tag_part = tag.rpartition(":")
    if not sep or not repo or not IMAGE_TAG_RE.match(tag_part) or any(c.isupper() for c in repo):
        raise UsageError(f"--tag {tag!r} is not a valid repository:tag")


def _register_optional() -> None:
    """Commands that live in their own modules."""
    from envkit.cli.registry import register

    register(cli)


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("ENVKIT_DEBUG", "") not in ("", "0") or "--debug" in (argv or sys.argv[1:])
    _register_optional()
    try:
        cli.main(args=argv, prog_name="envkit", standalone_mode=False)
    except EnvkitError as error:
        console.display_error(error, debug=debug)
        return error.exit_code
    except click.exceptions.Abort:
        console.display_error(Interrupted("interrupted"), debug=False)
        return Interrupted.exit_code
    except click.ClickException as error:
        error.show(file=sys.stderr)
        return UsageError.exit_code
    except click.exceptions.Exit as exit_:
        return int(exit_.exit_code)
    except KeyboardInterrupt:
        console.display_error(Interrupted("interrupted"), debug=False)
        return Interrupted.exit_code
    except Exception as exc:  # an envkit bug: say so, exit 1
        console.display_internal(exc, debug=debug)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
