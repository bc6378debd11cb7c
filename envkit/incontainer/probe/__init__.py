"""Scripts that run inside an image: ``probe.py`` (versions, devices, numerics) and ``bench.py``
(the training-step ladder).

They are copied into every image as plain files (``/opt/envkit/probe/``) and run as
``python probe.py`` / ``python bench.py``, so every module here uses the standard library and
torch only, and imports its siblings both as a package and as plain scripts. Nothing in this
``__init__`` may import torch: the host side of envkit imports it to find the scripts.
"""

from __future__ import annotations

from pathlib import Path

PROBE_DIR = Path(__file__).resolve().parent

# The files a container needs; the host copies exactly these when an image lacks them.
SCRIPT_FILES: tuple[str, ...] = ("archs.py", "probe.py", "models.py", "bench.py", "batch_tiers.json")

# bench.py keeps its own copy (it runs without this package); a unit test keeps them equal.
WORKLOADS: tuple[str, ...] = ("resnet50", "yolo")

PROBE_SCHEMA = "envkit.probe/1"
BENCH_SCHEMA = "envkit.bench/1"

# Lines on stderr that carry machine-readable progress; everything else there is for people.
EVENT_PREFIX = "ENVKIT_EVENT "
