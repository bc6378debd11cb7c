#!/usr/bin/env python3
"""Snapshot and restore benchmark: every figure from one run, printed and written as JSON.

  snapshot        `envkit snapshot IMAGE -o m.json` (median of 3)
  cached build    `envkit build IMAGE` with the image already built (median of 3)
  warm restore    `envkit restore m.json` on the same engine (median of 3; must say identical)
  bundle          `envkit bundle m.json -o env.bundle` (once)
  online cold     `envkit build IMAGE --no-cache` on a second engine emptied first (network on)
  offline cold    `envkit restore env.bundle --offline` on the second engine emptied again

The second engine (its own data-root, scripts/engine.sh) stands in for a fresh machine: both cold
runs start from an engine with no images at all, so both include getting the base (bootstrapped
from the mirror online, loaded from the bundle offline). Whatever the runs leave there is removed.

Targets (snapshot issue): snapshot <= 5 s; warm restore <= 1.2x the cached build; offline cold
restore <= 1.0x the online cold build.

  python benchmarks/bench_restore.py --image pytorch-cuda:2.8 --json benchmarks/results/restore-pytorch-cuda-2.8.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import bench_build  # noqa: E402 (the sibling script: one way to time a command)

REPO = Path(__file__).resolve().parent.parent
SECOND = {
    "ENVKIT_DOCKER_SOCK": "/run/envkit-docker2.sock",
    "ENVKIT_DOCKERD_ROOT": "/var/lib/envkit-docker2",
    "ENVKIT_DOCKERD_EXEC_ROOT": "/run/envkit-docker2",
    "ENVKIT_DOCKERD_LOG": "/var/log/envkit-dockerd2.log",
}


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    # Commands run as a user's would: Python may cache bytecode (an installed envkit has it).
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return bench_build.timed(cmd, env={**base, **(env or {})}, cwd=REPO)


def envkit(*args: str) -> list[str]:
    return bench_build.envkit(*args)


def median_of(n: int, cmd: list[str]) -> tuple[float, list[float], subprocess.CompletedProcess]:
    runs = []
    proc = None
    for _ in range(n):
        seconds, proc = timed(cmd)
        runs.append(round(seconds, 2))
    assert proc is not None
    return statistics.median(runs), runs, proc


def empty_engine(host: str) -> None:
    """Remove every image on the second engine (it exists only for this benchmark and the tests)."""
    ids = subprocess.run(["docker", "-H", host, "images", "-aq"], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "-H", host, "rmi", "-f", *sorted(set(ids))], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="pytorch-cuda:2.8")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    subprocess.run([str(REPO / "scripts" / "engine.sh")], check=True)
    print(f"[1/6] {args.image} built on this engine", file=sys.stderr)
    timed(envkit("build", args.image, "--json"))
    with tempfile.TemporaryDirectory(prefix="envkit-bench-restore-", dir=REPO) as tmp:
        manifest, bundle = Path(tmp) / "m.json", Path(tmp) / "env.bundle"
        print("[2/6] snapshot and cached build", file=sys.stderr)
        snapshot_s, snapshot_runs, _ = median_of(3, envkit("snapshot", args.image, "-o", str(manifest)))
        cached_s, cached_runs, _ = median_of(3, envkit("build", args.image, "--json"))
        print("[3/6] warm restore", file=sys.stderr)
        warm_s, warm_runs, proc = median_of(3, envkit("restore", str(manifest), "--json"))
        warm = json.loads(proc.stdout)
        if not warm["identical"]:
            raise SystemExit("the warm restore did not give the identical image")
        print("[4/6] bundle", file=sys.stderr)
        bundle_s, _ = timed(envkit("bundle", str(manifest), "-o", str(bundle), "--json"))

        subprocess.run([str(REPO / "scripts" / "engine.sh")], check=True, env={**os.environ, **SECOND})
        host = f"unix://{SECOND['ENVKIT_DOCKER_SOCK']}"
        second = {"DOCKER_HOST": host}
        try:
            empty_engine(host)
            print("[5/6] online cold build on the emptied second engine", file=sys.stderr)
            online_s, proc = timed(envkit("build", args.image, "--no-cache", "--json"), env=second)
            online = json.loads(proc.stdout)
            empty_engine(host)
            print("[6/6] offline restore from the bundle on the emptied second engine", file=sys.stderr)
            offline_s, proc = timed(envkit("restore", str(bundle), "--offline", "--json"), env=second)
            offline = json.loads(proc.stdout)
        finally:
            empty_engine(host)
        bundle_bytes = bundle.stat().st_size

    results = {
        "image": args.image,
        "image_id": warm["image_id"],
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "snapshot_s": round(snapshot_s, 2), "snapshot_runs": snapshot_runs,
        "cached_build_s": round(cached_s, 2), "cached_build_runs": cached_runs,
        "warm_restore_s": round(warm_s, 2), "warm_restore_runs": warm_runs,
        "warm_restore_over_cached_build": round(warm_s / cached_s, 3),
        "bundle_s": round(bundle_s, 1), "bundle_bytes": bundle_bytes,
        "online_cold_build_s": round(online_s, 1), "online_cold_durations": online["durations"],
        "online_cold_image_id": online["image_id"],
        "offline_restore_s": round(offline_s, 1), "offline_durations": offline["durations"],
        "offline_identical": offline["identical"],
        "offline_over_online_cold": round(offline_s / online_s, 3),
    }
    rows = [
        ("snapshot (s)", results["snapshot_s"], "<= 5"),
        ("cached build (s)", results["cached_build_s"], ""),
        ("warm restore (s)", results["warm_restore_s"], ""),
        ("warm restore / cached build", results["warm_restore_over_cached_build"], "<= 1.2"),
        ("bundle (s)", results["bundle_s"], f"{bundle_bytes / 1e9:.2f} GB"),
        ("online cold build, fresh engine (s)", results["online_cold_build_s"], ""),
        ("offline restore, fresh engine (s)", results["offline_restore_s"], ""),
        ("offline / online cold", results["offline_over_online_cold"], "<= 1.0"),
        ("offline restore identical", results["offline_identical"], "True"),
    ]
    for name, value, target in rows:
        print(f"{name:<40} {value!s:>12}  {target}")
    bench_build.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
