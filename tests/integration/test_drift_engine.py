"""Container drift on the real engine: packages pip-installed into a running container are captured
by `snapshot --container` and restored as a sealed layer on top of the identical base image.

The test changes the environment the way a user does: wheels downloaded on the host are copied in
(`docker cp`) and the image's own pip installs them as the image's default user (uid 1000 owns
/opt/venv), with no index.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import docker.errors

from envkit.record.drift import PYPI_SIMPLE, SIMPLE_JSON, http_session
from envkit.record.manifest import SCHEMA_VERSION
from envkit.record.snapshot import content_digest
from tests.conftest import BuiltImage, image_ids, run_envkit


def _wheel_from_pypi(name: str, version: str, directory: Path) -> Path:
    session = http_session()
    project = session.get(PYPI_SIMPLE.format(name=name), headers={"Accept": SIMPLE_JSON}, timeout=60).json()
    file = next(f for f in project["files"]
                if f["filename"].startswith(f"{name}-{version}-") and f["filename"].endswith("-none-any.whl"))
    path = directory / file["filename"]
    path.write_bytes(session.get(file["url"], timeout=120).content)
    return path


def _copy_in(container: Any, files: list[Path], directory: str) -> None:
    """`docker cp` of a few host files into /tmp/<directory> of the container."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in files:
            archive.add(path, arcname=f"{directory}/{path.name}")
    assert container.put_archive("/tmp", buffer.getvalue())


def _pip_install(container: Any, directory: str, *requirements: str) -> None:
    command = ["pip", "install", "--no-index", "--find-links", f"/tmp/{directory}", "--no-cache-dir",
               "--disable-pip-version-check", *requirements]
    code, output = container.exec_run(command)  # the image's user, uid 1000
    assert code == 0, output.decode(errors="replace")


def _local_wheel(directory: Path) -> Path:
    """A wheel that exists nowhere on PyPI, as a user's own build would be."""
    dist = "envkit_drift_local-0.1.dist-info"
    files = {"envkit_drift_local.py": b"X = 1\n",
             f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: envkit-drift-local\nVersion: 0.1\n\n",
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    path = directory / "envkit_drift_local-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{dist}/RECORD"]))
    return path


def _made_by_a_drift_build(client: Any, image_id: str) -> bool:
    try:
        history = client.api.history(image_id)
    except docker.errors.ImageNotFound:
        return False
    return any("envkit-drift" in (h.get("CreatedBy") or "") or "io.envkit.drift" in (h.get("CreatedBy") or "")
               for h in history)


def _remove_drift_images(client: Any, before: set[str], known: set[str]) -> None:
    """Only what this test made: the drift images it was told of, and the drift build's stages.

    Removing them also removes their untagged parents that nothing else uses.
    """
    for _ in range(3):
        mine = {i for i in image_ids(client) - before if i in known or _made_by_a_drift_build(client, i)}
        if not mine:
            return
        for image_id in mine:
            try:
                client.api.remove_image(image_id, force=True)
            except docker.errors.APIError:
                continue


def _image_python(client: Any, image: str, code: str) -> str:
    return client.containers.run(image, ["python", "-c", code], remove=True, network_disabled=True).decode().strip()


