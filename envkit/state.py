"""Where envkit keeps what it remembers on this host between commands (dev containers' token
files, the registry locations images were pushed to): ENVKIT_STATE_DIR, else
$XDG_STATE_HOME/envkit, else ~/.local/state/envkit."""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    override = os.environ.get("ENVKIT_STATE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "envkit"
