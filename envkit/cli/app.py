"""The ``envkit`` group and ``main``: every command lives in a module of this package, loaded lazily.

``COMMANDS`` is the one table of commands: name -> (module, attribute, summary). ``envkit --help``
is drawn from the table alone, and running a command imports only the module that defines it, so
`envkit render` does not pay for verify, seal or the dev containers.

Only ``main`` turns envkit errors into exit codes (see envkit.errors); tracebacks appear only with
--debug or ENVKIT_DEBUG=1.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import click

from envkit import __version__
from envkit.cli import console
from envkit.errors import EnvkitError, Interrupted, UsageError

# name -> (module, attribute, summary). The summary is the first paragraph of the command's own
# help (a unit test keeps them equal), shortened to fit by click as for any command.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "base": ("envkit.cli.image", "base_cmd",
             "Bootstrap a minimal Debian base with mmdebstrap and load it as a local image."),
    "build": ("envkit.cli.image", "build_cmd", "Render and build NAME on the Docker engine."),
    "bundle": ("envkit.cli.record", "bundle_cmd",
               "Bundle a manifest with its base, wheels and .debs for `envkit restore BUNDLE --offline`."),
    "diff": ("envkit.cli.record", "diff_cmd",
             "Explain how images (IDs, tags or manifest files) A and B differ. Exit 0 identical, 9 not."),
    "doctor": ("envkit.cli.doctor", "doctor_cmd",
               "Say which catalog images can run on this host's driver and GPUs."),
    "export": ("envkit.cli.record", "export_cmd",
               "Write IMAGE to FILE as a zstd-compressed docker-archive or OCI layout; "
               "the image ID survives."),
    "fetch": ("envkit.cli.dev", "fetch_cmd",
              "Fetch a file (model weights) by URL and sha256 into the host cache, once."),
    "import": ("envkit.cli.record", "import_cmd",
               "Load an archive written by `envkit export` "
               "(docker-archive or OCI layout; zstd, gzip or plain)."),
    "k8s": ("envkit.cli.cluster", "k8s_cmd",
            "Print a Kubernetes Job (or Pod) that runs NAME the way envkit runs it; "
            "--verify checks GPU nodes."),
    "list": ("envkit.cli.image", "list_cmd",
             "Show the catalog: name:tag, torch, CUDA, cuDNN, Python, variant."),
    "lock": ("envkit.cli.image", "lock_cmd",
             "Resolve and write images/<name>/<tag>.lock (wheels with hashes, base, apt versions)."),
    "matrix": ("envkit.cli.matrix", "matrix_cmd",
               "Show which torch / CUDA / cuDNN / Python combinations exist."),
    "ps": ("envkit.cli.dev", "ps_cmd", "List the containers `envkit run` started."),
    "pull": ("envkit.cli.registry", "pull_cmd",
             "Pull REF (REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...) and print its image ID."),
    "push": ("envkit.cli.registry", "push_cmd",
             "Push NAME|IMAGE to a registry and print its digest; "
             "`envkit snapshot` records where it went."),
    "render": ("envkit.cli.image", "render_cmd",
               "Print the Dockerfile for NAME (catalog name:tag or spec file). Needs no engine."),
    "restore": ("envkit.cli.record", "restore_cmd",
                "Rebuild the image a manifest describes and prove it is the same image (exit 9 if not)."),
    "run": ("envkit.cli.dev", "run_cmd",
            "Run NAME (catalog name:tag or image) as its non-root user, with the chosen services."),
    "sbom": ("envkit.cli.record", "sbom_cmd",
             "Write a software bill of materials for IMAGE (NAME or a tag) "
             "or a MANIFEST from `envkit snapshot`."),
    "seal": ("envkit.cli.image", "seal_cmd",
             "Rewrite IMAGE into deterministic layers and config, and move its tag to the result."),
    "snapshot": ("envkit.cli.record", "snapshot_cmd",
                 "Write a manifest of everything that defines NAME or IMAGE (or a running container)."),
    "stop": ("envkit.cli.dev", "stop_cmd",
             "Stop and remove containers `envkit run` started (their token files too)."),
    "verify": ("envkit.cli.verify", "verify_cmd",
               "Check that NAME|IMAGE runs on this host and trains at the speed the GPU allows."),
}


class LazyGroup(click.Group):
    """A group whose commands come from ``COMMANDS``, each module imported only when it is run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute, _ = entry
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}.{attribute} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The same listing click draws, from the table's summaries instead of the imported commands."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, _short_help(COMMANDS[name][2], limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _short_help(summary: str, limit: int) -> str:
    """The summary shortened exactly as click shortens a command's own help."""
    return click.Command(None, help=summary).get_short_help_str(limit)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="envkit")
@click.option("--debug", is_flag=True, envvar="ENVKIT_DEBUG", help="Show tracebacks [env: ENVKIT_DEBUG].")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Build, verify and reproduce pinned PyTorch/CUDA/cuDNN images."""
    ctx.obj = {"debug": debug}


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("ENVKIT_DEBUG", "") not in ("", "0") or "--debug" in (argv or sys.argv[1:])
    try:
        # Outside standalone mode click returns the code of a `click.exceptions.Exit` instead of raising.
        args = list(argv) if argv is not None else None
        code = cli.main(args=args, prog_name="envkit", standalone_mode=False)
        if isinstance(code, int) and code:
            return code
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
