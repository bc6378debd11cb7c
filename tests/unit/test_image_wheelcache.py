"""The host wheel cache: fetched once by pip (from a local index here), checked on every use."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from envkit.errors import IntegrityError
from envkit.events import follow
from envkit.image.wheelcache import ensure_wheels
from tests.unit.test_image_pylayers import make_wheel


def _requirements(paths: list[Path]) -> str:
    lines = []
    for path in paths:
        name, version = path.name.split("-")[:2]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    return "".join(lines)


def _ensure(text: str, index: Path, cache: Path):  # type: ignore[no-untyped-def]
    events: list[str] = []
    wheels = follow(
        ensure_wheels(text, python="3.11", platform="linux/amd64", suite="bookworm",
                      index_args=["--no-index", "--find-links", str(index)], root=cache),
        lambda e: events.append(e.message),
    )
    return wheels, events


def test_a_second_build_downloads_nothing_and_a_changed_file_is_fetched_again(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    paths = [make_wheel(index, "alpha", "1.0", {"alpha/__init__.py": b"A\n"}),
             make_wheel(index, "beta", "2.0", {"beta/__init__.py": b"B\n"})]
    text = _requirements(paths)
    cache = tmp_path / "cache"
    first, events = _ensure(text, index, cache)
    assert first.downloaded == 2 and "0 of 2 in the host cache, downloading 2" in events[0]
    for path in paths:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert first.digests[path.name] == digest
        assert first.paths[path.name] == cache / digest / path.name
    second, events = _ensure(text, index, cache)
    assert second.downloaded == 0 and "2 of 2 in the host cache" in events[0]
    # A cached file someone changed is never used: it is fetched again.
    cached = first.paths[paths[0].name]
    cached.write_bytes(cached.read_bytes() + b"\0")
    third, _ = _ensure(text, index, cache)
    assert third.downloaded == 1
    assert hashlib.sha256(third.paths[paths[0].name].read_bytes()).hexdigest() == first.digests[paths[0].name]


def test_an_index_serving_other_bytes_is_a_hash_mismatch(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    path = make_wheel(index, "alpha", "1.0", {"alpha/__init__.py": b"A\n"})
    text = _requirements([path])
    make_wheel(index, "alpha", "1.0", {"alpha/__init__.py": b"tampered\n"})  # same file name, other bytes
    with pytest.raises(IntegrityError, match="hash mismatch for alpha==1.0"):
        _ensure(text, index, tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*.whl"))


def test_pips_report_of_several_allowed_hashes_names_the_package_and_both_digests() -> None:
    from envkit.image.wheelcache import _hash_message

    report = (
        "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"
        "    filelock==4.3.1 from https://files.example/filelock-4.3.1-py3-none-any.whl (from -r r.txt (line 1)):\n"
        "        Expected sha256 " + "0" * 64 + "\n"
        "        Expected     or " + "1" * 64 + "\n"
        "             Got        " + "a" * 64 + "\n"
    )
    assert _hash_message(report) == (
        f"hash mismatch for filelock==4.3.1: expected sha256:{'0' * 64}, computed sha256:{'a' * 64}"
    )


def test_the_large_wheels_are_spread_over_the_downloads_and_only_asks_for_some() -> None:
    from envkit.image.wheelcache import WORKERS, _shares

    names = ["absl-py", "nvidia-cublas-cu12", "torch", "nvidia-cudnn-cu12", "triton", "nvidia-nccl-cu12", "six"]
    shares = _shares(names)
    assert len(shares) == WORKERS and sorted(n for share in shares for n in share) == sorted(names)
    assert all(share[0] in ("nvidia-cublas-cu12", "torch", "nvidia-cudnn-cu12", "triton") for share in shares)
    assert _shares(["six"]) == [["six"]]


def test_only_names_a_part_of_the_lock(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    paths = [make_wheel(index, "alpha", "1.0", {"alpha/__init__.py": b"A\n"}),
             make_wheel(index, "beta", "2.0", {"beta/__init__.py": b"B\n"})]
    events: list[str] = []
    wheels = follow(
        ensure_wheels(_requirements(paths), python="3.11", platform="linux/amd64", suite="bookworm",
                      index_args=["--no-index", "--find-links", str(index)], root=tmp_path / "cache",
                      only={"beta"}, label="some wheels"),
        lambda e: events.append(e.message),
    )
    assert list(wheels.paths) == [paths[1].name] and wheels.downloaded == 1
    assert events[0] == "some wheels: 0 of 1 in the host cache, downloading 1"


def test_a_download_without_a_total_is_a_count_one_line_per_gigabyte_in_a_log(capsys) -> None:  # type: ignore[no-untyped-def]
    from envkit.cli.console import Progress

    progress = Progress("build")
    for done in (0, 400_000_000, 1_100_000_000, 1_500_000_000, 2_300_000_000):
        progress.update("bytes", "wheels: downloading", step=done, total=0)
    lines = [line for line in capsys.readouterr().err.splitlines() if "downloading" in line]
    assert [line.split("downloading")[1].strip() for line in lines] == ["1.10 GB", "2.30 GB"]


def test_a_layer_with_a_total_is_one_line_per_quarter_in_a_log(capsys) -> None:  # type: ignore[no-untyped-def]
    from envkit.cli.console import Progress

    progress = Progress("build")
    for done in (0, 200, 300, 500, 600, 1000):
        progress.update("bytes", "python-cuda", step=done * 1_000_000, total=1_000_000_000)
    lines = [line for line in capsys.readouterr().err.splitlines() if "python-cuda" in line]
    assert [line.rsplit(None, 2)[-2] for line in lines] == ["0.00/1.00", "0.30/1.00", "0.50/1.00", "1.00/1.00"]
