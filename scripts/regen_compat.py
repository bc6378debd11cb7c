#!/usr/bin/env python3
"""Regenerate the derivable compatibility rows from PyPI wheel metadata.

Writes ``envkit/data/compat/releases.json``: for every torch release on PyPI from ``--since`` on,
the Python versions its Linux x86_64 wheels are built for (their cp tags), the CUDA, cuDNN, NCCL
and triton versions the PyPI default wheel pins in its ``Requires-Dist``, and the torchvision and
torchaudio releases paired with it through their own metadata's torch requirement.

Only that file is written. The hand-entered files beside it (``variants.json``, ``archs.json``,
``drivers.json``, ``debian.json``) are never touched; the script reports releases they do not
cover yet, so whoever refreshes the data knows which hand rows to add.

Metadata comes from the PyPI simple API (PEP 691 JSON) and each wheel's ``.metadata`` file
(PEP 658). Where PyPI has no ``.metadata`` for a wheel, the METADATA member is read straight out
of the wheel with HTTP range requests, so no wheel is downloaded whole.

    python scripts/regen_compat.py            # rewrite releases.json
    python scripts/regen_compat.py --check    # exit 1 if releases.json is out of date
"""

from __future__ import annotations

import argparse
import datetime as _dt
import email.parser
import io
import json
import mmap
import re
import shutil
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "envkit" / "data" / "compat"
RELEASES_FILE = DATA_DIR / "releases.json"
SIMPLE_URL = "https://pypi.org/simple/{project}/"
USER_AGENT = "envkit-regen-compat"
TIMEOUT_S = 60
COMPANIONS = ("torchvision", "torchaudio")
REFERENCE_PYTHON = "3.11"

# Wheel file name: name-version(-build)?-pytag-abitag-platform.whl
WHEEL_RE = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)
CPYTHON_TAG_RE = re.compile(r"^cp(?P<major>\d)(?P<minor>\d+)$")

# The packages whose exact pins in torch's metadata say which CUDA build the wheel is.
CUDA_RUNTIME_PACKAGES = re.compile(r"^(nvidia-cuda-runtime(-cu\d+)?|cuda-toolkit)$")
CUDNN_PACKAGES = re.compile(r"^nvidia-cudnn(-cu\d+)?$")
NCCL_PACKAGES = re.compile(r"^nvidia-nccl(-cu\d+)?$")


# --------------------------------------------------------------------------- HTTP


def _open(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return response.read()


def simple_files(project: str) -> list[dict[str, Any]]:
    body = _open(SIMPLE_URL.format(project=project), {"Accept": "application/vnd.pypi.simple.v1+json"})
    return json.loads(body)["files"]


class _HttpRangeFile(io.RawIOBase):
    """A seekable read-only file over HTTP range requests, enough for ``zipfile``."""

    def __init__(self, url: str, size: int) -> None:
        self.url = url
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        if n == 0 or self.pos >= self.size:
            return b""
        end = min(self.pos + n, self.size) - 1
        data = _open(self.url, {"Range": f"bytes={self.pos}-{end}"})
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def wheel_metadata(file: dict[str, Any]) -> str:
    """The wheel's METADATA text: PEP 658 ``.metadata`` first, else out of the wheel by range."""
    try:
        return _open(file["url"] + ".metadata").decode("utf-8")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    with zipfile.ZipFile(io.BufferedReader(_HttpRangeFile(file["url"], int(file["size"])), 1 << 20)) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name).decode("utf-8")


# --------------------------------------------------------------------------- GPU architectures

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
FATBIN_KINDS = {1: "compute", 2: "sm"}  # entry kind 1 is PTX, 2 is a cubin (ELF)
# An architecture of the build's TORCH_CUDA_ARCH_LIST is in every kernel module; a handful of
# modules add architecture-specific kernels (sm_89, sm_103, ...) that the build does not target.
ARCH_SHARE = 0.5


