"""The one rich Console (stderr) and the ways envkit shows progress, results and errors.

Data a machine reads (JSON, rendered Dockerfiles) goes to stdout; everything meant for people goes
to stderr, with live progress only when stderr is a terminal and plain lines otherwise.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from envkit.errors import EnvkitError
from envkit.events import Event, follow
from envkit.untrusted import clean

console = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


def interactive() -> bool:
    return console.is_terminal


# Messages often carry strings from files and images other people made (names, tags, paths):
# every one is printed as plain text, cleaned of control characters and escape sequences.


def info(message: str) -> None:
    console.print(Text(clean(message, keep_newlines=True)))


def warning(message: str) -> None:
    console.print(Text("warning: ", style="yellow bold") + Text(clean(message, keep_newlines=True)))


def success(message: str) -> None:
    console.print(Text(clean(message, keep_newlines=True), style="green"))


def display_error(error: EnvkitError, *, debug: bool = False) -> None:
    message = clean(error.message, keep_newlines=True)
    console.print(Text(f"error ({error.label}): ", style="red bold") + Text(message))
    if error.details:
        console.print(Text("last output:", style="dim"))
        for line in error.details.splitlines()[-20:]:
            console.print(Text("  " + clean(line), style="dim"))
    if error.hint:
        console.print(Text("hint: ", style="cyan") + Text(clean(error.hint, keep_newlines=True)))
    if debug:
        console.print("".join(traceback.format_exception(error)), markup=False)


def display_internal(exc: BaseException, *, debug: bool) -> None:
    console.print(Text("internal error: ", style="red bold") + Text(f"{type(exc).__name__}: {exc}"))
    if debug:
        console.print("".join(traceback.format_exception(exc)), markup=False)
    else:
        console.print("run again with --debug (or ENVKIT_DEBUG=1) for the traceback", style="dim")


def _elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Shows a stream of (kind, message, step, total) updates, live or as plain lines."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.start = time.monotonic()
        self.step = ""
        self.last = ""
        self._live: Live | None = None
        self._quarters: dict[str, int] = {}

    def _render(self) -> Text:
        text = Text(f"{self.title}  ", style="bold")
        text.append(f"[{_elapsed(self.start)}] ", style="cyan")
        text.append(self.step)
        if self.last:
            text.append("\n  " + self.last[-160:], style="dim")
        return text

    def show(self, event: Event) -> None:
        self.update(event.kind, event.message, event.step, event.total)

    def say(self, message: str) -> None:
        """A phase line: for core functions that report through a ``say(message)`` callback."""
        self.update("phase", message)

    def update(self, kind: str, message: str, step: int | None = None, total: int | None = None) -> None:
        message = clean(message)
        if kind == "step" and step is not None:
            self.step = f"step {step}/{total}: {message[:120]}"
            self.last = ""
            line = self.step
        elif kind == "phase":
            self.step = message
            line = message
        elif kind == "bytes" and step is not None:
            self._bytes(message, step, total or 0)
            return
        else:
            self.last = message
            line = "  " + message
        if self._live is not None:
            self._live.update(self._render())
        elif kind in ("step", "phase", "download"):
            console.print(f"[{_elapsed(self.start):>6}] {line}", markup=False, highlight=False)

    def _bytes(self, label: str, done: int, total: int) -> None:
        """A byte count as a bar on a terminal; in a log, one line per quarter. Without a total
        (a download whose size nobody said), a count: in a log, one line per gigabyte."""
        if total:
            share = min(done / total, 1.0)
            text = f"{label}  {'#' * int(share * 30):<30}  {done / 1e9:.2f}/{total / 1e9:.2f} GB"
            mark, first = int(share * 4), -1  # quarters, the first one at 0
        else:
            text = f"{label}  {done / 1e9:.2f} GB"
            mark, first = int(done / 1e9), 0  # whole gigabytes, the first one at 1
        if self._live is not None:
            self.last = text
            self._live.update(self._render())
        elif mark > self._quarters.get(label, first):
            self._quarters[label] = mark
            console.print(f"[{_elapsed(self.start):>6}]   {text}", markup=False, highlight=False)

    @contextmanager
    def running(self) -> Iterator[Progress]:
        if interactive():
            with Live(self._render(), console=console, refresh_per_second=4, transient=True) as live:
                self._live = live
                try:
                    yield self
                finally:
                    self._live = None
        else:
            yield self


def show_job(title: str, events: Iterable[Event], progress: Progress | None = None) -> Any:
    """Show a job's events under a progress display titled ``title`` (or ``progress``, already
    running); return the job's result."""
    if progress is not None:
        return follow(events, progress.show)
    progress = Progress(title)
    with progress.running():
        return follow(events, progress.show)


def print_lines(lines: Iterable[str]) -> None:
    for line in lines:
        out.print(line, markup=False)


def flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
