"""Container drift: what changed, which wheel is locked, manifests 1 and 2, the in-image installer."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from envkit.cli.app import main
from envkit.errors import IntegrityError, UsageError
from envkit.record import drift as drift_mod
from envkit.record.drift import (
    REMOVE_SCRIPT,
    DiffCounts,
    Drift,
    LockedWheel,
    apt_changes,
    choose_wheel,
    compare_packages,
    drift_tag,
    files_from_json,
    files_from_simple,
    glibc_version,
    image_tags,
    render_drift_dockerfile,
)
from envkit.record.snapshot import SCHEMA_VERSION, content_digest, read_manifest, write_manifest
from envkit.resources import incontainer_dir
from tests.unit.test_record_snapshot import _manifest

INSTALLER = incontainer_dir() / "wheelinstall.py"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
TAGS = image_tags("3.11", (2, 36), "x86_64")


# ------------------------------------------------------------------------------------------------
# What changed


def test_added_changed_and_removed_are_told_apart() -> None:
    image = {"torch": {"version": "2.8.0"}, "filelock": {"version": "3.19.1"}, "mpmath": {"version": "1.3.0"}}
    container = {"torch": {"version": "2.8.0"}, "filelock": {"version": "3.18.0"}, "six": {"version": "1.17.0"}}
    changes = compare_packages(image, container)
    assert changes.added == {"six": "1.17.0"}
    assert changes.changed == {"filelock": ("3.19.1", "3.18.0")}
    assert changes.removed == {"mpmath": "1.3.0"}
    assert compare_packages(image, image).empty


def test_apt_changes_are_listed_for_information() -> None:
    lines = apt_changes({"curl": "1", "less": "2", "vim": "3"}, {"curl": "1", "less": "2b", "jq": "4"})
    assert lines == ["jq: added 4", "less: 2 -> 2b", "vim: removed 3"]


# ------------------------------------------------------------------------------------------------
# Which wheel fits the image


def test_image_tags_prefer_the_interpreter_then_abi3_then_pure() -> None:
    assert TAGS[0] == "cp311-cp311-manylinux_2_36_x86_64"
    assert "manylinux_2_37" not in " ".join(TAGS)
    order = [TAGS.index(t) for t in ("cp311-cp311-manylinux2014_x86_64", "cp311-abi3-manylinux_2_17_x86_64",
                                     "cp38-abi3-manylinux_2_28_x86_64", "py3-none-any")]
    assert order == sorted(order)
    assert not any(t.startswith(("cp312", "cp310-cp310")) for t in TAGS)
    assert glibc_version({"libc6": "2.36-9+deb12u10"}) == (2, 36)
    assert glibc_version({}) == (2, 17)


def _file(filename: str, packagetype: str = "bdist_wheel") -> dict[str, Any]:
    digest = hashlib.sha256(filename.encode()).hexdigest()
    return {"filename": filename, "packagetype": packagetype, "digests": {"sha256": digest},
            "url": f"https://files.pythonhosted.org/packages/xx/{filename}"}


def _choose(release: dict[str, Any], name: str, version: str, **kwargs: Any) -> LockedWheel:
    return choose_wheel(files_from_json(release), TAGS, name=name, version=version, **kwargs)


def test_the_wheel_for_cp311_manylinux_x86_64_is_chosen() -> None:
    release = {"urls": [
        _file("numpy-2.3.2.tar.gz", "sdist"),
        _file("numpy-2.3.2-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"),
        _file("numpy-2.3.2-cp311-cp311-musllinux_1_2_x86_64.whl"),
        _file("numpy-2.3.2-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl"),
        _file("numpy-2.3.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"),
        _file("numpy-2.3.2-cp311-cp311-win_amd64.whl"),
        _file("numpy-2.3.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
    ]}
    wheel = _choose(release, "numpy", "2.3.2", image_version="2.1.0")
    assert wheel.filename == "numpy-2.3.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
    assert wheel.sha256 == "sha256:" + hashlib.sha256(wheel.filename.encode()).hexdigest()
    assert wheel.url.endswith(wheel.filename) and wheel.image_version == "2.1.0"


def test_a_pure_wheel_fits_and_an_sdist_only_release_is_refused() -> None:
    pure = {"urls": [_file("six-1.17.0.tar.gz", "sdist"), _file("six-1.17.0-py2.py3-none-any.whl")]}
    assert _choose(pure, "six", "1.17.0").filename == "six-1.17.0-py2.py3-none-any.whl"
    with pytest.raises(UsageError, match="no wheel") as info:
        _choose({"urls": [_file("x-1.0.tar.gz", "sdist")]}, "x", "1.0")
    assert info.value.exit_code == 2
    with pytest.raises(UsageError):
        _choose({"urls": [_file("y-1.0-cp312-cp312-manylinux_2_17_x86_64.whl")]}, "y", "1.0")


def test_a_release_without_sha256_is_an_integrity_error() -> None:
    file = _file("six-1.17.0-py3-none-any.whl")
    file["digests"] = {"md5": "0" * 32}
    with pytest.raises(IntegrityError):
        _choose({"urls": [file]}, "six", "1.17.0")


def test_simple_index_files_are_filtered_by_version_and_urls_made_absolute() -> None:
    project = {"versions": ["3.19.1", "3.20.0"], "files": [
        {"filename": "filelock-3.19.1-py3-none-any.whl", "url": "../../packages/a/filelock-3.19.1-py3-none-any.whl",
         "hashes": {"sha256": "1" * 64}},
        {"filename": "filelock-3.20.0.tar.gz", "url": "https://files.example/f.tar.gz", "hashes": {"sha256": "2" * 64}},
        {"filename": "filelock-3.20.0-py3-none-any.whl", "url": "https://files.example/filelock-3.20.0-py3-none-any.whl",
         "hashes": {"sha256": "3" * 64}},
    ]}
    files = files_from_simple(project, "3.20.0", "https://pypi.org/simple/filelock/")
    assert [f.filename for f in files] == ["filelock-3.20.0-py3-none-any.whl"]
    old = files_from_simple(project, "3.19.1", "https://pypi.org/simple/filelock/")
    assert old[0].url == "https://pypi.org/packages/a/filelock-3.19.1-py3-none-any.whl"


class _Response:
    def __init__(self, status: int, url: str, body: dict[str, Any] | None = None) -> None:
        self.status_code = status
        self.url = url
        self._body = body or {}

    def json(self) -> dict[str, Any]:
        return self._body


class _Session:
    """PyPI with its per-version JSON API answering ``json_status``, and a simple index."""

    def __init__(self, json_status: int, simple: dict[str, Any] | None = None) -> None:
        self.json_status = json_status
        self.simple = simple
        self.urls: list[str] = []

    def get(self, url: str, timeout: int, headers: dict[str, str] | None = None) -> _Response:
        self.urls.append(url)
        if "/simple/" in url:
            return _Response(200 if self.simple else 404, url, self.simple)
        return _Response(self.json_status, url, {"urls": [_file("six-1.17.0-py2.py3-none-any.whl")]})


def test_a_package_not_on_pypi_is_a_usage_error() -> None:
    session = _Session(404)
    changes = compare_packages({}, {"mylocal": {"version": "0.1.dev0"}})
    with pytest.raises(UsageError, match="not on PyPI") as info:
        drift_mod.lock_changes(changes, TAGS, session)  # type: ignore[arg-type]
    assert info.value.exit_code == 2
    assert "index" in (info.value.hint or "")
    assert session.urls == ["https://pypi.org/pypi/mylocal/0.1.dev0/json", "https://pypi.org/simple/mylocal/"]
    local_build = _Session(404, {"versions": ["0.1"], "files": [
        {"filename": "mylocal-0.1-py3-none-any.whl", "url": "https://f/x.whl", "hashes": {"sha256": "1" * 64}}]})
    with pytest.raises(UsageError, match="not on PyPI"):
        drift_mod.lock_changes(changes, TAGS, local_build)  # type: ignore[arg-type]


def test_changed_packages_are_locked_with_their_image_version() -> None:
    changes = compare_packages({"six": {"version": "1.16.0"}}, {"six": {"version": "1.17.0"}})
    [wheel] = drift_mod.lock_changes(changes, TAGS, _Session(200))  # type: ignore[arg-type]
    assert (wheel.name, wheel.version, wheel.image_version) == ("six", "1.17.0", "1.16.0")


def test_the_simple_index_is_used_when_the_json_api_has_no_such_release() -> None:
    simple = {"versions": ["1.17.0"], "files": [
        {"filename": "six-1.17.0-py2.py3-none-any.whl", "url": "https://f/six.whl", "hashes": {"sha256": "4" * 64}}]}
    changes = compare_packages({}, {"six": {"version": "1.17.0"}})
    [wheel] = drift_mod.lock_changes(changes, TAGS, _Session(404, simple))  # type: ignore[arg-type]
    assert (wheel.url, wheel.sha256) == ("https://f/six.whl", "sha256:" + "4" * 64)


# ------------------------------------------------------------------------------------------------
# Manifests, schema 1 and 2


def _drift() -> Drift:
    wheel = LockedWheel(name="six", version="1.17.0", filename="six-1.17.0-py2.py3-none-any.whl",
                        url="https://files.pythonhosted.org/packages/six-1.17.0-py2.py3-none-any.whl",
                        sha256="sha256:" + "f" * 64)
    return Drift(container_id="a" * 64, container_name="work", wheels=[wheel], removed={"mpmath": "1.3.0"},
                 python_packages={"six": "1.17.0", "torch": "2.8.0"},
                 docker_diff=DiffCounts(added=12, changed=3, deleted=1))


def test_schema_1_manifests_still_read_and_verify(tmp_path: Path) -> None:
    data = _manifest().model_dump(mode="json")
    del data["drift"]
    data["schema_version"] = 1
    data["digest"] = content_digest(data)
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data))
    manifest = read_manifest(path)
    assert manifest.schema_version == 1 and manifest.drift is None


def test_schema_2_without_drift_verifies_and_round_trips(tmp_path: Path) -> None:
    assert SCHEMA_VERSION >= 2
    path = tmp_path / "m.json"
    write_manifest(path, _manifest())
    data = json.loads(path.read_text())
    assert data["drift"] is None and data["digest"] == content_digest(data)
    assert read_manifest(path).drift is None


def test_drift_round_trips_and_is_covered_by_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_manifest(path, _manifest().model_copy(update={"drift": _drift()}))
    loaded = read_manifest(path)
    assert loaded.drift == _drift()
    edited = tmp_path / "edited.json"
    edited.write_text(path.read_text().replace('"1.17.0"', '"1.16.0"', 1))
    with pytest.raises(IntegrityError, match="digest"):
        read_manifest(edited)
    data = json.loads(path.read_text())
    data["drift"]["surprise"] = 1
    data["digest"] = content_digest(data)
    edited.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="schema"):
        read_manifest(edited)


# ------------------------------------------------------------------------------------------------
# Restore: the Dockerfile and the default tag


def test_drift_dockerfile_stages_wheels_and_removes_replaced_dists() -> None:
    base = "sha256:" + "b" * 64
    text = render_drift_dockerfile(base, _drift(), user="1000:1000")
    lines = text.splitlines()
    assert f"FROM {base} AS staging" in lines and lines.count(f"FROM {base}") == 1
    run_remove = next(line for line in lines if line.startswith("RUN ") and "-c" in line)
    argv = json.loads(run_remove[4:])
    assert argv[argv.index("-c") + 1] == REMOVE_SCRIPT and argv[-2:] == ["/opt/venv", "mpmath"]
    assert "COPY --from=staging /stage/opt/venv/ /opt/venv/" in lines
    final = lines[lines.index(f"FROM {base}"):]
    assert final.index("USER 0:0") < final.index(run_remove) < final.index("USER 1000:1000")
    assert "wheels" not in "\n".join(final) and "ca-bundle" not in text
    assert lines[-1] == f'LABEL "io.envkit.drift"="{_drift().digest()}"'


def test_only_removals_need_no_staging_stage() -> None:
    only_removed = _drift().model_copy(update={"wheels": []})
    text = render_drift_dockerfile("sha256:" + "b" * 64, only_removed, user="")
    assert "staging" not in text and "USER" not in text and "RUN" in text


def test_drift_tag_defaults_to_the_base_tag_with_drift() -> None:
    manifest = _manifest()
    assert drift_tag(manifest, None) == "envkit/x:1-drift"
    assert drift_tag(manifest, "me/mine:2") == "me/mine:2"


def test_snapshot_needs_exactly_one_of_target_and_container(tmp_path: Path) -> None:
    out = str(tmp_path / "m.json")
    assert main(["snapshot", "-o", out]) == 2
    assert main(["snapshot", "envkit/x:1", "--container", "abc", "-o", out]) == 2


# ------------------------------------------------------------------------------------------------
# The installer and the remover, run here on a wheel made with zipfile


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(directory: Path, version: str, modules: dict[str, str], *, tamper: bool = False) -> Path:
    dist_info = f"tinypkg-{version}.dist-info"
    files: dict[str, bytes] = {f"tinypkg/{name}": text.encode() for name, text in modules.items()}
    files[f"tinypkg-{version}.data/scripts/tiny-tool"] = b"#!python\nprint('tool')\n"
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: TinyPkg\nVersion: {version}\n\n".encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist_info}/entry_points.txt"] = b"[console_scripts]\ntiny = tinypkg.cli:main\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for name, data in sorted(files.items()):
        writer.writerow([name, _hash(data), len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    if tamper:
        files["tinypkg/__init__.py"] += b"# changed after RECORD was written\n"
    path = directory / f"tinypkg-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info, data)
        archive.writestr(f"{dist_info}/RECORD", buffer.getvalue())
    return path


def _install(wheel: Path, root: str, prefix: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "-S", "-B", str(INSTALLER), "--root", root, "--prefix", str(prefix), str(wheel)],
        capture_output=True, text=True,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


V1 = {"__init__.py": "VERSION = '1'\n", "cli.py": "def main():\n    print('tiny 1')\n", "old.py": "X = 1\n"}
V2 = {"__init__.py": "VERSION = '2'\n", "cli.py": "def main():\n    print('tiny 2')\n"}


def test_installer_lays_out_a_wheel_like_an_installer(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "1.0", V1)
    result = _install(wheel, str(tmp_path / "root"), "/opt/venv")
    assert result.returncode == 0, result.stderr
    venv = tmp_path / "root" / "opt" / "venv"
    site = venv / "lib" / f"python{PY}" / "site-packages"
    assert (site / "tinypkg" / "__init__.py").read_text() == "VERSION = '1'\n"
    dist_info = site / "tinypkg-1.0.dist-info"
    assert (dist_info / "INSTALLER").read_text() == "envkit\n"
    assert not any(p.name.endswith(".data") for p in site.iterdir())
    tool = (venv / "bin" / "tiny-tool").read_text()
    assert tool.startswith("#!/opt/venv/bin/python\n") and (venv / "bin" / "tiny-tool").stat().st_mode & 0o111
    launcher = (venv / "bin" / "tiny").read_text()
    assert "from tinypkg.cli import main" in launcher and "sys.exit(main())" in launcher
    pyc = next((site / "tinypkg" / "__pycache__").glob("cli.*.pyc")).read_bytes()
    assert int.from_bytes(pyc[4:8], "little") == 0b11  # checked-hash: no time in the header

    rows = list(csv.reader((dist_info / "RECORD").read_text().splitlines()))
    recorded = {row[0]: row[1] for row in rows}
    installed = {p.relative_to(site).as_posix() if p.is_relative_to(site) else "../../../bin/" + p.name
                 for p in venv.rglob("*") if p.is_file()}
    assert set(recorded) == installed
    for rel, digest in recorded.items():
        if not rel.endswith("/RECORD"):
            assert digest == _hash((site / rel).resolve().read_bytes()), rel
    assert rows == sorted(rows)


def test_installer_output_is_the_same_every_time(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "1.0", V1)
    for root in ("a", "b"):
        assert _install(wheel, str(tmp_path / root), "/opt/venv").returncode == 0
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_installer_refuses_a_file_that_does_not_match_the_wheel_record(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "1.0", V1, tamper=True)
    result = _install(wheel, str(tmp_path / "root"), "/opt/venv")
    assert result.returncode == 1
    assert "does not match its RECORD hash" in result.stderr


def test_remove_then_install_replaces_a_version_completely(tmp_path: Path) -> None:
    """What a changed version does in the image: the old dist's files go, the new ones come."""
    prefix = tmp_path / "venv"
    site = prefix / "lib" / f"python{PY}" / "site-packages"
    assert _install(make_wheel(tmp_path, "1.0", V1), "", prefix).returncode == 0
    (site / "other.py").write_text("KEEP = 1\n")
    assert (site / "tinypkg" / "__pycache__").is_dir()

    removed = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", REMOVE_SCRIPT, str(prefix), "tinypkg"],
                             capture_output=True, text=True)
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in site.iterdir()) == ["other.py"]
    assert sorted(p.name for p in (prefix / "bin").iterdir()) == []

    v2 = tmp_path / "v2"
    v2.mkdir()
    assert _install(make_wheel(v2, "2.0", V2), "", prefix).returncode == 0
    assert not (site / "tinypkg" / "old.py").exists()
    assert not list((site / "tinypkg" / "__pycache__").glob("old.*"))
    assert (site / "tinypkg-2.0.dist-info").is_dir() and not (site / "tinypkg-1.0.dist-info").exists()


def test_removing_a_dist_that_is_not_installed_fails(tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    (prefix / "lib" / f"python{PY}" / "site-packages").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", REMOVE_SCRIPT, str(prefix), "ghost"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "ghost" in result.stderr
