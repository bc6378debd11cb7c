"""Inside-the-image smoke test: versions, devices and a numerics check, as one JSON document.

    python probe.py [--cpu] [--indent N]

Standard library and torch only (this file is copied into images). Prints one JSON document on
stdout and exits 0 when everything it checked is sound, 1 otherwise; the host reads the document
either way and decides what the failure means.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from typing import Any

if __package__:
    from . import archs
else:  # run as a plain script: this directory is sys.path[0]
    import archs  # type: ignore[no-redef]

SCHEMA = "envkit.probe/1"

# Relative Frobenius error ||out - ref|| / ||ref|| against a float64 CPU reference.
# fp32 accumulates rounding of ~6e-8 per operation, so even large reductions stay near 1e-6;
# 1e-4 keeps a wide margin yet still fails when TF32 is silently in effect (10-bit mantissa,
# about 3e-4 here). tf32 and bf16 round their inputs (2^-11 and 2^-9 unit roundoff), so their
# errors sit near 4e-4 and 3e-3: the tolerances leave about a 10x margin over that.
TOLERANCES: dict[str, float] = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 2e-2}


def _torch_versions(torch: Any) -> dict[str, Any]:
    cudnn = None
    try:
        cudnn = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001 - a broken cuDNN must be reported, not crash the probe
        cudnn = None
    nccl = None
    try:
        if torch.cuda.is_available() or torch.version.cuda:
            raw = torch.cuda.nccl.version()
            nccl = ".".join(str(part) for part in raw) if isinstance(raw, tuple) else str(raw)
    except Exception:  # noqa: BLE001 - NCCL is absent from CPU builds
        nccl = None
    try:
        import torchvision  # noqa: PLC0415 - optional

        torchvision_version: str | None = torchvision.__version__
    except Exception:  # noqa: BLE001 - optional; a broken torchvision is reported as absent
        torchvision_version = None
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_git": getattr(torch.version, "git_version", None),
        "cudnn": cudnn,
        "nccl": nccl,
        "torchvision": torchvision_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _cuda_state(torch: Any) -> dict[str, Any]:
    """is_available() plus the reason when it is False: torch only says why in a warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = bool(torch.cuda.is_available())
    error: str | None = None
    if not available and torch.version.cuda:
        try:
            torch.cuda.init()
        except Exception as exc:  # noqa: BLE001 - the message is the diagnosis
            error = str(exc).strip()
        if not error and caught:
            error = str(caught[-1].message).strip()
    elif not torch.version.cuda:
        error = "torch was built without CUDA (a CPU-only wheel)"
    devices: list[dict[str, Any]] = []
    arch_list: list[str] = []
    if available:
        arch_list = list(torch.cuda.get_arch_list())
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            supported, how = archs.kernel_support(arch_list, props.major, props.minor)
            devices.append(
                {
                    "index": index,
                    "name": props.name,
                    "capability": archs.capability_name(props.major, props.minor),
                    "total_memory_bytes": int(props.total_memory),
                    "multi_processor_count": int(props.multi_processor_count),
                    "arch_supported": supported,
                    "arch_reason": how,
                }
            )
    return {
        "cuda_available": available,
        "cuda_error": error,
        "device_count": len(devices),
        "devices": devices,
        "arch_list": arch_list,
    }


def _rel_error(torch: Any, out: Any, ref: Any) -> float:
    out64 = out.detach().to("cpu", torch.float64)
    denom = float(ref.norm())
    return float((out64 - ref).norm()) / (denom if denom > 0 else 1.0)


def judge(torch: Any, out: Any, ref: Any, precision: str) -> dict[str, Any]:
    """Compare one result with its float64 reference. A NaN or Inf anywhere fails, whatever the error."""
    finite = bool(torch.isfinite(out).all())
    err = _rel_error(torch, out, ref)
    valid = err == err  # NaN compares unequal to itself
    return {
        "finite": finite,
        "rel_error": err if valid else None,  # NaN is not valid JSON
        "ok": finite and valid and err <= TOLERANCES[precision],
    }


