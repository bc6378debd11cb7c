"""The reference table (envkit/data/reference/*.json): one reference per GPU name, MIG slices."""

from __future__ import annotations

import pytest

from envkit.verify.report import load_references, mig_fraction, mig_slice, reference_for

# Device names as torch and nvidia-smi report them, and the reference each must find.
KNOWN_NAMES = {
    "NVIDIA H100 80GB HBM3": "NVIDIA H100 SXM5",
    "NVIDIA H100 PCIe": "NVIDIA H100 PCIe",
    "NVIDIA H100 NVL": "NVIDIA H100 NVL",
    "NVIDIA H200": "NVIDIA H200 SXM",
    "NVIDIA H200 NVL": "NVIDIA H200 NVL",
    "NVIDIA GH200 480GB": "NVIDIA GH200 Grace Hopper Superchip (its H100 GPU)",
    "NVIDIA GH200 144G HBM3e": "NVIDIA GH200 Grace Hopper Superchip (its H100 GPU)",
    "NVIDIA A100-SXM4-40GB": "NVIDIA A100 SXM4 (40 or 80 GB)",
    "NVIDIA A100-SXM4-80GB": "NVIDIA A100 SXM4 (40 or 80 GB)",
    "NVIDIA A100-PCIE-40GB": "NVIDIA A100 PCIe (40 or 80 GB)",
    "NVIDIA A100 80GB PCIe": "NVIDIA A100 PCIe (40 or 80 GB)",
    "NVIDIA L4": "NVIDIA L4",
    "NVIDIA L40S": "NVIDIA L40S",
    "NVIDIA A10": "NVIDIA A10",
    "Tesla T4": "NVIDIA T4",
    "Tesla V100-SXM2-16GB": "NVIDIA V100 SXM2 (16 or 32 GB)",
    "Tesla V100-PCIE-32GB": "NVIDIA V100 PCIe (16 or 32 GB)",
    "NVIDIA A100-SXM4-40GB MIG 1g.5gb": "NVIDIA A100 SXM4 (40 or 80 GB)",
    "NVIDIA H100 80GB HBM3 MIG 3g.40gb": "NVIDIA H100 SXM5",
}
# Names that must find no reference rather than a wrong one.
UNKNOWN_NAMES = ["NVIDIA A10G", "NVIDIA L40", "NVIDIA GeForce RTX 4090", "Tesla V100S-PCIE-32GB"]


@pytest.mark.parametrize(("name", "model"), sorted(KNOWN_NAMES.items()))
def test_each_gpu_name_matches_exactly_one_reference(name: str, model: str) -> None:
    found = [ref.gpu_model for ref in load_references() if ref.matches(name)]
    assert found == [model]


@pytest.mark.parametrize("name", UNKNOWN_NAMES)
def test_other_gpus_match_no_reference(name: str) -> None:
    assert reference_for(name) is None


def test_every_reference_names_its_sources() -> None:
    for ref in load_references():
        assert ref.peak_tflops and "datasheet" in ref.peak_tflops.source, ref.gpu_model
        assert "dense" in ref.peak_tflops.conditions
        assert ref.specs_source and ref.multiprocessors and ref.memory_gb, ref.gpu_model
        for figure in ref.throughput:
            assert figure.source and figure.conditions


def test_gpus_before_sm80_have_no_bf16_peak() -> None:
    for name in ("Tesla T4", "Tesla V100-SXM2-16GB"):
        ref = reference_for(name)
        assert ref and ref.peak_tflops and ref.peak_tflops.bf16 is None and ref.peak_tflops.fp16


def test_mig_slice_share() -> None:
    a100 = reference_for("NVIDIA A100-SXM4-40GB MIG 1g.5gb")
    assert a100 is not None
    found = mig_slice("NVIDIA A100-SXM4-40GB MIG 1g.5gb")
    assert found and found.profile == "1g.5gb" and found.compute_slices == 1
    assert mig_fraction(a100, "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 14) == pytest.approx(14 / 108)
    assert mig_fraction(a100, "NVIDIA A100-SXM4-40GB MIG 3g.20gb", None) == pytest.approx(3 / 7)
    assert mig_fraction(a100, "NVIDIA A100-SXM4-40GB", 108) == 1.0
    assert mig_slice("NVIDIA A100-SXM4-40GB") is None
