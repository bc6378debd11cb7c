"""The in-image probe: architecture rules, the numerics check and its tolerances, the script's JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from envkit.incontainer.probe import PROBE_DIR, SCRIPT_FILES, archs, probe
from envkit.verify.report import ProbeResult

# torch 2.6's cu124 wheels and torch 2.8's cu128 wheels, as torch.cuda.get_arch_list() reports them.
CU124_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU128_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize(
    ("arch_list", "capability", "expected"),
    [
        (CU124_ARCHS, (9, 0), True),  # H100: exact cubin
        (["sm_80"], (8, 6), True),  # sm_80 cubin runs on sm_86 (same major, higher minor)
        (["sm_86"], (8, 0), False),  # but never on a lower minor
        (CU124_ARCHS, (12, 0), False),  # Blackwell GeForce with a CUDA 12.4 build: no kernel image
        (CU124_ARCHS, (10, 0), False),  # no cubin crosses majors
        (CU128_ARCHS, (12, 0), True),
        (["sm_80", "compute_90"], (10, 0), True),  # PTX is JIT-compiled for newer devices
        (["compute_90"], (8, 0), False),  # but not for older ones
        (["sm_90a"], (9, 0), True),
        (["sm_90a"], (10, 0), False),  # arch-specific cubins run only on their own arch
    ],
)
def test_kernel_support(arch_list: list[str], capability: tuple[int, int], expected: bool) -> None:
    supported, reason = archs.kernel_support(arch_list, *capability)
    assert supported is expected, reason


def test_arch_names_parse_both_spellings() -> None:
    assert archs.parse_capability("9.0") == (9, 0)
    assert archs.parse_capability("12.0") == (12, 0)
    assert archs.parse_capability("sm_120") == (12, 0)
    assert archs.parse_capability("sm_86") == (8, 6)
    assert archs.parse_arch_list("sm_80, sm_90;sm_120") == ["sm_80", "sm_90", "sm_120"]
    with pytest.raises(ValueError):
        archs.parse_capability("ampere")


def test_numerics_on_cpu_pass_with_margin() -> None:
    results = probe.numerics_check(torch, "cpu", ["fp32", "bf16"], size=128)
    assert {(r["op"], r["precision"]) for r in results} == {
        ("matmul", "fp32"),
        ("conv2d", "fp32"),
        ("matmul", "bf16"),
        ("conv2d", "bf16"),
    }
    for item in results:
        assert item["ok"], item
        assert item["finite"] is True
        # Far inside the tolerance, so a pass is not luck.
        assert item["rel_error"] < item["tolerance"] / 3


def _round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round float32 values to ``bits`` explicit mantissa bits (TF32 keeps 10)."""
    drop = 23 - bits
    as_int = x.contiguous().view(torch.int32)
    rounded = (as_int + (1 << (drop - 1))) & ~((1 << drop) - 1)
    return rounded.view(torch.float32)


def test_fp32_tolerance_catches_tf32_silently_on() -> None:
    """The fp32 tolerance must fail a result computed with TF32-rounded inputs, and the tf32
    tolerance must accept it: otherwise the fp32 check could not tell the two apart."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand((256, 256), generator=gen) * 2 - 1
    b = torch.rand((256, 256), generator=gen) * 2 - 1
    ref = a.double() @ b.double()
    tf32_like = (_round_mantissa(a, 10).double() @ _round_mantissa(b, 10).double()).float()
    verdict_fp32 = probe.judge(torch, tf32_like, ref, "fp32")
    verdict_tf32 = probe.judge(torch, tf32_like, ref, "tf32")
    assert not verdict_fp32["ok"]
    assert verdict_tf32["ok"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_never_passes(bad: float) -> None:
    ref = torch.ones(8, 8, dtype=torch.float64)
    out = torch.ones(8, 8)
    out[3, 3] = bad
    verdict = probe.judge(torch, out, ref, "bf16")
    assert verdict["finite"] is False
    assert verdict["ok"] is False
    # A single bad element among many must fail too, even though the norm is dominated by the rest.
    big_ref = torch.ones(512, 512, dtype=torch.float64)
    big = torch.ones(512, 512)
    big[0, 0] = bad
    assert probe.judge(torch, big, big_ref, "bf16")["ok"] is False


def test_collect_reports_versions_and_cpu_only_torch() -> None:
    report = probe.collect(cpu_only=True, size=64)
    parsed = ProbeResult.model_validate(report)
    assert parsed.torch == torch.__version__
    assert parsed.python and parsed.python.count(".") == 2
    assert parsed.numerics_ok and parsed.ok
    if torch.version.cuda is None:
        assert parsed.cuda_available is False
        assert "without CUDA" in (parsed.cuda_error or "")


def _run_script(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, str(directory / "probe.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=directory,
    )


def test_script_runs_from_a_bare_copy_and_prints_one_document(tmp_path: Path) -> None:
    """As in an image: the files alone in a directory, no envkit package next to them."""
    for name in SCRIPT_FILES:
        shutil.copy(PROBE_DIR / name, tmp_path / name)
    proc = _run_script(tmp_path, "--cpu", "--size", "64")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["schema"] == "envkit.probe/1"
    assert ProbeResult.model_validate(document).ok
    if torch.version.cuda is None:
        # Without --cpu a GPU is expected: a CPU-only torch makes the probe fail, and say why.
        proc = _run_script(tmp_path, "--size", "64")
        assert proc.returncode == 1
        failed = ProbeResult.model_validate(json.loads(proc.stdout))
        assert not failed.ok and not failed.cuda_available
        assert "without CUDA" in (failed.cuda_error or "")


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ("sm_75", ["fp32"]),  # T4: torch.cuda.is_bf16_supported() says True, but bf16 is emulated
        ("sm_70", ["fp32"]),  # V100
        ("sm_80", ["fp32", "tf32", "bf16"]),
        ("sm_90", ["fp32", "tf32", "bf16"]),
        ("sm_120", ["fp32", "tf32", "bf16"]),
    ],
)
def test_gpu_precisions_follow_each_device_capability(capability: str, expected: list[str]) -> None:
    assert probe.gpu_precisions(capability) == expected
