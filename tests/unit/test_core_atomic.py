"""`-o FILE` writes only regular files, and an unwritable place is a usage error naming it."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from envkit.atomic import write_text
from envkit.cli import app as cli_module
from envkit.errors import UsageError


def test_output_refuses_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="FIFO") as caught:
        write_text(fifo, "x")
    assert caught.value.exit_code == 2
    assert fifo.is_fifo()


def test_output_refuses_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(UsageError, match="socket"):
            write_text(path, "x")
        assert path.is_socket()
    finally:
        server.close()


def _private_null(tmp_path: Path) -> Path:
    """A character device of the test's own (the null device's numbers), never the host's /dev/null:
    if the check regressed, the test must not replace a device the machine depends on."""
    device = tmp_path / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return device


def test_output_refuses_a_character_device_and_a_link_to_one(tmp_path: Path) -> None:
    device = _private_null(tmp_path)
    with pytest.raises(UsageError, match="character device"):
        write_text(device, "x")
    link = tmp_path / "link"
    link.symlink_to(device)
    with pytest.raises(UsageError, match="character device"):
        write_text(link, "x")
    assert link.is_symlink()
    assert device.is_char_device()


def test_output_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directory"):
        write_text(tmp_path, "x")


def test_output_refuses_an_unwritable_place_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "sub" / "out.txt"
    with pytest.raises(UsageError) as caught:
        write_text(target, "x")
    assert str(target) in str(caught.value)
    assert caught.value.exit_code == 2


def test_render_output_to_a_device_or_unwritable_place_is_exit_2(tmp_path: Path) -> None:
    device = _private_null(tmp_path)
    assert cli_module.main(["render", "pytorch-cuda:2.8", "-o", str(device)]) == 2
    assert device.is_char_device()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_module.main(["render", "pytorch-cuda:2.8", "-o", str(blocker / "Dockerfile")]) == 2
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert cli_module.main(["render", "pytorch-cuda:2.8", "-o", str(fifo)]) == 2


def test_regular_outputs_still_replace_atomically(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
