"""Where the templates and the image catalog live.

In a checkout they sit at the top of the repository; in an installed wheel they ship inside the
package (pyproject's force-include). The package copy wins when both exist.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def _first_existing(name: str) -> Path:
    for candidate in (PACKAGE_DIR / name, REPO_DIR / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"envkit's {name}/ directory is missing from this installation")


def templates_dir() -> Path:
    return _first_existing("templates")


def images_dir() -> Path:
    """The catalog; ENVKIT_IMAGES_DIR points at another one (tests, private catalogs)."""
    override = os.environ.get("ENVKIT_IMAGES_DIR")
    return Path(override) if override else _first_existing("images")


def probe_dir() -> Path:
    return PACKAGE_DIR / "incontainer" / "probe"


def incontainer_dir() -> Path:
    """Scripts that run inside a container (not the probe): the package collector, the drift
    installer and the remover."""
    return PACKAGE_DIR / "incontainer"
