"""The one progress event: what long-running core code yields and the CLI shows.

Core code never prints. A long job is a generator of ``Event``; the last one has kind ``done`` and
carries the job's result in ``data["result"]``. ``follow`` is the one loop that hands the others
to whoever shows them (``envkit.cli.console.show_job`` for the CLI) and returns that result.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str  # "phase", "step", "log", "download", "done"
    message: str
    step: int | None = None
    total: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


def done(message: str, result: Any) -> Event:
    """The last event of a job, carrying its result."""
    return Event("done", message, data={"result": result})


Show = Callable[[Event], None]


def phases(show: Show | None) -> Callable[[str], None]:
    """For a function that takes ``show`` and reports in plain messages: each message becomes a
    ``phase`` event passed to ``show`` (or is dropped when nobody shows them)."""
    if show is None:
        return lambda _message: None
    return lambda message: show(Event("phase", message))



def follow(events: Iterable[Event], show: Callable[[Event], None] | None = None) -> Any:
    """The one loop over a job's events: pass each to ``show``, return the result ``done`` carries.

    The iterator is read to its end, so a job's cleanup after ``done`` still runs.
    """
    result, finished = None, False
    for event in events:
        if event.kind == "done":
            result, finished = event.data.get("result"), True
        elif show is not None:
            show(event)
    if not finished:
        raise RuntimeError("the job ended without a result")
    return result


def drain(events: Iterable[Event]) -> Any:
    """Run a job to its end without showing it (for callers that show nothing); its result."""
    return follow(events)


def relay(events: Iterable[Event]) -> Generator[Event, None, Any]:
    """For a job made of sub-jobs: ``x = yield from relay(sub_job)`` passes the sub-job's events on
    and gives its result to the caller instead of passing its ``done`` on."""
    result = None
    for event in events:
        if event.kind == "done":
            result = event.data.get("result")
        else:
            yield event
    return result