def fatbin_archs(path: Path) -> list[str]:
    """The ``torch.cuda.get_arch_list()`` a shared library was built for, read from its fatbins.

    Each fatbin container starts with magic 0xBA55ED50, version 1 and a 16-byte header; its entries
    carry their kind at offset 0, header size at 4, payload size at 8 and the SM number at 28.
    """
    modules = 0
    counts: dict[tuple[str, int], int] = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = mm.find(FATBIN_MAGIC)
        while pos != -1:
            version, header_size, fat_size = struct.unpack_from("<HHQ", mm, pos + 4)
            if version != 1 or header_size != 16:
                pos = mm.find(FATBIN_MAGIC, pos + 4)
                continue
            modules += 1
            seen: set[tuple[str, int]] = set()
            entry, end = pos + header_size, pos + header_size + fat_size
            while entry + 32 <= end:
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", mm, entry)
                (sm,) = struct.unpack_from("<I", mm, entry + 28)
                if kind in FATBIN_KINDS:
                    seen.add((FATBIN_KINDS[kind], sm))
                if entry_header == 0:
                    break
                entry += entry_header + payload
            for key in seen:
                counts[key] = counts.get(key, 0) + 1
            pos = mm.find(FATBIN_MAGIC, max(end, pos + 4))
    chosen = [key for key, n in counts.items() if modules and n / modules >= ARCH_SHARE]
    # get_arch_list() order: cubins by SM number, then PTX.
    return [f"{kind}_{sm}" for kind, sm in sorted(chosen, key=lambda k: (k[0] != "sm", k[1]))]


def wheel_archs(file: dict[str, Any], member: str = "torch/lib/libtorch_cuda.so") -> list[str]:
    """Read one library out of a wheel by HTTP range (it is not kept) and list its GPU archs."""
    raw = io.BufferedReader(_HttpRangeFile(file["url"], int(file["size"])), 8 << 20)
    with zipfile.ZipFile(raw) as zf, tempfile.TemporaryDirectory() as tmp:
        if member not in zf.namelist():
            return []
        target = Path(tmp) / "lib.so"
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
        return fatbin_archs(target)


# --------------------------------------------------------------------------- parsing


def parse_wheel_name(filename: str) -> dict[str, str] | None:
    match = WHEEL_RE.match(filename)
    return match.groupdict() if match else None


def is_linux_x86_64(platform_tag: str) -> bool:
    return any(p.startswith(("manylinux", "linux")) and p.endswith("x86_64") for p in platform_tag.split("."))


def python_of(py_tag: str, abi_tag: str) -> tuple[str, bool] | None:
    """``("3.13", free_threaded)`` for a CPython wheel tag pair, None for anything else."""
    match = CPYTHON_TAG_RE.match(py_tag)
    if not match:
        return None
    return f"{match['major']}.{match['minor']}", abi_tag.endswith("t")


Wheel = tuple[dict[str, Any], dict[str, str]]


def linux_wheels(files: Iterable[dict[str, Any]], version: str) -> list[Wheel]:
    out = []
    for file in files:
        parts = parse_wheel_name(file["filename"])
        if not parts or parts["version"] != version or file.get("yanked"):
            continue
        if is_linux_x86_64(parts["plat"]):
            out.append((file, parts))
    return out


def versions_of(files: Iterable[dict[str, Any]]) -> set[Version]:
    found = set()
    for file in files:
        parts = parse_wheel_name(file["filename"])
        if parts:
            version = Version(parts["version"])
            if not version.is_prerelease and not version.is_devrelease and not version.local:
                found.add(version)
    return found


def requirements(metadata_text: str, python: str) -> dict[str, str]:
    """Requires-Dist that apply on Linux x86_64 without extras: name -> specifier ("" for none)."""
    message = email.parser.Parser().parsestr(metadata_text, headersonly=True)
    env = default_environment()
    env.update(
        {
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "sys_platform": "linux",
            "os_name": "posix",
            "python_version": python,
            "python_full_version": f"{python}.0",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "extra": "",
        }
    )
    found: dict[str, str] = {}
    for line in message.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        found[req.name.lower()] = str(req.specifier)
    return found


def exact_pin(specifier: str | None) -> str | None:
    if not specifier:
        return None
    exact = [s.version for s in SpecifierSet(specifier) if s.operator in ("==", "===")]
    return exact[0] if exact else None


def cuda_facts(reqs: dict[str, str]) -> dict[str, str | None]:
    def first(pattern: re.Pattern[str]) -> tuple[str, str] | tuple[None, None]:
        for name, specifier in sorted(reqs.items()):
            version = exact_pin(specifier)
            if pattern.match(name) and version:
                return name, version
        return None, None

    runtime_pkg, runtime = first(CUDA_RUNTIME_PACKAGES)
    cudnn_pkg, cudnn = first(CUDNN_PACKAGES)
    nccl_pkg, nccl = first(NCCL_PACKAGES)
    return {
        "cuda": ".".join(runtime.split(".")[:2]) if runtime else "cpu",
        "cuda_pin": f"{runtime_pkg}=={runtime}" if runtime else None,
        "cudnn": cudnn,
        "cudnn_package": cudnn_pkg,
        "nccl": nccl,
        "nccl_package": nccl_pkg,
        "triton": f"triton{reqs['triton']}" if "triton" in reqs else None,
    }


