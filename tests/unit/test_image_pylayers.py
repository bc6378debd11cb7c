"""Python layers written from wheels: same wheels, same bytes; every file where an installer puts it."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from envkit.errors import IntegrityError, UsageError
from envkit.image.compose import Part, _history, _mark_sent
from envkit.image.pylayers import (
    CUDA,
    REST,
    TORCH,
    LayerPlan,
    group_of,
    plan_groups,
    plan_layer,
    stream_layer,
)
from envkit.incontainer.wheelinstall import Scheme

SCHEME = Scheme(prefix="/opt/venv", python="/opt/venv/bin/python", version="3.11")
EPOCH = 1761955200
SITE = "opt/venv/lib/python3.11/site-packages"


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def layer_digest(plan: object) -> str:
    """The layer's diff ID, from the bytes `stream_layer` gives."""
    return "sha256:" + hashlib.sha256(b"".join(stream_layer(plan))).hexdigest()  # type: ignore[arg-type]


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes], *,
               entry_points: str = "", record_override: dict[str, bytes] | None = None,
               metadata: str = "", compression: int = zipfile.ZIP_STORED) -> Path:
    stem = name.replace("-", "_")  # PEP 427 file and directory names
    dist = f"{stem}-{version}.dist-info"
    members = dict(files)
    members[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{metadata}".encode()
    members[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if entry_points:
        members[f"{dist}/entry_points.txt"] = entry_points.encode()
    hashed = {**members, **(record_override or {})}
    record = "".join(f"{n},{_hash(d)},{len(d)}\n" for n, d in sorted(hashed.items())) + f"{dist}/RECORD,,\n"
    members[f"{dist}/RECORD"] = record.encode()
    path = folder / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def _read(chunks: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(chunks)) as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            out[info.name.rstrip("/")] = (info, data)
    return out


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "demo", "1.0", {
        "demo/__init__.py": b"VALUE = 1\n",
        "demo/cli.py": b"def main():\n    return 0\n",
        "demo-1.0.data/scripts/demo-tool": b"#!python\nprint('tool')\n",
        "demo-1.0.data/data/share/demo/readme.txt": b"shared data\n",
    }, entry_points="[console_scripts]\ndemo = demo.cli:main\n")
    make_wheel(folder, "nvidia-cublas-cu12", "12.8", {"nvidia/__init__.py": b"", "nvidia/cublas/lib.so": b"\x7fELF"})
    make_wheel(folder, "nvidia-cudnn-cu12", "9.10", {"nvidia/__init__.py": b"", "nvidia/cudnn/lib.so": b"\x7fELF2"})
    make_wheel(folder, "nvidia-ml-py", "13.0", {"pynvml.py": b"# NVML\n"})
    make_wheel(folder, "torch", "2.8.0", {"torch/__init__.py": b"__version__ = '2.8.0'\n"},
               metadata="Requires-Dist: nvidia-cublas-cu12==12.8; platform_system == \"Linux\"\n"
                        "Requires-Dist: nvidia-cudnn-cu12==9.10\nRequires-Dist: filelock\n")
    return folder


def test_groups_put_cuda_and_torch_in_layers_of_their_own() -> None:
    cuda = frozenset({"nvidia-cudnn-cu12"})
    assert group_of("nvidia_cudnn_cu12", cuda) == CUDA
    assert group_of("torch") == TORCH and group_of("triton") == TORCH and group_of("torchvision") == TORCH
    assert group_of("numpy", cuda) == REST and group_of("torchaudio-extra", cuda) == REST
    # An NVIDIA wheel torch does not require goes with the rest: the CUDA layer stays shared.
    assert group_of("nvidia-ml-py", cuda) == REST and group_of("nvidia-cuda-nvcc-cu12", cuda) == REST


def test_a_layer_has_every_file_where_an_installer_puts_it(wheels: Path) -> None:
    plan = plan_layer(REST, [wheels / "demo-1.0-py3-none-any.whl"], SCHEME, owner=1000, epoch=EPOCH)
    data = b"".join(stream_layer(plan))
    assert len(data) == plan.size  # the size planned from metadata is the size streamed
    files = _read(data)
    assert files[f"{SITE}/demo/__init__.py"][1] == b"VALUE = 1\n"
    assert files["opt/venv/bin/demo-tool"][1].startswith(b"#!/opt/venv/bin/python\n")  # shebang rewritten
    assert files["opt/venv/bin/demo-tool"][0].mode == 0o755
    launcher = files["opt/venv/bin/demo"][1].decode()
    assert launcher.startswith("#!/opt/venv/bin/python") and "from demo.cli import main" in launcher
    assert files["opt/venv/share/demo/readme.txt"][1] == b"shared data\n"
    assert files[f"{SITE}/demo-1.0.dist-info/INSTALLER"][1] == b"envkit\n"
    record = files[f"{SITE}/demo-1.0.dist-info/RECORD"][1].decode()
    assert f"../../../bin/demo,{_hash(files['opt/venv/bin/demo'][1])}," in record
    assert f"demo/__init__.py,{_hash(b'VALUE = 1' + bytes([10]))},10" in record
    for name, (info, _) in files.items():
        assert info.mtime == EPOCH and info.uname == "" and info.gname == ""
        inside = name == "opt/venv" or name.startswith("opt/venv/")
        assert (info.uid, info.gid) == ((1000, 1000) if inside else (0, 0)), name
    names = [info.name.rstrip("/") for info, _ in files.values()]
    assert names == sorted(names, key=lambda n: n.split("/")) and names[0] == "opt"


def test_same_wheels_give_the_same_layer_whatever_their_order(wheels: Path) -> None:
    paths = sorted(wheels.glob("*.whl"))
    one = plan_layer(REST, paths, SCHEME, owner=1000, epoch=EPOCH)
    two = plan_layer(REST, list(reversed(paths)), SCHEME, owner=1000, epoch=EPOCH)
    assert layer_digest(one) == layer_digest(two)
    other_owner = plan_layer(REST, paths, SCHEME, owner=1001, epoch=EPOCH)
    assert layer_digest(other_owner) != layer_digest(one)


def test_identical_namespace_files_are_shared_and_different_ones_refused(wheels: Path, tmp_path: Path) -> None:
    plans = plan_groups(wheels, SCHEME, owner=1000, epoch=EPOCH)
    assert [p.group for p in plans] == [CUDA, TORCH, REST]
    cuda = _read(b"".join(stream_layer(plans[0])))
    assert f"{SITE}/nvidia/__init__.py" in cuda and f"{SITE}/nvidia/cudnn/lib.so" in cuda
    assert f"{SITE}/pynvml.py" not in cuda  # torch does not require nvidia-ml-py
    clash = tmp_path / "clash"
    clash.mkdir()
    make_wheel(clash, "a", "1", {"shared/x.py": b"a\n"})
    make_wheel(clash, "b", "1", {"shared/x.py": b"b\n"})
    with pytest.raises(UsageError, match="shared/x.py"):
        plan_layer(REST, sorted(clash.glob("*.whl")), SCHEME, owner=1000, epoch=EPOCH)


def test_a_wheel_path_leaving_the_environment_is_refused(tmp_path: Path) -> None:
    path = make_wheel(tmp_path, "escape", "1", {"../../etc/passwd": b"x\n"})
    with pytest.raises(Exception, match="unsafe path"):
        plan_layer(REST, [path], SCHEME, owner=1000, epoch=EPOCH)


def test_compose_sends_only_layers_the_engine_lacks_and_names_each_in_history() -> None:
    from envkit.engine.dockerarchive import chain_ids

    parts = [Part("system-1", diff_id="sha256:" + "1" * 64), Part("python-cuda", diff_id="sha256:" + "2" * 64),
             Part("system-2", diff_id="sha256:" + "3" * 64), Part("python-python", diff_id=None)]
    present = set(chain_ids(["sha256:" + "1" * 64, "sha256:" + "2" * 64]))
    _mark_sent(parts, present)
    assert [p.sent for p in parts] == [False, False, True, True]
    history = [{"created_by": "base"}, {"created_by": "RUN apt"}, {"created_by": "COPY probe"},
               {"created_by": "ENV", "empty_layer": True}]
    assert [h["created_by"] for h in _history(history, 1, [Part("base-1")], [])] == [
        "base", "RUN apt", "COPY probe", "ENV"]

    def python(group: str, wheel: str) -> Part:
        plan = LayerPlan(group=group, prefix="opt/venv", owner=1000, epoch=EPOCH, wheels=[Path(wheel)])
        return Part(f"python-{group}", plan=plan)

    below = [python(CUDA, "nvidia_cublas_cu12-1-py3-none-any.whl"), Part("base-1"),
             python(TORCH, "torch-2-cp311-cp311-linux_x86_64.whl")]
    above = [python(REST, "markdown-3.9-py3-none-any.whl")]
    names = [h["created_by"] for h in _history(history, 1, below, above)]
    # The rest of the Python set sits above the last system layer, under the config's entries.
    assert names == ["envkit python layer cuda: nvidia_cublas_cu12", "base", "envkit python layer torch: torch",
                     "RUN apt", "COPY probe", "envkit python layer python: markdown", "ENV"]


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA])
def test_a_compressed_wheel_gives_the_layer_of_the_stored_one(tmp_path: Path, compression: int) -> None:
    files = {"pkg/__init__.py": b"x = 1\n" * 5000, "pkg/lib.so": bytes(range(256)) * 40000}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stored = make_wheel(tmp_path / "a", "pkg", "1", files)
    packed = make_wheel(tmp_path / "b", "pkg", "1", files, compression=compression)
    assert packed.stat().st_size < stored.stat().st_size
    one = b"".join(stream_layer(plan_layer(REST, [stored], SCHEME, owner=1000, epoch=EPOCH)))
    two = b"".join(stream_layer(plan_layer(REST, [packed], SCHEME, owner=1000, epoch=EPOCH)))
    assert one == two
    assert _read(two)[f"{SITE}/pkg/lib.so"][1] == files["pkg/lib.so"]


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_changed_in_the_wheel_stops_the_stream(tmp_path: Path, compression: int) -> None:
    """Past the lock's hash (a cache file changed after its check): the member's CRC refuses it."""
    data = bytes(range(256)) * 4000
    path = make_wheel(tmp_path, "pkg", "1", {"pkg/lib.so": data}, compression=compression)
    plan = plan_layer(REST, [path], SCHEME, owner=1000, epoch=EPOCH)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("pkg/lib.so")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="pkg/lib.so"):
        b"".join(stream_layer(plan))
