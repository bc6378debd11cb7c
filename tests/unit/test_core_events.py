"""The one progress event and the one loop that shows a job's events."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from envkit.events import Event, done, drain, follow, relay


def job(cleaned: list[str]) -> Iterator[Event]:
    yield Event("phase", "first")
    yield Event("step", "RUN x", 1, 2)
    yield done("finished", 42)
    cleaned.append("after done")


def test_follow_shows_every_event_but_done_and_returns_the_result() -> None:
    shown: list[Event] = []
    cleaned: list[str] = []
    assert follow(job(cleaned), shown.append) == 42
    assert [(e.kind, e.message, e.step, e.total) for e in shown] == [("phase", "first", None, None),
                                                                     ("step", "RUN x", 1, 2)]
    assert cleaned == ["after done"]  # read to the end: the job's cleanup ran


def test_a_job_without_done_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        drain(iter([Event("phase", "only")]))


def test_relay_passes_a_sub_jobs_events_and_hands_back_its_result() -> None:
    def outer() -> Iterator[Event]:
        value = yield from relay(job([]))
        yield done("outer", value + 1)

    shown: list[str] = []
    assert follow(outer(), lambda e: shown.append(e.message)) == 43
    assert shown == ["first", "RUN x"]


def test_cli_shows_phases_as_plain_lines_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from envkit.cli import console

    assert console.show_job("title", job([])) == 42
    err = capsys.readouterr().err
    assert "first" in err and "step 1/2: RUN x" in err


def test_bootstrap_stops_mmdebstrap_when_the_reader_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.image import base

    started: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    def fake_popen(cmd: list[str], **kwargs: object) -> subprocess.Popen[str]:
        script = "import time\nprint('line 1', flush=True)\ntime.sleep(60)\n"
        proc = real_popen([sys.executable, "-c", script], **kwargs)  # type: ignore[call-overload]
        started.append(proc)
        return proc

    monkeypatch.setattr(base.shutil, "which", lambda name: "/usr/bin/mmdebstrap")
    monkeypatch.setattr(base.subprocess, "Popen", fake_popen)
    plan = base.parse_base_name("debian:bookworm", mirror=None, source_date_epoch=0)
    events = base.bootstrap_events(plan, tmp_path / "rootfs.tar")
    assert next(events) == Event("log", "line 1")
    events.close()  # the caller gave up (Ctrl-C while showing the line)
    assert started[0].poll() is not None