def _python_key(python: str) -> tuple[int, ...]:
    return tuple(int(p) for p in python.split("."))


def _wheel_python_key(parts: dict[str, str]) -> tuple[int, ...]:
    parsed = python_of(parts["py"], parts["abi"])
    return _python_key(parsed[0]) if parsed else (0,)


# --------------------------------------------------------------------------- collection


def release_facts(files: list[dict[str, Any]], version: str) -> dict[str, Any] | None:
    wheels = linux_wheels(files, version)
    if not wheels:
        return None
    pythons: set[str] = set()
    free_threaded: set[str] = set()
    universal = False  # a py3-none wheel: any Python that Requires-Python admits
    for _, parts in wheels:
        for py_tag in parts["py"].split("."):
            parsed = python_of(py_tag, parts["abi"])
            if parsed:
                (free_threaded if parsed[1] else pythons).add(parsed[0])
            elif py_tag.startswith("py3") and parts["abi"] in ("none", "abi3"):
                universal = True
    regular = [(f, p) for f, p in wheels if (py := python_of(p["py"], p["abi"])) and not py[1]]
    chosen, _ = max(regular or wheels, key=lambda fp: _wheel_python_key(fp[1]))
    metadata_text = wheel_metadata(chosen)
    message = email.parser.Parser().parsestr(metadata_text, headersonly=True)
    # Markers are evaluated for Debian bookworm's Python where the release has it, so pins that only
    # apply to some Pythons (triton on 3.13 in 2.5, for one) are read as the catalog images see them.
    ordered = sorted(pythons, key=_python_key)
    marker_python = REFERENCE_PYTHON if REFERENCE_PYTHON in pythons or not ordered else ordered[-1]
    return {
        "version": version,
        "uploaded": min(f.get("upload-time", "") for f, _ in wheels)[:10],
        "requires_python": message.get("Requires-Python"),
        "python": ordered,
        "python_free_threaded": sorted(free_threaded, key=_python_key),
        "universal": universal,
        "metadata_from": chosen["filename"],
        "wheel": chosen,
        "requirements": requirements(metadata_text, marker_python),
    }


