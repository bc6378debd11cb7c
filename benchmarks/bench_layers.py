#!/usr/bin/env python3
"""Layer sharing and small changes: what the layered build costs across a family of images.

  family   `envkit build` of each image given (default: the five 2.8 images), one after another;
           the engine's layer store (`docker system df`) after each, against the first image's
           size, and the layers the images share (same diff IDs at the same depth)
  bump     a copy of pytorch-cuda:2.8 with one small dependency at another version, locked and
           built with the wheels cached; its build time, and `envkit diff` of the two images
           (the changed package and the layers that differ)

Start from an engine holding only the base image, or the figures count other images too.
Targets (from the layered-build issue): family disk <= 1.5x one image; bump rebuild <= 30 s with
one changed layer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FAMILY = ["pytorch-cuda:2.8", "pytorch-cuda:2.8-dev", "pytorch-cuda:2.8-devel", "resnet:2.8", "yolo:2.8"]


def envkit(*args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True, text=True, cwd=REPO)
    elapsed = time.monotonic() - start
    if check and proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"envkit {' '.join(args)} failed ({proc.returncode})")
    return elapsed, proc


def layers_bytes(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.df()["LayersSize"])


def family(client, names: list[str]) -> dict:  # type: ignore[no-untyped-def]
    before = layers_bytes(client)
    runs = []
    for name in names:
        print(f"[family] envkit build {name}", file=sys.stderr)
        seconds, proc = envkit("build", name, "--json")
        built = json.loads(proc.stdout)
        layers = client.api.inspect_image(built["image_id"])["RootFS"]["Layers"]
        runs.append({"image": name, "seconds": round(seconds, 1), "image_id": built["image_id"],
                     "image_bytes": built["size"], "layers": layers,
                     "engine_layers_bytes": layers_bytes(client) - before})
    first = runs[0]
    shared = [d for i, d in enumerate(first["layers"]) if all(i < len(r["layers"]) and r["layers"][i] == d
                                                              for r in runs)]
    return {
        "runs": runs,
        "shared_layers": shared,
        "engine_bytes_all": runs[-1]["engine_layers_bytes"],
        "engine_all_over_first_image": round(runs[-1]["engine_layers_bytes"] / first["image_bytes"], 2),
    }


def bump(client, package: str, version: str) -> dict:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="envkit-bump-") as tmp:
        data = yaml.safe_load((REPO / "images" / "pytorch-cuda" / "2.8.yaml").read_text())
        data["tag"] = "2.8-bump"
        data["pip"] = [*data.get("pip", []), f"{package}=={version}"]
        spec = Path(tmp) / "2.8-bump.yaml"
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
        print(f"[bump] envkit lock with {package}=={version}", file=sys.stderr)
        lock_s, _ = envkit("lock", str(spec))
        print("[bump] envkit build", file=sys.stderr)
        build_s, proc = envkit("build", str(spec), "--json")
        built = json.loads(proc.stdout)
        _, original = envkit("build", "pytorch-cuda:2.8", "--json")
        base_id = json.loads(original.stdout)["image_id"]
        print("[bump] envkit diff", file=sys.stderr)
        _, diff = envkit("diff", base_id, built["image_id"], "--json", check=False)
        report = json.loads(diff.stdout)
        a = client.api.inspect_image(base_id)["RootFS"]["Layers"]
        b = client.api.inspect_image(built["image_id"])["RootFS"]["Layers"]
        changed = [i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]]
        return {"package": f"{package}=={version}", "lock_s": round(lock_s, 1), "rebuild_s": round(build_s, 1),
                "durations": built["durations"], "changed_layer_indexes": changed,
                "diff_exit": diff.returncode, "diff": report, "image_id": built["image_id"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", action="append", help="catalog name (repeat; default: the five 2.8 images)")
    parser.add_argument("--bump", default="markdown==3.9", help="PACKAGE==VERSION for the bump run")
    parser.add_argument("--skip-family", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    from envkit.engine.client import get_client

    client = get_client()
    results: dict = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    if not args.skip_family:
        results["family"] = family(client, args.image or FAMILY)
    package, _, version = args.bump.partition("==")
    results["bump"] = bump(client, package, version)
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
