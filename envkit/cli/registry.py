"""`envkit push` and `envkit pull`: images to and from a registry, through the engine.

Credentials come from the user's Docker config (`docker login`), or from --username with the
password read from stdin (--password-stdin): never from argv, so they stay out of shell history
and process listings.
"""

from __future__ import annotations

import json
import sys

import click

from envkit.cli import console
from envkit.errors import UsageError


def _credentials(username: str | None, password_stdin: bool):  # type: ignore[no-untyped-def]
    from envkit.engine.registry import Credentials

    if username is None and not password_stdin:
        return None
    if username is None or not password_stdin:
        raise UsageError("--username and --password-stdin go together",
                         hint="echo \"$PASSWORD\" | envkit push IMAGE REPO --username USER --password-stdin")
    password = sys.stdin.read().rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin read an empty password")
    return Credentials(username, password)


_USERNAME = click.option("--username", metavar="USER",
                         help="Registry user (default: the Docker config's login).")
_PASSWORD_STDIN = click.option("--password-stdin", is_flag=True,
                               help="Read the registry password from stdin (with --username).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


@click.command("push")
@click.argument("image", metavar="NAME|IMAGE")
@click.argument("target", metavar="REGISTRY/REPO[:TAG]")
@_USERNAME
@_PASSWORD_STDIN
@_JSON
def push_cmd(image: str, target: str, username: str | None, password_stdin: bool, as_json: bool) -> None:
    """Push NAME|IMAGE to a registry and print its digest; `envkit snapshot` records where it went.

    Only the layers the registry lacks are sent. The location (REGISTRY/REPO@sha256:...) is
    remembered on this host, so a manifest written later names it and `envkit restore` can pull it.
    """
    from envkit.engine.client import get_client
    from envkit.engine.registry import push_image
    from envkit.image.seal import human_bytes
    from envkit.spec.catalog import image_ref_for

    credentials = _credentials(username, password_stdin)
    client = get_client()
    progress = console.Progress(f"push {image}")
    with progress.running():
        result = push_image(client, image_ref_for(image), target, credentials=credentials,
                            progress=progress.say)
    if as_json:
        console.out.print_json(json.dumps(result.to_json()))
    console.success(
        f"pushed {result.image_id[:19]} as {result.reference} in {result.seconds:.1f}s: "
        f"{result.layers_pushed} layer(s) sent ({human_bytes(result.bytes_pushed)} before compression), "
        f"{result.layers_present} already there"
    )
    if not as_json:
        console.out.print(result.location, markup=False, highlight=False)


@click.command("pull")
@click.argument("reference", metavar="REF")
@click.option("--tag", help="Tag the pulled image (after any --expect-id check).")
@click.option("--expect-id", metavar="ID", help="Refuse the image (exit 5, nothing tagged) unless its "
              "image ID is ID; needs REF by digest.")
@_USERNAME
@_PASSWORD_STDIN
@_JSON
def pull_cmd(
    reference: str, tag: str | None, expect_id: str | None, username: str | None, password_stdin: bool,
    as_json: bool,
) -> None:
    """Pull REF (REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...) and print its image ID."""
    from envkit.cli.image import check_tag
    from envkit.engine.client import get_client
    from envkit.engine.registry import pull_image
    from envkit.image.seal import human_bytes

    if tag is not None:
        check_tag(tag)
    credentials = _credentials(username, password_stdin)
    client = get_client()
    progress = console.Progress(f"pull {reference}")
    with progress.running():
        result = pull_image(client, reference, credentials=credentials, expected_id=expect_id, tag=tag,
                            progress=progress.say)
    if as_json:
        console.out.print_json(json.dumps(result.to_json()))
    where = f" as {result.tag}" if result.tag else " (untagged)"
    console.success(
        f"pulled {result.reference}{where}: {result.image_id} in {result.seconds:.1f}s, "
        f"{human_bytes(result.bytes_downloaded)} downloaded"
    )
    if not as_json:
        console.out.print(result.image_id, markup=False, highlight=False)