def _set_tf32(torch: Any, enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def numerics_check(torch: Any, device: str, precisions: list[str], *, size: int) -> list[dict[str, Any]]:
    """matmul and conv2d in each precision against float64 on the CPU. NaN or Inf never passes."""
    gen = torch.Generator().manual_seed(1234)
    a = torch.rand((size, size), generator=gen, dtype=torch.float32) * 2 - 1
    b = torch.rand((size, size), generator=gen, dtype=torch.float32) * 2 - 1
    channels = max(8, size // 16)
    spatial = max(8, size // 16)
    x = torch.rand((2, channels, spatial, spatial), generator=gen, dtype=torch.float32) * 2 - 1
    w = torch.rand((2 * channels, channels, 3, 3), generator=gen, dtype=torch.float32) * 2 - 1
    references = {
        "matmul": a.double() @ b.double(),
        "conv2d": torch.nn.functional.conv2d(x.double(), w.double(), padding=1),
    }
    results: list[dict[str, Any]] = []
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for precision in precisions:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            if device != "cpu":
                _set_tf32(torch, precision == "tf32")
            ops = {
                "matmul": lambda dt=dtype: a.to(device, dt) @ b.to(device, dt),
                "conv2d": lambda dt=dtype: torch.nn.functional.conv2d(
                    x.to(device, dt), w.to(device, dt), padding=1
                ),
            }
            for op, run in ops.items():
                entry: dict[str, Any] = {
                    "op": op,
                    "precision": precision,
                    "device": device,
                    "tolerance": TOLERANCES[precision],
                    "rel_error": None,
                    "finite": None,
                    "ok": False,
                    "error": None,
                }
                try:
                    out = run()
                    if device != "cpu":
                        torch.cuda.synchronize()
                    entry.update(judge(torch, out, references[op], precision))
                except Exception as exc:  # noqa: BLE001 - "no kernel image" and friends land here
                    entry["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                results.append(entry)
    finally:
        if device != "cpu":
            _set_tf32(torch, saved[0])
            torch.backends.cudnn.allow_tf32 = saved[1]
    return results


def gpu_precisions(capability: str) -> list[str]:
    """The precisions to check on one device. TF32 and bf16 need the tensor cores of sm_80 (Ampere)
    or newer; asked per device, since torch.cuda.is_bf16_supported() looks at the current device
    only and also says yes where bf16 is merely emulated (T4, V100)."""
    major, _ = archs.parse_capability(capability)
    return ["fp32", "tf32", "bf16"] if major >= 8 else ["fp32"]


def collect(*, cpu_only: bool = False, size: int | None = None) -> dict[str, Any]:
    started = time.monotonic()
    import torch  # noqa: PLC0415 - imported late so a missing torch becomes a report, not a traceback

    report: dict[str, Any] = {"schema": SCHEMA}
    report.update(_torch_versions(torch))
    report.update(_cuda_state(torch))
    numerics: list[dict[str, Any]] = []
    numerics += numerics_check(torch, "cpu", ["fp32", "bf16"], size=size or 256)
    if report["cuda_available"] and not cpu_only:
        for dev in report["devices"]:
            precisions = gpu_precisions(dev["capability"])
            numerics += numerics_check(torch, f"cuda:{dev['index']}", precisions, size=size or 1024)
    report["numerics"] = numerics
    report["numerics_ok"] = all(item["ok"] for item in numerics)
    report["ok"] = report["numerics_ok"] and (cpu_only or report["cuda_available"])
    report["elapsed_s"] = round(time.monotonic() - started, 3)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="check the CPU only, a GPU is not expected")
    parser.add_argument("--size", type=int, default=None, help="matrix size of the numerics check")
    parser.add_argument("--indent", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        report = collect(cpu_only=args.cpu, size=args.size)
    except ImportError as exc:
        report = {"schema": SCHEMA, "ok": False, "fatal": f"torch is not importable: {exc}"}
    print(json.dumps(report, indent=args.indent, sort_keys=True))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
