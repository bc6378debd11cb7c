#!/usr/bin/env python3
"""Build benchmark: one run measures every figure, prints a table and writes JSON.

  cold build     `envkit build IMAGE --no-cache` (base image already bootstrapped)
  host install   `uv pip install` of the same locked requirements into a fresh venv, no cache
  plain build    the single-stage Dockerfile a user would write by hand for the same image, on the
                 same base with the same apt pins: `apt-get install` + `uv pip install
                 --require-hashes` of the same lock, `docker build --no-cache`
  rebuild        `envkit build IMAGE` again with nothing changed
  size           image size against (installed size of /opt/venv + the base image)
  engine disk    the engine's layer store after the envkit build (`docker system df`) against the
                 image's size: what the build keeps beyond the image itself

Targets (from the build issues): cold/host <= 1.5, cold/plain <= 1.0, rebuild <= 3 s, size ratio
<= 1.05, engine disk / image <= 1.1. Start from an engine holding only the base image, or the
engine-disk figure counts other images too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def timed(cmd: list[str], **kwargs: object) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return elapsed, proc


def envkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "envkit", *args]


def plain_dockerfile(plan: object) -> str:
    """The single-stage Dockerfile a user would write for the same locked image, by hand."""
    from envkit.image.render import builder_packages, system_packages

    data = plan.render_input  # type: ignore[attr-defined]
    pins = {**data.builder_pins, **data.system_pins}
    names = sorted(set(system_packages(data)) | set(builder_packages(data)))
    packages = [f"{n}={v}" for n, v in sorted(pins.items())] if pins else names
    py = data.python_bin
    return "\n".join([
        f"FROM {plan.base_ref}",  # type: ignore[attr-defined]
        'SHELL ["/bin/bash", "-o", "pipefail", "-c"]',
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(packages) + " && rm -rf /var/lib/apt/lists/*",
        "COPY ca.crt /etc/build-ca.crt",
        "ENV SSL_CERT_FILE=/etc/build-ca.crt PIP_CERT=/etc/build-ca.crt UV_NO_CACHE=1 PIP_NO_CACHE_DIR=1",
        "COPY tools.txt requirements.txt /tmp/",
        f"RUN {py} -m venv /opt/venv && /opt/venv/bin/pip install -q --require-hashes -r /tmp/tools.txt"
        " && /opt/venv/bin/uv pip install --python /opt/venv/bin/python --require-hashes --only-binary :all:"
        " --no-deps -r /tmp/requirements.txt",
        "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
    ])


def plain_build(client: object, plan: object, ca: Path, tag: str) -> float:
    """`docker build --no-cache` of plain_dockerfile(plan); returns seconds. The image is removed."""
    import io
    import tarfile

    from envkit.image.build import TOOLS_LOCK
    from envkit.image.context import proxy_build_args

    files = {
        "Dockerfile": plain_dockerfile(plan).encode(),
        "requirements.txt": plan.requirements.encode(),  # type: ignore[attr-defined]
        "tools.txt": TOOLS_LOCK.read_bytes(),
        "ca.crt": ca.read_bytes(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    api = client.api  # type: ignore[attr-defined]
    start = time.monotonic()
    for chunk in api.build(fileobj=buf, custom_context=True, tag=tag, nocache=True, rm=True, forcerm=True,
                           buildargs=proxy_build_args(), decode=True):
        if "error" in chunk:
            raise SystemExit(f"plain build failed: {chunk['error']}")
    elapsed = time.monotonic() - start
    api.remove_image(tag)
    return elapsed


def layers_bytes(client: object) -> int:
    """Bytes of all layers the engine stores (`docker system df`, Images)."""
    return int(client.df()["LayersSize"])  # type: ignore[attr-defined]


def write_json(path: Path | None, results: dict[str, object]) -> None:
    """Write ``results`` as indented, key-sorted JSON to ``path`` (its folder made); nothing if None."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="pytorch-cuda:2.8")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--ca-bundle", help="CA bundle the plain build trusts (default: as envkit build finds it)")
    args = parser.parse_args()

    from envkit.engine.client import get_client
    from envkit.image.build import ensure_requirements, plan_build

    plan = ensure_requirements(plan_build(args.image, with_requirements=False))
    assert plan.requirements is not None
    client = get_client()
    tag = plan.tag
    from envkit.image.context import detect_ca_bundle

    ca = detect_ca_bundle(args.ca_bundle) or Path("/etc/ssl/certs/ca-certificates.crt")

    print(f"[1/5] plain single-stage uv Dockerfile for {args.image} (docker build --no-cache)", file=sys.stderr)
    plain_s = plain_build(client, plan, ca, "envkit-bench/plain:latest")
    client.api.prune_images(filters={"dangling": True})
    engine_before = layers_bytes(client)

    print(f"[2/5] cold build of {args.image} (--no-cache, empty wheel cache)", file=sys.stderr)
    state = Path(tempfile.mkdtemp(prefix="envkit-bench-state-"))
    env = dict(os.environ, ENVKIT_STATE_DIR=str(state))
    cold_s, proc = timed(envkit("build", args.image, "--no-cache", "--json"), env=env)
    build = json.loads(proc.stdout)
    engine_after = layers_bytes(client)
    # The engine must not hold the first build's layers, or the second would find them there.
    client.api.remove_image(tag)
    client.api.prune_images(filters={"dangling": True})
    print(f"[2/5] cold build of {args.image} again (--no-cache, wheels cached, engine emptied)",
          file=sys.stderr)
    warm_s, proc = timed(envkit("build", args.image, "--no-cache", "--json"), env=env)
    warm = json.loads(proc.stdout)

    print("[3/5] host uv pip install of the same locked set into a fresh venv", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="envkit-bench-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(plan.requirements)
        venv = Path(tmp) / "venv"
        subprocess.run(["uv", "venv", "-q", "--python", f"python{plan.spec.python}", str(venv)], check=True)
        host_s, _ = timed(
            ["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "--require-hashes",
             "--only-binary", ":all:", "--no-deps", "-r", str(req)],
            env=dict(os.environ, UV_NO_CACHE="1"),
        )

    print("[4/5] rebuild with nothing changed", file=sys.stderr)
    rebuild_s, proc = timed(envkit("build", args.image, "--json"), env=env)
    rebuild = json.loads(proc.stdout)
    shutil.rmtree(state, ignore_errors=True)

    print("[5/5] plain single-stage uv Dockerfile again, after the envkit builds", file=sys.stderr)
    client.api.remove_image(tag)
    client.api.prune_images(filters={"dangling": True})
    plain_after_s = plain_build(client, plan, ca, "envkit-bench/plain:latest")
    client.api.prune_images(filters={"dangling": True})
    # The envkit image again for the sizes below (its layers were removed for the fair plain run).
    timed(envkit("build", args.image, "--json"))
    # Both plain builds count: the network and the proxy change over minutes.
    plain_mean = (plain_s + plain_after_s) / 2

    print("[5/5] sizes", file=sys.stderr)
    image = client.images.get(tag)
    du = client.containers.run(tag, ["du", "-sb", "/opt/venv"], remove=True, user="0").decode().split()[0]
    base_size = int(client.images.get(plan.base_ref).attrs["Size"])
    image_size = int(image.attrs["Size"])
    size_ratio = image_size / (int(du) + base_size)

    results = {
        "image": args.image,
        "tag": tag,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "cold_build_s": round(cold_s, 1),
        "host_uv_install_s": round(host_s, 1),
        "cold_over_host": round(cold_s / host_s, 2),
        "plain_dockerfile_build_s": round(plain_mean, 1),
        "plain_dockerfile_runs_s": [round(plain_s, 1), round(plain_after_s, 1)],
        "cold_over_plain": round(cold_s / plain_mean, 2),
        "cold_cached_wheels_s": round(warm_s, 1),
        "cold_cached_wheels_over_plain": round(warm_s / plain_mean, 2),
        "cold_cached_wheels_downloaded": warm.get("wheels_downloaded"),
        "cold_builds_same_id": warm["image_id"] == build["image_id"],
        "cold_phases_s": build["durations"],
        "cold_cached_wheels_phases_s": warm["durations"],
        # What the engine's layer store grew by in the envkit build, the base excluded on both sides.
        "engine_disk_added_bytes": engine_after - engine_before,
        "engine_disk_over_image": round((engine_after - engine_before) / (image_size - base_size), 2),
        # The engine's part alone (the system image) and the compose that follows it.
        "engine_build_s": round(build["durations"]["build"], 1),
        "compose_s": round(build["durations"].get("compose", 0.0), 1),
        "rebuild_s": round(rebuild_s, 2),
        "rebuild_same_id": rebuild["image_id"] == build["image_id"],
        "image_bytes": image_size,
        "venv_bytes": int(du),
        "base_bytes": base_size,
        "size_ratio": round(size_ratio, 3),
        "build_phases_s": build["durations"],
        "targets": {"cold_over_plain": 1.0, "cold_cached_wheels_over_plain": 1.0, "engine_disk_over_image": 1.1,
                    "cold_over_host": 1.5,
                    "rebuild_s": 3.0, "size_ratio": 1.05},
    }
    rows = [
        ("cold build (s)", results["cold_build_s"], ""),
        ("host uv install (s)", results["host_uv_install_s"], ""),
        ("cold / host", results["cold_over_host"], "<= 1.5"),
        ("plain Dockerfile build, mean of two (s)", results["plain_dockerfile_build_s"], ""),
        ("cold / plain Dockerfile (empty wheel cache)", results["cold_over_plain"], "<= 1.0 (layers issue)"),
        ("cold, wheels cached (s)", results["cold_cached_wheels_s"], ""),
        ("cold, wheels cached / plain", results["cold_cached_wheels_over_plain"], "<= 1.0 (layers issue)"),
        ("wheels downloaded by that build", results["cold_cached_wheels_downloaded"], "0"),
        ("both cold builds one image ID", results["cold_builds_same_id"], "True"),
        ("engine disk added / image", results["engine_disk_over_image"], "<= 1.1 (layers issue)"),
        ("engine build of the system part (s)", results["engine_build_s"], ""),
        ("compose after it (s)", results["compose_s"], ""),
        ("rebuild, nothing changed (s)", results["rebuild_s"], "<= 3"),
        ("image / (venv + base)", results["size_ratio"], "<= 1.05"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>10}  {target}")
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    if shutil.which("uv") is None:
        raise SystemExit("uv is needed on the host for the comparison (pip install uv)")
    raise SystemExit(main())
