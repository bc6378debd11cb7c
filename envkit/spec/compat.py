"""Which torch / CUDA / cuDNN / Python combinations exist, answered from data files.

The tables live in ``envkit/data/compat/``: ``releases.json`` is derived from PyPI wheel metadata
by ``scripts/regen_compat.py``; ``variants.json``, ``archs.json``, ``drivers.json`` and
``debian.json`` are entered by hand and name their sources. This module only looks things up;
every answer about a version comes from those files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from packaging.version import InvalidVersion, Version

from envkit.errors import CompatError

PYPI = "pypi"
CPU = "cpu"


@dataclass(frozen=True)
class Resolved:
    torch: str
    torchvision: str | None
    torchaudio: str | None
    cuda: str
    variant: str
    index_url: str | None
    cudnn: str | None
    nccl: str | None
    python: str
    arch_list: tuple[str, ...]
    min_driver: str | None


@dataclass(frozen=True)
class _Variant:
    """One build of one torch release: the PyPI default wheel or a PyTorch-index variant."""

    variant: str
    cuda: str
    index_url: str | None
    cudnn: str | None
    nccl: str | None
    arch_list: tuple[str, ...]
    source: str


# --------------------------------------------------------------------------- data


@cache
def _load(name: str) -> dict[str, Any]:
    text = resources.files("envkit").joinpath("data", "compat", name).read_text(encoding="utf-8")
    return json.loads(text)


def _releases() -> list[dict[str, Any]]:
    return _load("releases.json")["releases"]


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _vkey(version: str) -> Version:
    return Version(version)


def _python_key(python: str) -> tuple[int, ...]:
    return tuple(int(p) for p in python.split("."))


def torch_versions() -> list[str]:
    return [row["torch"] for row in _releases()]


def min_driver_for(cuda: str) -> str | None:
    """Minimum Linux driver for a CUDA version: its toolkit's own, else its major's floor.

    The floor is NVIDIA's minor-version compatibility (no PTX JIT); None when neither is recorded
    or for ``cpu``.
    """
    drivers = _load("drivers.json")
    exact = drivers["toolkit_min_driver"].get(cuda)
    if exact:
        return exact
    return drivers["minor_version_compat_driver"].get(cuda.split(".")[0])


def debian_suite_for_python(python: str) -> str | None:
    """The Debian suite whose system Python is ``python`` (images use Debian's python)."""
    for suite, facts in _load("debian.json")["suites"].items():
        if facts["python"] == python:
            return suite
    return None


def check_suite_python(suite: str, python: str, *, source: str = "") -> None:
    """Refuse a Python the Debian suite does not ship: images use the suite's own interpreter.

    A suite envkit has no record of passes (its packages decide at lock time)."""
    suites = _load("debian.json")["suites"]
    facts = suites.get(suite)
    if facts is None or facts["python"] == python:
        return
    elsewhere = debian_suite_for_python(python)
    other = f", or base suite {elsewhere} for Python {python}" if elsewhere else ""
    known = ", ".join(f"{name}: {row['python']}" for name, row in suites.items())
    raise CompatError(
        f"{_where(source, 'python')}Debian {suite} ships Python {facts['python']}, not {python}: "
        f"use python: \"{facts['python']}\"{other} (suites and their Python: {known})"
    )


def _debian_pythons() -> list[str]:
    debian = _load("debian.json")
    suites = debian["suites"]
    ordered = [debian["default_suite"], *[s for s in suites if s != debian["default_suite"]]]
    return [suites[s]["python"] for s in ordered]


def _hand_archs(torch_minor: str, cuda: str) -> tuple[tuple[str, ...], str] | None:
    for row in _load("archs.json")["rows"]:
        if torch_minor in row["torch"] and row["cuda"] == cuda:
            return tuple(row["arch_list"]), f"archs.json ({row['source']})"
    return None


def _variants(row: dict[str, Any]) -> list[_Variant]:
    """Every build of a torch release: the PyPI default first, then PyTorch-index variants."""
    default = row["pypi_default"]
    out = [
        _Variant(
            variant=PYPI,
            cuda=default["cuda"],
            index_url=None,
            cudnn=default["cudnn"],
            nccl=default["nccl"],
            arch_list=tuple(default["arch_list"]),
            source="releases.json (PyPI wheel metadata)",
        )
    ]
    table = _load("variants.json")
    entry = table["releases"].get(_minor(row["torch"]))
    # Index variants by CUDA version, CPU last.
    names = sorted(entry["variants"] if entry else [], key=lambda n: (n == CPU, n))
    for name in names:
        cuda = table["variant_cuda"][name]
        url = table["index_url"].format(variant=name)
        if cuda == default["cuda"]:
            # The PyPI wheel is this very build, so its derived facts hold for the variant too.
            cudnn, nccl, archs = default["cudnn"], default["nccl"], tuple(default["arch_list"])
        else:
            hand = _hand_archs(_minor(row["torch"]), cuda) if cuda != CPU else ((), "")
            cudnn, nccl, archs = None, None, hand[0] if hand else ()
        out.append(_Variant(name, cuda, url, cudnn, nccl, archs, f"variants.json ({entry['source']})"))
    return out


# --------------------------------------------------------------------------- resolution


def _where(source: str, field: str) -> str:
    return f"{source}: {field}: " if source else f"{field}: "


def _find_release(torch: str, source: str) -> dict[str, Any]:
    rows = _releases()
    try:
        wanted = Version(torch)
    except InvalidVersion:
        raise CompatError(f"{_where(source, 'torch.version')}{torch!r} is not a version") from None
    if torch.count(".") >= 2:
        matches = [r for r in rows if Version(r["torch"]) == wanted]
    else:
        matches = [r for r in rows if _minor(r["torch"]) == torch]
    if not matches:
        minors = sorted({_minor(r["torch"]) for r in rows}, key=_vkey)
        known = ", ".join(r["torch"] for r in rows if _minor(r["torch"]) == torch.rsplit(".", 1)[0])
        available = known or f"{minors[0]} to {minors[-1]}: {', '.join(minors)}"
        raise CompatError(
            f"{_where(source, 'torch.version')}torch {torch} is not known (available: {available})"
        )
    return max(matches, key=lambda r: _vkey(r["torch"]))


def _normalise_cuda(cuda: str) -> str:
    """Accept "12.8", "cu128" and "cpu"; answer in the "12.8" / "cpu" form."""
    cuda = cuda.strip().lower()
    return _load("variants.json")["variant_cuda"].get(cuda, cuda)


def _pick_variant(row: dict[str, Any], cuda: str | None, source: str) -> _Variant:
    builds = _variants(row)
    if cuda is None:
        return builds[0]
    wanted = _normalise_cuda(cuda)
    for build in builds:  # PyPI first: the same build, reachable without PyTorch's index
        if build.cuda == wanted:
            return build
    available = ", ".join(sorted({b.cuda for b in builds}, key=lambda c: (c == CPU, c)))
    raise CompatError(
        f"{_where(source, 'torch.cuda')}{cuda} is not built for torch {_minor(row['torch'])} "
        f"(available: {available})",
        hint="compat data: envkit/data/compat/releases.json and variants.json",
    )


def _pythons(row: dict[str, Any]) -> list[str]:
    """Pythons with wheels for torch and for every companion paired with it."""
    pythons = list(row["python"])
    for name in ("torchvision", "torchaudio"):
        if row[name]:
            pythons = [p for p in pythons if p in row[f"{name}_python"]]
    return pythons


def _pick_python(row: dict[str, Any], python: str | None, source: str) -> str:
    pythons = _pythons(row)
    if python is None:
        for candidate in _debian_pythons():
            if candidate in pythons:
                return candidate
        return max(pythons, key=_python_key)
    if python not in pythons:
        raise CompatError(
            f"{_where(source, 'python')}Python {python} has no wheels for torch {row['torch']} "
            f"(available: {', '.join(pythons)})"
        )
    return python


def _check_cudnn(row: dict[str, Any], build: _Variant, cudnn: str | None, source: str) -> None:
    if cudnn is None:
        return
    brought = build.cudnn
    if brought is not None and (brought == cudnn or brought.startswith(cudnn + ".")):
        return
    known = sorted({f"{b.cudnn} (CUDA {b.cuda})" for b in _variants(row) if b.cudnn})
    brings = f"brings cuDNN {brought}" if brought else "has no recorded cuDNN"
    raise CompatError(
        f"{_where(source, 'torch.cudnn')}cuDNN {cudnn} does not come with torch {row['torch']} "
        f"for CUDA {build.cuda}: the {build.variant} build {brings} "
        f"(available: {', '.join(known) or 'none recorded'})"
    )


def resolve(
    torch: str,
    cuda: str | None = None,
    python: str | None = None,
    cudnn: str | None = None,
    *,
    source: str = "",
) -> Resolved:
    """Exact versions for a requested combination, or CompatError naming what exists.

    ``torch`` is "2.8" (newest patch) or "2.8.0"; ``cuda`` None means the PyPI default build;
    ``python`` None means the first Debian system Python (default suite first) the release has.
    ``source`` names the spec file in error messages.
    """
    row = _find_release(str(torch), source)
    build = _pick_variant(row, cuda, source)
    chosen_python = _pick_python(row, python, source)
    _check_cudnn(row, build, cudnn, source)
    companions = {
        name: row[name] if chosen_python in row[f"{name}_python"] else None
        for name in ("torchvision", "torchaudio")
    }
    return Resolved(
        torch=row["torch"],
        torchvision=companions["torchvision"],
        torchaudio=companions["torchaudio"],
        cuda=build.cuda,
        variant=build.variant,
        index_url=build.index_url,
        cudnn=build.cudnn,
        nccl=build.nccl,
        python=chosen_python,
        arch_list=build.arch_list,
        min_driver=None if build.cuda == CPU else min_driver_for(build.cuda),
    )


def matrix_rows(torch: str | None = None, cuda: str | None = None) -> list[dict[str, Any]]:
    """One row per (torch release, build), filtered by torch ("2.8" or "2.8.0") and CUDA."""
    wanted_cuda = _normalise_cuda(cuda) if cuda else None
    rows = []
    for row in _releases():
        if torch and row["torch"] != torch and _minor(row["torch"]) != torch:
            continue
        for build in _variants(row):
            if wanted_cuda and build.cuda != wanted_cuda:
                continue
            rows.append(
                {
                    "torch": row["torch"],
                    "torchvision": row["torchvision"],
                    "torchaudio": row["torchaudio"],
                    "cuda": build.cuda,
                    "variant": build.variant,
                    "index_url": build.index_url,
                    "cudnn": build.cudnn,
                    "nccl": build.nccl,
                    "python": _pythons(row),
                    "arch_list": list(build.arch_list),
                    "min_driver": None if build.cuda == CPU else min_driver_for(build.cuda),
                    "source": build.source,
                }
            )
    return rows
