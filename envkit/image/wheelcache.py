"""The host's wheel cache: every locked wheel by its sha256, fetched once, checked on every use.

Layout: ``<state>/wheels/<sha256>/<file name>``. A wheel gets in only after its bytes matched one
of the hashes its lock allows, and is checked again each time a build takes it, so a file changed
in the cache is refused (and fetched again), never built. Builds, `envkit bundle` and offline
restores all read from here: a second build of the same lock downloads nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from envkit import platforms
from envkit.digests import sha256_file
from envkit.errors import IntegrityError, NetworkError, UsageError
from envkit.events import Event, done
from envkit.image import wheelfetch
from envkit.lock.python import parse_locked
from envkit.state import state_root

# The newest glibc of each Debian suite: the manylinux tags its Python accepts go down from there.
GLIBC_MINOR = {"bullseye": 31, "bookworm": 36, "trixie": 41}


def wheel_platforms(platform: str, suite: str) -> list[str]:
    """pip ``--platform`` tags for an image, best first (as uv prefers them in the online build)."""
    return platforms.manylinux_platforms(platforms.machine(platform), (2, GLIBC_MINOR.get(suite, 28)))


def _isolated_env() -> dict[str, str]:
    """pip asks only the indexes envkit chose: its configuration files and PIP_* variables (an
    extra index, local find-links, constraints) are left out. Proxy variables stay."""
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def download_wheels(
    requirements: Path, dest: Path, *, python: str, platform: str, suite: str,
    index_args: list[str] | None = None,
    work: Path | None = None,
) -> None:
    """pip downloads the exact wheels a hashed requirements file pins, for the image's platform.

    ``index_args`` name a mirror (``--index-url``...); the hashes are checked whatever serves them.
    ``work`` is pip's temporary directory, where its downloads grow (the progress shown is read
    from there)."""
    abi = "cp" + python.replace(".", "")
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
        "--require-hashes", "--python-version", python, "--implementation", "cp",
        "--abi", abi, "--abi", "abi3", "--abi", "none", "-d", str(dest), "-r", str(requirements),
    ]
    for tag in wheel_platforms(platform, suite):
        command += ["--platform", tag]
    command += index_args or []
    if "--cert" not in command:
        from envkit.image.context import detect_ca_bundle

        ca = detect_ca_bundle(None)
        if ca is not None:
            command += ["--cert", str(ca)]
    env = _isolated_env()
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(work)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        if "No module named pip" in result.stderr:
            raise UsageError("envkit downloads wheels with pip, which this Python lacks",
                             hint="install pip beside envkit")
        if "DO NOT MATCH THE HASHES" in result.stderr.upper():
            raise IntegrityError(_hash_message(result.stderr), details=tail,
                                 hint="the index served other bytes than the lock pinned; check the index")
        raise NetworkError("pip could not download the locked wheels", details=tail)




def _pip_download(requirements: str, missing: list[str], locked: dict[str, tuple[str, list[str]]],
                  found: dict[str, Path], root: Path, *, python: str, platform: str, suite: str,
                  index_args: list[str] | None, label: str) -> Iterator[Event]:
    """pip fetches `missing` (indexes envkit cannot read itself: find-links, no index), four
    processes at a time; each wheel is checked against the lock and stored in the cache."""
    with tempfile.TemporaryDirectory(prefix="envkit-wheels-", dir=root) as tmp:
        shares = _shares(missing)

        def fetch(index: int) -> None:
            request = Path(tmp) / f"requirements-{index}.txt"
            request.write_text(_subset(requirements, set(shares[index])))
            download_wheels(request, Path(tmp) / "in", python=python, platform=platform, suite=suite,
                            index_args=index_args, work=Path(tmp) / "work" / str(index))

        with ThreadPoolExecutor(max_workers=len(shares)) as pool:
            futures = [pool.submit(fetch, index) for index in range(len(shares))]
            while wait(futures, timeout=PROGRESS_EVERY).not_done:
                done_bytes = _bytes_under(Path(tmp) / "work")
                yield Event("bytes", f"{label}: downloading", step=done_bytes, total=0)
            for future in futures:
                future.result()  # the first failure, if any
        for path in sorted((Path(tmp) / "in").glob("*.whl")):
            digest = sha256_file(path)
            owner = next((n for n in missing if digest in locked[n][1]), None)
            if owner is None:
                raise IntegrityError(f"hash mismatch for {path.name}: {digest} is not in the lock")
            folder = root / digest
            folder.mkdir(exist_ok=True)
            target = folder / path.name
            os.replace(path, target)
            found[owner] = target


def cache_root() -> Path:
    return state_root() / "wheels"


@dataclass(frozen=True)
class CachedWheels:
    """The locked set, each wheel checked: file name -> path, and file name -> sha256."""

    paths: dict[str, Path]
    downloaded: int
    downloaded_bytes: int

    def __or__(self, other: CachedWheels) -> CachedWheels:
        return CachedWheels({**self.paths, **other.paths}, self.downloaded + other.downloaded,
                            self.downloaded_bytes + other.downloaded_bytes)

    @property
    def digests(self) -> dict[str, str]:
        """File name -> sha256: the cache keeps each wheel in a folder named by its digest."""
        return {name: path.parent.name for name, path in self.paths.items()}


def _find(root: Path, hashes: list[str]) -> Path | None:
    for digest in hashes:
        folder = root / digest
        if folder.is_dir():
            files = [p for p in folder.iterdir() if p.name.endswith(".whl") and p.is_file()]
            if len(files) == 1:
                return files[0]
    return None


def ensure_wheels(
    requirements: str,
    *,
    python: str,
    platform: str,
    suite: str,
    index_args: list[str] | None = None,
    root: Path | None = None,
    only: set[str] | None = None,
    label: str = "wheels",
) -> Iterator[Event]:
    """Make sure every wheel of `requirements` (or of the names in `only`) is in the cache,
    downloading what is missing.

    Yields progress events; the last is ``done`` carrying a CachedWheels (`envkit.events.done`).
    """
    root = root or cache_root()
    locked = {name: pins for name, pins in parse_locked(requirements).items() if only is None or name in only}
    found: dict[str, Path] = {}
    missing: list[str] = []
    candidates = {name: _find(root, hashes) for name, (_version, hashes) in sorted(locked.items())}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:  # hashlib hashes large files off the GIL
        digests = dict(zip(candidates, pool.map(lambda p: sha256_file(p) if p else "", candidates.values()),
                           strict=True))
    for name, path in candidates.items():
        if path is not None and digests[name] in locked[name][1]:
            found[name] = path
        else:
            if path is not None:
                shutil.rmtree(path.parent, ignore_errors=True)  # changed in the cache: fetch it again
            missing.append(name)
    yield Event("phase", f"{label}: {len(found)} of {len(locked)} in the host cache"
                + (f", downloading {len(missing)}" if missing else ""))
    downloaded_bytes = 0
    if missing:
        root.mkdir(parents=True, exist_ok=True)
        direct = wheelfetch.plan_direct({name: locked[name] for name in missing}, index_args or [], python,
                                        wheel_platforms(platform, suite))
        if direct is not None:
            wanted, fetcher = direct
            downloads = wheelfetch.Downloads(wanted, fetcher, root, WORKERS, _shares)
            try:
                while wait(downloads.futures, timeout=PROGRESS_EVERY).not_done:
                    yield Event("bytes", f"{label}: downloading", step=downloads.done_bytes,
                                total=downloads.total_bytes)
                for future in downloads.futures:
                    future.result()  # the first failure, if any
            finally:
                downloads.close()
            for name, path in downloads.paths.items():
                found[name] = path
                downloaded_bytes += path.stat().st_size
        else:
            yield from _pip_download(requirements, missing, locked, found, root, python=python,
                                     platform=platform, suite=suite, index_args=index_args, label=label)
            downloaded_bytes = sum(found[name].stat().st_size for name in missing if name in found)
        still = [n for n in missing if n not in found]
        if still:
            raise IntegrityError(f"the download lacks {', '.join(still[:8])}")
        yield Event("download", f"{label}: downloaded {len(missing)} ({downloaded_bytes / 1e9:.2f} GB)")
    paths = {p.name: p for p in found.values()}
    wheels = CachedWheels(paths, len(missing), downloaded_bytes)
    yield done("wheels ready", wheels)


# Wheels are hashed, and fetched, this many at a time: pip downloads one file after another, so
# the locked set is shared among as many pip processes, the large wheels spread over all of them.
WORKERS = 4


PROGRESS_EVERY = 0.5  # seconds between two reports of the bytes downloaded so far


def _bytes_under(folder: Path) -> int:
    """Bytes in the files under `folder` now (pip's downloads in progress; they come and go)."""
    total = 0
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(parent, name)).st_size
            except OSError:
                continue
    return total


