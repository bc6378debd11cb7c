#!/usr/bin/env python3
"""Layered-build benchmark: the image composed from an engine-built system image and Python layers
envkit writes from the locked wheels (envkit.image.compose), against the plain Dockerfile figure
of bench_build.py.

  wheels     the locked wheels fetched into a host directory (pip download, hashes checked);
             skipped when --wheels names a directory that already holds them
  system     `docker build` of the system part (apt packages, user, envkit's files, empty venv)
  compose    seal the system layers, write the CUDA, torch and rest layers and `docker load` them
  check      `import torch, torchvision` and a small training step in the composed image

With several --image values the images are built one after another and the engine's layer store
is measured after each (`docker system df`), which shows what the family shares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHECK = ("import torch, torchvision; m = torchvision.models.resnet18(num_classes=10); "
         "opt = torch.optim.SGD(m.parameters(), lr=0.1); x = torch.randn(4, 3, 64, 64); "
         "loss = m(x).sum(); loss.backward(); opt.step(); "
         "print(torch.__version__, torchvision.__version__, float(loss))")


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def build_one(client, name: str, wheels_root: Path, say) -> dict:  # type: ignore[no-untyped-def]
    from envkit.image.build import ensure_requirements, make_context, plan_build, stream_context_build
    from envkit.image.compose import base_layer_count, compose_image
    from envkit.image.pylayers import plan_groups
    from envkit.image.render import render_dockerfile
    from envkit.image.wheelcache import download_wheels
    from envkit.incontainer.wheelinstall import Scheme

    figures: dict[str, float | int | str] = {"image": name}
    plan = ensure_requirements(plan_build(name, with_requirements=False))
    data = replace(plan.render_input, python_layers=True, ca_bundle=False)
    plan = replace(plan, render_input=data, dockerfile=render_dockerfile(data), ca_bundle=None)
    wheel_dir = wheels_root / plan.tag.replace("/", "_").replace(":", "_")
    t0 = time.monotonic()
    if not any(wheel_dir.glob("*.whl")):
        req = wheel_dir / "requirements.txt"
        wheel_dir.mkdir(parents=True, exist_ok=True)
        req.write_text(plan.requirements or "")
        download_wheels(req, wheel_dir, python=plan.spec.python, platform=plan.spec.platform, suite="bookworm")
    figures["wheels_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    context = make_context(plan)
    image_id = ""
    for event in stream_context_build(client, context.to_tar(plan.spec.source_date_epoch),
                                      platform=plan.spec.platform, nocache=False):
        if event.kind == "done":
            image_id = event.data["image_id"]
    figures["system_build_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    digests = {p.name: sha256_file(p) for p in wheel_dir.glob("*.whl")}
    scheme = Scheme(prefix="/opt/venv", python="/opt/venv/bin/python", version=plan.spec.python)
    plans = plan_groups(wheel_dir, scheme, owner=plan.spec.user.uid, epoch=plan.spec.source_date_epoch)
    figures["plan_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    result = compose_image(client, client.images.get(image_id).id, plans, digests,
                           base_layers=base_layer_count(client, plan.base_ref),
                           epoch=plan.spec.source_date_epoch, show=lambda e: say(e.message))
    figures["compose_s"] = round(time.monotonic() - t0, 1)
    figures["sent_bytes"] = result.sent_bytes
    figures["image_id"] = result.image_id
    figures["layers"] = result.layers  # type: ignore[assignment]
    client.api.tag(result.image_id, "envkit-bench/layers", plan.tag.split(":")[-1] + "-" + plan.spec.name)
    figures["image_bytes"] = int(client.images.get(result.image_id).attrs["Size"])
    figures["total_s"] = round(sum(float(figures[k]) for k in ("system_build_s", "plan_s", "compose_s")), 1)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", action="append", help="catalog name (repeat for a family)")
    parser.add_argument("--wheels", type=Path, help="directory for the wheels (kept between runs)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--no-check", action="store_true", help="skip running torch in the images")
    args = parser.parse_args()
    from envkit.engine.client import get_client

    client = get_client()
    names = args.image or ["pytorch-cuda:2.8"]
    wheels_root = args.wheels or Path(tempfile.mkdtemp(prefix="envkit-bench-wheels-"))
    runs = []
    before = int(client.df()["LayersSize"])
    for name in names:
        print(f"[{name}]", file=sys.stderr)
        figures = build_one(client, name, wheels_root, lambda m: print("  " + m, file=sys.stderr))
        figures["engine_layers_bytes_after"] = int(client.df()["LayersSize"]) - before
        if not args.no_check:
            out = client.containers.run(figures["image_id"], ["python", "-c", CHECK], remove=True)
            figures["check"] = out.decode().strip()
        runs.append(figures)
        print(json.dumps({k: v for k, v in figures.items() if k != "layers"}), file=sys.stderr)
    results = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": runs,
    }
    if len(runs) > 1:
        first = runs[0]
        results["family_engine_bytes_over_first_image"] = round(
            int(runs[-1]["engine_layers_bytes_after"]) / int(first["image_bytes"]), 2)
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
