"""Working inside the built image as people train: pip as the default user, FROM + pip, and the
shipped example (exit codes are tested in test_dev_run_engine.py, the compile rung in
test_verify_engine.py). All of it runs against the one session-wide pytorch-cuda:2.8 build
(tests/conftest.py's torch_image); nothing here builds another torch image.
"""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from pathlib import Path

from tests.conftest import REPO, BuiltImage, run_envkit
from tests.unit.test_lock_mirror import tiny_wheel


def test_the_default_user_pip_installs_a_small_wheel(torch_image: BuiltImage, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    filename, data = tiny_wheel()
    (wheels / filename).write_bytes(data)
    script = (
        f"test \"$(id -u)\" = 1000 && pip --version && pip install --no-index /wheels/{filename} "
        "&& python -c 'import envkit_tiny; print(\"tiny\", envkit_tiny.VALUE)' && which python"
    )
    result = run_envkit(
        "run", torch_image.tag, "-v", f"{wheels}:/wheels:ro", "--", "bash", "-c", script,
        env={"ENVKIT_STATE_DIR": str(tmp_path)}, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "tiny 1" in result.stdout
    assert "/opt/venv/bin/python" in result.stdout


def test_from_the_image_run_pip_install_builds(torch_image: BuiltImage, docker_client) -> None:  # type: ignore[no-untyped-def]
    filename, data = tiny_wheel()
    dockerfile = (
        f"FROM {torch_image.tag}\nCOPY {filename} /tmp/\n"
        f"RUN pip install --no-index /tmp/{filename} && python -c 'import envkit_tiny'\n"
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in (("Dockerfile", dockerfile), (filename, data)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    tag = f"envkit-test/derived:{uuid.uuid4().hex[:8]}"
    image, _ = docker_client.images.build(fileobj=io.BytesIO(buffer.getvalue()), custom_context=True, tag=tag,
                                          rm=True, forcerm=True)
    try:
        output = docker_client.containers.run(tag, ["python", "-c", "import envkit_tiny; print(envkit_tiny.VALUE)"],
                                              remove=True)
        assert output.strip() == b"1"
    finally:
        docker_client.images.remove(image.id, force=True)


def test_the_resnet_example_trains_in_the_runtime_image(torch_image: BuiltImage, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    os.chown(workspace, 1000, 1000)
    train = (
        "python /examples/make_dataset.py --out /workspace/data --classes 3 --per-class 8 --val-per-class 2 "
        "--size 32 && python /examples/train_resnet.py --data /workspace/data --arch resnet18 --image-size 32 "
        "--epochs 1 --batch-size 8 --workers 0 --logdir /workspace/runs/r --checkpoint-dir /workspace/ckpt"
    )
    result = run_envkit(
        "run", torch_image.tag, "-v", f"{workspace}:/workspace", "-v", f"{REPO / 'examples'}:/examples:ro",
        "--", "bash", "-c", train, env={"ENVKIT_STATE_DIR": str(tmp_path / "state")}, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list((workspace / "runs" / "r").glob("events.out.tfevents.*"))