def is_large(name: str) -> bool:
    """torch's and NVIDIA's wheels: the gigabytes of a locked set, and its bottom layers."""
    return name.startswith("nvidia-") or name in ("torch", "triton", "torchvision", "pytorch-triton")


def _shares(names: list[str]) -> list[list[str]]:
    """`names` dealt out to at most WORKERS downloads: the large wheels first, one to each in turn,
    then the rest."""
    large = [n for n in names if is_large(n)]
    order = large + [n for n in names if n not in large]
    shares: list[list[str]] = [[] for _ in range(min(WORKERS, len(order)))]
    for index, name in enumerate(order):
        shares[index % len(shares)].append(name)
    return shares


# pip's report of a wheel whose bytes match none of the lock's hashes (one block per package).
_PIP_MISMATCH = re.compile(
    r"^\s+(\S+==\S+) from .*:\s*$\n"
    r"\s+Expected sha256 (\w+)\n"
    r"(?:\s+(?:Expected\s+)?or(?: sha256)? \w+\n)*"  # the other hashes the lock allows
    r"\s+Got\s+(\w+)",
    re.MULTILINE,
)


def _hash_message(stderr: str) -> str:
    found = _PIP_MISMATCH.findall(stderr)
    if not found:
        return "hash mismatch for a downloaded wheel: it does not match the lock's hash"
    return "; ".join(f"hash mismatch for {req}: expected sha256:{want}, computed sha256:{got}"
                     for req, want, got in found)


def _subset(requirements: str, names: set[str]) -> str:
    """The hashed requirement blocks of `names` only."""
    from envkit.lock.python import normalise_name

    out: list[str] = []
    keep = False
    for raw in requirements.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "--")):
            keep = normalise_name(line.split("==", 1)[0].split()[0]) in names
        if keep and line and not line.startswith("#"):
            out.append(raw)
    return "\n".join(out) + "\n"
