#!/usr/bin/env python3
"""Build benchmark: one run measures every figure, prints a table and writes JSON.

  cold build     `envkit build IMAGE --no-cache` (base image already bootstrapped)
  host install   `uv pip install` of the same locked requirements into a fresh venv, no cache
  rebuild        `envkit build IMAGE` again with nothing changed
  size           image size against (installed size of /opt/venv + the base image)

Targets (from the build issue): cold/host <= 1.5, rebuild <= 3 s, size ratio <= 1.05.
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


def write_json(path: Path | None, results: dict[str, object]) -> None:
    """Write ``results`` as indented, key-sorted JSON to ``path`` (its folder made); nothing if None."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="pytorch-cuda:2.8")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    from envkit.engine.client import get_client
    from envkit.image.build import ensure_requirements, plan_build

    plan = ensure_requirements(plan_build(args.image, with_requirements=False))
    assert plan.requirements is not None
    client = get_client()
    tag = plan.tag

    print(f"[1/4] cold build of {args.image} (--no-cache)", file=sys.stderr)
    cold_s, proc = timed(envkit("build", args.image, "--no-cache", "--json"))
    build = json.loads(proc.stdout)

    print("[2/4] host uv pip install of the same locked set into a fresh venv", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="envkit-bench-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(plan.requirements)
        venv = Path(tmp) / "venv"
        subprocess.run(["uv", "venv", "-q", "--python", f"python{plan.spec.python}", str(venv)], check=True)
        env = dict(os.environ, UV_NO_CACHE="1")
        host_s, _ = timed(
            ["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "--require-hashes",
             "--only-binary", ":all:", "--no-deps", "-r", str(req)],
            env=env,
        )

    print("[3/4] rebuild with nothing changed", file=sys.stderr)
    rebuild_s, proc = timed(envkit("build", args.image, "--json"))
    rebuild = json.loads(proc.stdout)

    print("[4/4] sizes", file=sys.stderr)
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
        # The engine's part alone (no base bootstrap, no seal) against the same host install.
        "engine_build_s": round(build["durations"]["build"], 1),
        "engine_build_over_host": round(build["durations"]["build"] / host_s, 2),
        "seal_s": round(build["durations"].get("seal", 0.0), 1),
        "seal_over_engine_build": round(build["durations"].get("seal", 0.0) / build["durations"]["build"], 2),
        "rebuild_s": round(rebuild_s, 2),
        "rebuild_same_id": rebuild["image_id"] == build["image_id"],
        "image_bytes": image_size,
        "venv_bytes": int(du),
        "base_bytes": base_size,
        "size_ratio": round(size_ratio, 3),
        "build_phases_s": build["durations"],
        "targets": {"cold_over_host": 1.5, "rebuild_s": 3.0, "size_ratio": 1.05, "seal_over_engine_build": 0.3},
    }
    rows = [
        ("cold build (s)", results["cold_build_s"], ""),
        ("host uv install (s)", results["host_uv_install_s"], ""),
        ("cold / host", results["cold_over_host"], "<= 1.5"),
        ("engine build only / host", results["engine_build_over_host"], ""),
        ("seal (s)", results["seal_s"], ""),
        ("seal / engine build", results["seal_over_engine_build"], "<= 0.3 (repro issue)"),
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