def pair(torch_version: str, companions: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    """The companion release for a torch release, and how it was chosen.

    An exact ``torch==X`` pin decides. Without one, the newest release whose torch requirement
    admits X is taken, which is what a resolver (``uv pip compile torch==X torchvision``) picks.
    """
    exact = [c for c in companions if exact_pin(c["requirements"].get("torch")) == torch_version]
    if exact:
        return max(exact, key=lambda c: Version(c["version"])), "torch pinned with == in its METADATA"
    target = Version(torch_version)
    admitting = [
        c
        for c in companions
        if not exact_pin(c["requirements"].get("torch"))
        and SpecifierSet(c["requirements"].get("torch", "")).contains(target)
    ]
    if not admitting:
        return None, None
    chosen = max(admitting, key=lambda c: Version(c["version"]))
    spec = chosen["requirements"].get("torch") or "no torch requirement"
    return chosen, f"newest release whose METADATA admits it ({spec})"


def companion_pythons(companion: dict[str, Any] | None, torch_pythons: list[str]) -> list[str]:
    if companion is None:
        return []
    admitted = SpecifierSet(companion["requires_python"] or "")
    return [
        p
        for p in torch_pythons
        if p in companion["python"] or (companion["universal"] and admitted.contains(f"{p}.0"))
    ]


def _previous_archs(previous: dict[str, Any] | None) -> dict[str, list[str]]:
    """Arch lists already derived, by wheel sha256: the same file need not be read again."""
    found: dict[str, list[str]] = {}
    for row in (previous or {}).get("releases", []):
        default = row.get("pypi_default", {})
        if default.get("wheel_sha256") and default.get("arch_list_from"):
            found[default["wheel_sha256"]] = default["arch_list"]
    return found


def collect(
    since: Version, workers: int = 8, *, archs: bool = True, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    torch_files = simple_files("torch")
    torch_versions = sorted(v for v in versions_of(torch_files) if v >= since)
    with ThreadPoolExecutor(workers) as pool:
        torch_facts = [f for f in pool.map(lambda v: release_facts(torch_files, str(v)), torch_versions) if f]
        # Companion releases from a month before the oldest torch release on are enough to pair.
        oldest = _dt.date.fromisoformat(torch_facts[0]["uploaded"]) - _dt.timedelta(days=31)
        companions: dict[str, list[dict[str, Any]]] = {}
        for name in COMPANIONS:
            files = simple_files(name)
            candidates = [
                str(v)
                for v in sorted(versions_of(files))
                if (wheels := linux_wheels(files, str(v)))
                and min(f.get("upload-time", "") for f, _ in wheels)[:10] >= oldest.isoformat()
            ]
            facts = pool.map(lambda v, fs=files: release_facts(fs, v), candidates)
            companions[name] = [f for f in facts if f]

    known_archs = _previous_archs(previous)
    missing = [
        f["wheel"] for f in torch_facts if archs and f["wheel"]["hashes"]["sha256"] not in known_archs
    ]
    with ThreadPoolExecutor(3) as pool:  # each job streams a few hundred MB
        for wheel, arch_list in zip(missing, pool.map(wheel_archs, missing), strict=True):
            known_archs[wheel["hashes"]["sha256"]] = arch_list

    releases = []
    for fact in torch_facts:
        row: dict[str, Any] = {
            "torch": fact["version"],
            "uploaded": fact["uploaded"],
            "requires_python": fact["requires_python"],
            "python": fact["python"],
            "python_free_threaded": fact["python_free_threaded"],
        }
        for name in COMPANIONS:
            companion, how = pair(fact["version"], companions[name])
            row[name] = companion["version"] if companion else None
            row[f"{name}_python"] = companion_pythons(companion, fact["python"])
            row[f"{name}_paired_by"] = how
        default = cuda_facts(fact["requirements"])
        sha256 = fact["wheel"]["hashes"]["sha256"]
        default["arch_list"] = known_archs.get(sha256, [])
        source = f"GPU code in torch/lib/libtorch_cuda.so of {fact['metadata_from']}"
        default["arch_list_from"] = source if sha256 in known_archs else None
        default["wheel_sha256"] = sha256
        row["pypi_default"] = default
        row["metadata_from"] = fact["metadata_from"]
        releases.append(row)
    return {
        "schema_version": 1,
        "provenance": {
            "kind": "derived",
            "generated_by": "scripts/regen_compat.py",
            "from": (
                "PyPI simple API (PEP 691) file lists: the cp tags of each release's Linux x86_64 wheels "
                "give 'python'. The METADATA of the PyPI default torch wheel (PEP 658 .metadata, else read "
                "from the wheel by HTTP range) gives 'pypi_default': CUDA from the nvidia-cuda-runtime or "
                "cuda-toolkit pin, cuDNN from nvidia-cudnn-cu*, NCCL from nvidia-nccl-cu*. torchvision and "
                "torchaudio are paired through their own METADATA's torch requirement ('*_paired_by'). "
                "'arch_list' lists the SM (cubin) and compute (PTX) targets present in at least half of "
                "the fatbin modules of that wheel's libtorch_cuda.so, as torch.cuda.get_arch_list() does."
            ),
            "markers_evaluated_for": f"Linux x86_64, Python {REFERENCE_PYTHON} where the release has it",
            "since": str(since),
        },
        "releases": releases,
    }


def uncovered_by_hand_files(derived: dict[str, Any]) -> list[str]:
    """Releases the hand-entered files say nothing about: a to-do list for the maintainer."""
    notes: list[str] = []
    if not (DATA_DIR / "variants.json").exists() or not (DATA_DIR / "drivers.json").exists():
        return ["hand-entered files variants.json / drivers.json are missing"]
    variants = json.loads((DATA_DIR / "variants.json").read_text())["releases"]
    drivers = json.loads((DATA_DIR / "drivers.json").read_text())
    known_cuda = set(drivers["toolkit_min_driver"])
    for row in derived["releases"]:
        minor = ".".join(row["torch"].split(".")[:2])
        if minor not in variants:
            notes.append(f"torch {minor}: no PyTorch-index variants entered in variants.json")
        cuda = row["pypi_default"]["cuda"]
        if cuda != "cpu" and cuda not in known_cuda:
            notes.append(f"torch {row['torch']}: CUDA {cuda} has no exact minimum driver in drivers.json")
    return sorted(set(notes))


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--since", default="2.4", help="oldest torch release to include (default 2.4)")
    parser.add_argument("--check", action="store_true", help="exit 1 if releases.json would change")
    parser.add_argument("--output", type=Path, default=RELEASES_FILE)
    parser.add_argument(
        "--no-archs", action="store_true", help="do not read libtorch_cuda.so out of wheels not seen before"
    )
    args = parser.parse_args(argv)

    previous = json.loads(args.output.read_text()) if args.output.exists() else None
    data = collect(Version(args.since), archs=not args.no_archs, previous=previous)
    text = render(data)
    for note in uncovered_by_hand_files(data):
        print(f"note: {note}", file=sys.stderr)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output.name} is out of date; run scripts/regen_compat.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(args.output)
    print(f"wrote {len(data['releases'])} torch releases to {args.output.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
