"""Image platforms (``linux/amd64``) and what each is called elsewhere: Docker's image config
architecture, the machine name in wheel tags, uv's ``--python-platform``, and the manylinux tags
a Python on that machine installs."""

from __future__ import annotations

from dataclasses import dataclass

from envkit.errors import UsageError

DEFAULT_PLATFORM = "linux/amd64"
# The glibc floor uv resolves for: wheels for manylinux_2_28 and older run on every supported base.
UV_GLIBC = "manylinux_2_28"


@dataclass(frozen=True)
class Platform:
    name: str  # linux/amd64
    architecture: str  # the image config's "architecture" (Debian's arch name too)
    machine: str  # uname -m, as wheel tags spell it


PLATFORMS = {
    "linux/amd64": Platform("linux/amd64", "amd64", "x86_64"),
    "linux/arm64": Platform("linux/arm64", "arm64", "aarch64"),
}

# Older manylinux names for the glibc versions they stand for.
_LEGACY = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}


def platform(name: str) -> Platform:
    try:
        return PLATFORMS[name]
    except KeyError:
        known = ", ".join(PLATFORMS)
        raise UsageError(f"no wheel platform is known for {name}", hint=f"known platforms: {known}") from None


def architecture(name: str) -> str:
    """``linux/arm64`` -> ``arm64`` (image config, Debian package architecture)."""
    return platform(name).architecture


def machine(name: str) -> str:
    """``linux/arm64`` -> ``aarch64`` (wheel tags)."""
    return platform(name).machine


def uv_platform(name: str) -> str:
    """uv's ``--python-platform`` for an image platform, e.g. ``x86_64-manylinux_2_28``."""
    return f"{machine(name)}-{UV_GLIBC}"


def manylinux_platforms(machine_name: str, glibc: tuple[int, int]) -> list[str]:
    """Platform tags a Python on ``machine_name`` with that glibc installs, most preferred first.

    From the glibc down to the oldest manylinux of the machine (2.5 on x86_64, 2.17 elsewhere),
    each legacy name beside the glibc it means, then the bare ``linux_<machine>``.
    """
    floor = 5 if machine_name == "x86_64" else 17
    tags: list[str] = []
    for minor in range(glibc[1], floor - 1, -1):
        tags.append(f"manylinux_{glibc[0]}_{minor}_{machine_name}")
        legacy = _LEGACY.get((glibc[0], minor))
        if legacy is not None and (minor >= 17 or machine_name == "x86_64"):
            tags.append(f"{legacy}_{machine_name}")
    return [*tags, f"linux_{machine_name}"]