def test_container_drift_is_captured_and_restored(
    torch_image: BuiltImage, docker_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    client = docker_client
    before = image_ids(client)
    image_filelock = _image_python(client, torch_image.tag, "import filelock; print(filelock.__version__)")
    new_filelock = "3.20.0" if image_filelock != "3.20.0" else "3.19.1"
    wheels = [_wheel_from_pypi("six", "1.17.0", tmp_path), _wheel_from_pypi("filelock", new_filelock, tmp_path)]
    name = f"envkit-test-drift-{uuid.uuid4().hex[:8]}"
    target = f"envkit-test/drift:{uuid.uuid4().hex[:8]}"
    container = client.containers.run(torch_image.tag, ["sleep", "infinity"], name=name, detach=True)
    known: set[str] = set()
    try:
        _copy_in(container, wheels, "wheels")
        assert container.exec_run(["id", "-u"])[1].decode().strip() == "1000"
        _pip_install(container, "wheels", "six==1.17.0", f"filelock=={new_filelock}")

        manifest_path = tmp_path / "drift.json"
        snap = run_envkit("snapshot", "--container", name, "-o", str(manifest_path))
        assert snap.returncode == 0, snap.stderr
        manifest = json.loads(manifest_path.read_text())
        assert manifest["schema_version"] == SCHEMA_VERSION and manifest["digest"] == content_digest(manifest)
        assert manifest["image"]["id"] == torch_image.image_id
        drift = manifest["drift"]
        locked = {w["name"]: w for w in drift["wheels"]}
        assert sorted(locked) == ["filelock", "six"]
        assert locked["filelock"]["image_version"] == image_filelock
        assert locked["six"]["image_version"] is None and locked["six"]["sha256"].startswith("sha256:")
        assert drift["removed"] == {}
        assert drift["python_packages"]["six"] == "1.17.0"
        assert drift["python_packages"]["filelock"] == new_filelock
        assert drift["docker_diff"]["added"] > 0  # the copied wheels, six's files: counted, not restored
        assert manifest["python_packages"]["filelock"]["version"] == image_filelock  # the image's own set

        bundle = str(torch_image.ca_bundle)
        restored = run_envkit("restore", str(manifest_path), "--tag", target, "--ca-bundle", bundle, "--json")
        assert restored.returncode == 0, restored.stderr[-3000:]
        result = json.loads(restored.stdout)
        assert result["identical"] is True and result["image_id"] == torch_image.image_id
        drift_id = result["drift"]["image_id"]
        known |= {drift_id, result["drift"]["unsealed_id"]}
        assert "restored base identical" in restored.stderr and "drift layer: 2 packages" in restored.stderr

        base_layers = manifest["image"]["layers"]
        layers = client.api.inspect_image(target)["RootFS"]["Layers"]
        assert client.api.inspect_image(target)["Id"] == drift_id
        assert layers[: len(base_layers)] == base_layers and len(layers) > len(base_layers)
        assert result["drift"]["layers"] == layers[len(base_layers):]
        versions = _image_python(client, target, "import six, filelock; print(six.__version__, filelock.__version__)")
        assert versions == f"1.17.0 {new_filelock}"
        leftovers = client.containers.run(
            # Debian's own pip and setuptools wheels (/usr/share/python-wheels) make the image's venv.
            target, ["sh", "-c", "ls -d /stage /tmp/envkit-drift 2>/dev/null; "
                     "find / -xdev -name '*.whl' -not -path '/usr/share/python-wheels/*'; "
                     f"ls /opt/venv/lib/python3.11/site-packages | grep -x 'filelock-{image_filelock}.dist-info'"
                     "; true"],
            remove=True, network_disabled=True,
        ).decode()
        assert leftovers.strip() == ""
        assert client.api.inspect_image(target)["Config"]["User"] == "1000:1000"

        # Deterministic: with the drift images gone, the same manifest builds the same image again.
        client.api.remove_image(target)
        client.api.remove_image(result["drift"]["unsealed_id"], force=True)
        again = run_envkit("restore", str(manifest_path), "--tag", target, "--ca-bundle", bundle, "--json")
        assert again.returncode == 0, again.stderr[-3000:]
        second = json.loads(again.stdout)["drift"]
        known |= {second["image_id"], second["unsealed_id"]}
        assert second["unsealed_id"] != result["drift"]["unsealed_id"]  # really rebuilt and resealed
        assert second["image_id"] == drift_id

        # A package that is on no index cannot be locked: exit 2, naming it, and no manifest.
        local = _local_wheel(tmp_path)
        _copy_in(container, [local], "local")
        _pip_install(container, "local", "envkit-drift-local==0.1")
        refused = run_envkit("snapshot", "--container", name, "-o", str(tmp_path / "refused.json"))
        assert refused.returncode == 2, refused.stderr
        assert "envkit-drift-local" in refused.stderr and "index" in refused.stderr
        assert not (tmp_path / "refused.json").exists()
    finally:
        container.remove(force=True)
        try:
            client.api.remove_image(target)
        except docker.errors.ImageNotFound:
            pass
        _remove_drift_images(client, before, known)


def test_snapshot_of_a_missing_container_exits_2(tmp_path: Path) -> None:
    result = run_envkit("snapshot", "--container", "envkit-test-absent-container", "-o", str(tmp_path / "m.json"))
    assert result.returncode == 2
    assert "envkit-test-absent-container" in result.stderr
    assert not (tmp_path / "m.json").exists()
