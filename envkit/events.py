"""The one progress event: what long-running core code yields and the CLI shows.

Core code never prints. A long job is a generator of ``Event``; the last one has kind ``done`` and
carries the job's result in ``data["result"]``. ``envkit.cli.console.follow`` is the one loop that
shows the others and returns that result.
"""

from __future__ import annotations

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
