"""Resolution against the compatibility data: valid and invalid combinations, and the data itself."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli.matrix import matrix_cmd as matrix
from envkit.errors import CompatError
from envkit.spec import compat

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "envkit" / "data" / "compat"


def _load_regen():
    spec = importlib.util.spec_from_file_location("regen_compat", ROOT / "scripts" / "regen_compat.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["regen_compat"] = module
    spec.loader.exec_module(module)
    return module


regen = _load_regen()

ARCH_CU12_PRE_BLACKWELL = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
ARCH_CU128 = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")

# torch, cuda, python, cudnn -> torch, torchvision, cuda, variant, cudnn, nccl, python, min_driver
VALID = [
    (("2.6", None, None, None), ("2.6.0", "0.21.0", "12.4", "pypi", "9.1.0.70", "2.21.5", "3.11", "550.54.14")),
    (("2.7", None, None, None), ("2.7.1", "0.22.1", "12.6", "pypi", "9.5.1.17", "2.26.2", "3.11", "560.28.03")),
    (("2.7.0", None, "3.13", None), ("2.7.0", "0.22.0", "12.6", "pypi", "9.5.1.17", "2.26.2", "3.13", "560.28.03")),
    (("2.8", "12.8", "3.11", None), ("2.8.0", "0.23.0", "12.8", "pypi", "9.10.2.21", "2.27.3", "3.11", "570.26")),
    (("2.8.0", "12.8", None, "9.10"), ("2.8.0", "0.23.0", "12.8", "pypi", "9.10.2.21", "2.27.3", "3.11", "570.26")),
    (("2.8", "cu126", "3.12", None), ("2.8.0", "0.23.0", "12.6", "cu126", None, None, "3.12", "560.28.03")),
    (("2.8", "12.9", None, None), ("2.8.0", "0.23.0", "12.9", "cu129", None, None, "3.11", "575.51.03")),
    (("2.6", "11.8", "3.9", None), ("2.6.0", "0.21.0", "11.8", "cu118", None, None, "3.9", "520.61.05")),
    (("2.9", None, None, None), ("2.9.1", "0.24.1", "12.8", "pypi", "9.10.2.21", "2.27.5", "3.11", "570.26")),
    (("2.4", None, None, None), ("2.4.1", "0.19.1", "12.1", "pypi", "9.1.0.70", "2.20.5", "3.11", "530.30.02")),
    (("2.15", None, None, None), ("2.15.0", "0.29.2", "13.2", "pypi", "9.26.0.51", "2.30.7", "3.11", "580.65.06")),
    (("2.8", "cpu", None, None), ("2.8.0", "0.23.0", "cpu", "cpu", None, None, "3.11", None)),
]


@pytest.mark.parametrize(("request_", "expected"), VALID, ids=[" ".join(map(str, r)) for r, _ in VALID])
def test_valid_combinations_resolve_exactly(request_, expected):
    torch, cuda, python, cudnn = request_
    r = compat.resolve(torch, cuda, python, cudnn)
    assert (r.torch, r.torchvision, r.cuda, r.variant, r.cudnn, r.nccl, r.python, r.min_driver) == expected


def test_pypi_default_and_index_variants_carry_their_urls_and_archs():
    pypi = compat.resolve("2.8", "12.8")
    assert pypi.index_url is None
    assert pypi.arch_list == ARCH_CU128
    cu126 = compat.resolve("2.8", "12.6")
    assert cu126.index_url == "https://download.pytorch.org/whl/cu126"
    assert cu126.arch_list == ARCH_CU12_PRE_BLACKWELL
    assert compat.resolve("2.6").arch_list == ARCH_CU12_PRE_BLACKWELL
    assert compat.resolve("2.8", "cpu").arch_list == ()


# torch, cuda, python, cudnn -> fragments the message must contain
INVALID = [
    (("2.6", "13.0", None, None), ["torch.cuda: 13.0 is not built for torch 2.6", "(available: 11.8, 12.4, 12.6, cpu)"]),
    (("2.8", "12.4", None, None), ["12.4 is not built for torch 2.8", "12.6, 12.8, 12.9"]),
    (("2.8", None, "3.7", None), ["python: Python 3.7", "torch 2.8.0", "(available: 3.9, 3.10, 3.11, 3.12, 3.13)"]),
    (("2.15", None, "3.10", None), ["Python 3.10", "(available: 3.11, 3.12, 3.13, 3.14)"]),
    (("2.8", None, None, "9.5"), ["torch.cudnn: cuDNN 9.5", "brings cuDNN 9.10.2.21"]),
    (("2.8", "12.6", None, "9.10.2.21"), ["cuDNN 9.10.2.21", "cu126 build has no recorded cuDNN"]),
    (("2.3", None, None, None), ["torch.version: torch 2.3 is not known", "2.4, 2.5"]),
    (("2.8.7", None, None, None), ["torch 2.8.7 is not known", "available: 2.8.0"]),
    (("latest", None, None, None), ["'latest' is not a version"]),
]


@pytest.mark.parametrize(("request_", "fragments"), INVALID, ids=[" ".join(map(str, r)) for r, _ in INVALID])
def test_invalid_combinations_are_refused_with_what_exists(request_, fragments):
    torch, cuda, python, cudnn = request_
    with pytest.raises(CompatError) as caught:
        compat.resolve(torch, cuda, python, cudnn, source="images/pytorch-cuda/x.yaml")
    message = str(caught.value)
    assert message.startswith("images/pytorch-cuda/x.yaml: ")
    for fragment in fragments:
        assert fragment in message
    assert caught.value.exit_code == 2


def test_min_driver_for_uses_the_toolkit_table_then_the_major_floor():
    assert compat.min_driver_for("12.8") == "570.26"
    assert compat.min_driver_for("13.0") == "580.65.06"
    assert compat.min_driver_for("13.2") == "580.65.06"  # minor-version compatibility floor of 13.x
    assert compat.min_driver_for("12.3") == "525.60.13"
    assert compat.min_driver_for("10.2") is None


def test_debian_suites_map_to_their_system_python():
    assert compat.debian_suite_for_python("3.11") == "bookworm"
    assert compat.debian_suite_for_python("3.13") == "trixie"
    assert compat.debian_suite_for_python("3.12") is None


def test_matrix_rows_filter_by_torch_and_cuda():
    rows = compat.matrix_rows(torch="2.8")
    assert {r["torch"] for r in rows} == {"2.8.0"}
    assert [r["variant"] for r in rows] == ["pypi", "cu126", "cu128", "cu129", "cpu"]
    only = compat.matrix_rows(cuda="cu128")
    assert only and {r["cuda"] for r in only} == {"12.8"}
    assert {r["torch"] for r in only} >= {"2.7.0", "2.8.0", "2.9.1", "2.10.0"}


def test_matrix_command_lists_the_cuda_variants_of_torch_2_8():
    result = CliRunner().invoke(matrix, ["--torch", "2.8", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["cuda"] for r in rows} == {"12.6", "12.8", "12.9", "cpu"}
    table = CliRunner().invoke(matrix, ["--torch", "2.8"])
    assert table.exit_code == 0 and "12.8" in table.output and "cu129" in table.output


# --------------------------------------------------------------------------- the data files


def test_every_data_file_states_its_provenance():
    kinds = {}
    for path in sorted(DATA.glob("*.json")):
        data = json.loads(path.read_text())
        assert data["schema_version"] == 1
        kinds[path.name] = data["provenance"]["kind"]
    assert kinds == {
        "releases.json": "derived",
        "variants.json": "hand-entered",
        "archs.json": "hand-entered",
        "drivers.json": "hand-entered",
        "debian.json": "hand-entered",
    }
    for row in json.loads((DATA / "archs.json").read_text())["rows"]:
        assert row["source"]


def test_derived_releases_cover_2_4_to_the_newest_with_their_sources():
    releases = json.loads((DATA / "releases.json").read_text())["releases"]
    versions = [r["torch"] for r in releases]
    assert versions[0] == "2.4.0" and versions[-1] == "2.15.0"
    for row in releases:
        default = row["pypi_default"]
        assert row["metadata_from"].startswith(f"torch-{row['torch']}-")
        assert default["cuda"] != "cpu" and default["cudnn"] and default["nccl"]
        assert default["arch_list"] and default["arch_list_from"]
        assert row["python"]


# --------------------------------------------------------------------------- the regeneration script


def test_regen_parses_wheel_names_and_python_tags():
    parts = regen.parse_wheel_name("torch-2.8.0-cp313-cp313t-manylinux_2_28_x86_64.whl")
    assert parts["version"] == "2.8.0" and regen.is_linux_x86_64(parts["plat"])
    assert regen.python_of(parts["py"], parts["abi"]) == ("3.13", True)
    assert regen.python_of("cp310", "cp310") == ("3.10", False)
    assert not regen.is_linux_x86_64("manylinux_2_28_aarch64")


METADATA = """Metadata-Version: 2.1
Name: torch
Version: 2.8.0
Requires-Python: >=3.9.0
Requires-Dist: filelock
Requires-Dist: nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: nvidia-cudnn-cu12==9.10.2.21; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: nvidia-nccl-cu12==2.27.3; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: triton==3.4.0; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: pyyaml; extra == "pyyaml"
"""


def test_regen_reads_cuda_cudnn_nccl_from_requires_dist():
    reqs = regen.requirements(METADATA, "3.11")
    assert "pyyaml" not in reqs
    facts = regen.cuda_facts(reqs)
    assert facts["cuda"] == "12.8" and facts["cudnn"] == "9.10.2.21" and facts["nccl"] == "2.27.3"
    assert facts["triton"] == "triton==3.4.0"
    toolkit = regen.cuda_facts({"cuda-toolkit": "==13.2.2", "nvidia-cudnn-cu13": "==9.26.0.51"})
    assert toolkit["cuda"] == "13.2" and toolkit["cudnn_package"] == "nvidia-cudnn-cu13"


def test_regen_pairs_exact_pins_first_then_the_newest_admitting_release():
    def companion(version, torch_spec):
        reqs = {"torch": torch_spec} if torch_spec is not None else {}
        return {"version": version, "requirements": reqs}

    vision = [companion("0.29.0", "==2.14.0"), companion("0.29.1", ">=2.14.0"), companion("0.29.2", ">=2.14.0")]
    assert regen.pair("2.14.0", vision)[0]["version"] == "0.29.0"
    chosen, how = regen.pair("2.15.0", vision)
    assert chosen["version"] == "0.29.2" and ">=2.14.0" in how
    assert regen.pair("2.13.0", vision) == (None, None)


def _fatbin(entries):
    body = b""
    for kind, sm in entries:
        payload = b"\0" * 16
        header = struct.pack("<HHIQ", kind, 0x101, 64, len(payload)) + b"\0" * 12  # SM at offset 28
        header += struct.pack("<I", sm) + b"\0" * (64 - 32)
        body += header + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def test_regen_reads_gpu_architectures_from_fatbins(tmp_path):
    common = [(2, 75), (2, 80), (2, 90), (1, 120)]
    blob = b"ELF..." + b"".join(_fatbin(common) for _ in range(3)) + _fatbin([(2, 89)]) + b"tail"
    library = tmp_path / "libtorch_cuda.so"
    library.write_bytes(blob)
    assert regen.fatbin_archs(library) == ["sm_75", "sm_80", "sm_90", "compute_120"]


def test_a_python_the_suite_does_not_ship_is_refused_with_what_each_suite_ships() -> None:
    from envkit.errors import CompatError

    with pytest.raises(CompatError) as caught:
        compat.check_suite_python("bookworm", "3.10", source="images/x/1.yaml")
    message = str(caught.value)
    assert "images/x/1.yaml: python:" in message
    assert "bookworm ships Python 3.11, not 3.10" in message
    assert "bookworm: 3.11, trixie: 3.13" in message
    with pytest.raises(CompatError, match="or base suite trixie for Python 3.13"):
        compat.check_suite_python("bookworm", "3.13")
    compat.check_suite_python("bookworm", "3.11")  # what it ships passes
    compat.check_suite_python("trixie", "3.13")
    compat.check_suite_python("forky", "3.14")  # a suite without a record is left to the lock


def test_render_refuses_a_spec_whose_python_the_base_does_not_ship(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    catalog = Path(__file__).resolve().parents[2] / "images" / "pytorch-cuda" / "2.8.yaml"
    spec = tmp_path / "py310.yaml"
    spec.write_text(catalog.read_text().replace('python: "3.11"', 'python: "3.10"'))
    assert 'python: "3.10"' in spec.read_text()
    result = subprocess.run([sys.executable, "-m", "envkit", "render", str(spec)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "ships Python 3.11, not 3.10" in " ".join(result.stderr.split())
    assert result.stdout == ""
