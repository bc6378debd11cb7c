"""GPU architecture names and whether an image's kernels can run on a device. Standard library only.

Used inside the image by ``probe.py`` (against ``torch.cuda.get_arch_list()``) and on the host by
the preflight (against the image's ``io.envkit.arch-list`` label), so both give the same answer.
"""

from __future__ import annotations

import re

_ARCH_RE = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")


def capability_name(major: int, minor: int) -> str:
    return f"sm_{major}{minor}"


def parse_capability(text: str) -> tuple[int, int]:
    """``"9.0"`` (nvidia-smi's compute_cap) or ``"sm_90"`` -> ``(9, 0)``."""
    text = text.strip()
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    match = _ARCH_RE.match(text)
    if not match:
        raise ValueError(f"not a compute capability: {text!r}")
    digits = match.group(2)
    return int(digits[:-1]), int(digits[-1])


def parse_arch_list(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """A label value ``"sm_80,sm_90"`` (spaces or semicolons tolerated) or a list -> clean names."""
    items = text if isinstance(text, (list, tuple)) else re.split(r"[,;\s]+", text)
    return [item.strip() for item in items if item and item.strip()]


def kernel_support(arch_list: list[str], major: int, minor: int) -> tuple[bool, str]:
    """Whether code built for ``arch_list`` runs on a device of capability ``major.minor``, and how.

    CUDA's rules: a cubin for sm_XY runs on sm_XZ when Z >= Y (same major, not across majors, and
    never the arch-specific ``a`` variants on another device); PTX for compute_XY is JIT-compiled
    by the driver for any device of capability >= X.Y. Without either the device fails at the first
    kernel with "no kernel image is available for execution on the device".
    """
    device = (major, minor)
    ptx_candidates: list[tuple[int, int]] = []
    for name in arch_list:
        match = _ARCH_RE.match(name)
        if not match:
            continue
        kind, digits, suffix = match.groups()
        arch = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm":
            if arch == device:
                return True, f"{name} cubin"
            if not suffix and arch[0] == major and arch[1] <= minor:
                return True, f"{name} cubin (binary compatible within sm_{major}x)"
        elif arch <= device and not suffix:
            ptx_candidates.append(arch)
    if ptx_candidates:
        best = max(ptx_candidates)
        return True, f"compute_{best[0]}{best[1]} PTX, JIT-compiled by the driver (slow first start)"
    return False, "no cubin or PTX in the image runs on " + capability_name(major, minor)
