"""The ``io.envkit.*`` label keys envkit puts on images, containers and networks, and reads back.

Templates keep the literal strings (the rendered Dockerfile is a golden file); Python code uses
these names.
"""

from __future__ import annotations

PREFIX = "io.envkit."

# Images built from a spec (image/render.py).
NAME = "io.envkit.name"
VARIANT = "io.envkit.variant"
SPEC_DIGEST = "io.envkit.spec-digest"
ENVKIT_VERSION = "io.envkit.envkit-version"
PYTHON = "io.envkit.python"
TORCH = "io.envkit.torch"
TORCHVISION = "io.envkit.torchvision"
CUDA = "io.envkit.cuda"
CUDNN = "io.envkit.cudnn"
NCCL = "io.envkit.nccl"
ARCH_LIST = "io.envkit.arch-list"
MIN_DRIVER = "io.envkit.min-driver"
LOCK_DIGEST = "io.envkit.lock-digest"
SOURCE_DATE_EPOCH = "io.envkit.source-date-epoch"

# Bootstrapped Debian bases (image/base.py).
BASE_SUITE = "io.envkit.base.suite"
BASE_MIRROR = "io.envkit.base.mirror"
BASE_VARIANT = "io.envkit.base.variant"
BASE_ROOTFS = "io.envkit.base.rootfs"

# A drift layer restored on top of an image (record/drift.py).
DRIFT = "io.envkit.drift"

# Containers and networks envkit creates, so that it only ever removes its own.
MANAGED = "io.envkit.managed"
SERVICES = "io.envkit.services"
IMAGE = "io.envkit.image"
STATE_DIR = "io.envkit.state-dir"
VERIFY_RUN = "io.envkit.verify-run"
OFFLINE = "io.envkit.offline"
