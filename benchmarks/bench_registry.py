#!/usr/bin/env python3
"""Registry benchmark: every figure from one run, printed and written as JSON.

  push            `envkit push IMAGE REGISTRY/REPO:TAG` to an empty registry (seconds; bytes the
                  registry stored, measured on its disk; layers sent)
  snapshot        `envkit snapshot IMAGE` after the push: the manifest names the location
  restore by pull `envkit restore m.json --from-registry` on a second engine emptied first
  restore by build `envkit restore m.json --rebuild` on the second engine emptied again
  second push     `envkit push SECOND ...` to the same registry after the first (seconds, bytes the
                  registry stored for it, layers sent and layers it already had)

The registry is Debian's docker-registry on loopback over plain HTTP (scripts/registry.sh), its
storage in a temporary directory; the second engine (scripts/engine.sh, its own data-root) stands
in for a new machine. Everything the run creates is removed at the end: the registry and its
storage, and every image on the second engine (a push leaves no tag on this engine).

  python benchmarks/bench_registry.py --image pytorch-cuda:2.8 --second yolo:2.8 \\
      --json benchmarks/results/registry-pytorch-cuda-2.8.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import bench_build  # noqa: E402 (the sibling script: one way to time a command)
import bench_restore  # noqa: E402 (the second engine and how it is emptied)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def stored_bytes(storage: Path) -> int:
    """Bytes of blobs the registry holds (what was sent to it, compressed as it was sent)."""
    return sum(p.stat().st_size for p in storage.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_tag(name: str) -> str:
    from envkit.spec.catalog import image_ref_for

    return image_ref_for(name)


def engine_has(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def _restored_id(stderr: str) -> str | None:
    """The image ID a mismatched restore names in its error message."""
    found = re.search(r"restored\s+(sha256:[0-9a-f]{64})", " ".join(stderr.split()))
    return found.group(1) if found else None


def derive(image: str) -> str:
    """IMAGE plus one layer of 1 MB of random bytes: what a code change on the same stack looks like."""
    tag = f"envkit-bench/derived:{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="envkit-bench-derived-") as context:
        Path(context, "code.bin").write_bytes(os.urandom(1 << 20))
        Path(context, "Dockerfile").write_text(f"FROM {image}\nCOPY code.bin /opt/code/code.bin\n")
        subprocess.run(["docker", "build", "-q", "-t", tag, context], check=True, capture_output=True)
    return tag


def push(image: str, target: str, env: dict[str, str], storage: Path) -> dict[str, object]:
    before = stored_bytes(storage)
    seconds, proc = bench_restore.timed(bench_build.envkit("push", image, target, "--json"), env=env)
    data = json.loads(proc.stdout)
    return {**data, "wall_s": round(seconds, 1), "registry_bytes_added": stored_bytes(storage) - before}


def note(name: str, value: object) -> None:
    """Each figure on stderr as soon as it is measured, so a run that stops later keeps it."""
    print(f"  {name}: {json.dumps(value, sort_keys=True)}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="pytorch-cuda:2.8")
    parser.add_argument("--second", default="yolo:2.8", help="the second image of the family ('' to skip); "
                        "it must be built already. 'derived' builds one here: IMAGE plus a 1 MB layer "
                        "(a code change on the same stack), removed afterwards")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the restore-by-rebuild run")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    first = image_tag(args.image)
    if not engine_has(first):
        raise SystemExit(f"{first} is not on this engine: envkit build {args.image}")
    derived = args.second == "derived"
    second = derive(first) if derived else image_tag(args.second) if args.second else None
    if second is not None and not engine_has(second):
        print(f"{second} is not on this engine: the second push is skipped", file=sys.stderr)
        second = None

    results: dict[str, object] = {
        "image": args.image,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "engine": subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                             capture_output=True, text=True).stdout.strip()},
    }
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="envkit-bench-registry-") as tmp:
        work = Path(tmp)
        env = {"ENVKIT_STATE_DIR": str(work / "state")}
        subprocess.run([str(REPO / "scripts" / "registry.sh"), "start", str(work / "registry"), address], check=True)
        storage = work / "registry" / "storage"
        host = f"unix://{bench_restore.SECOND['ENVKIT_DOCKER_SOCK']}"
        try:
            print(f"[1/5] push {first} to an empty registry", file=sys.stderr)
            target = f"{address}/{first}"
            results["push"] = push(first, target, env, storage)
            note("push", results["push"])

            print("[2/5] snapshot (names the registry location)", file=sys.stderr)
            manifest = work / "m.json"
            bench_restore.timed(bench_build.envkit("snapshot", args.image, "-o", str(manifest)), env=env)
            locations = json.loads(manifest.read_text())["image"].get("locations", [])
            results["manifest_locations"] = locations
            note("manifest_locations", locations)

            subprocess.run([str(REPO / "scripts" / "engine.sh")], check=True, env={**os.environ, **bench_restore.SECOND})
            on_second = {**env, "DOCKER_HOST": host}
            bench_restore.empty_engine(host)
            print("[3/5] restore by pull on the emptied second engine", file=sys.stderr)
            seconds, proc = bench_restore.timed(
                bench_build.envkit("restore", str(manifest), "--from-registry", "--json"), env=on_second)
            pulled = json.loads(proc.stdout)
            results["restore_by_pull"] = {"wall_s": round(seconds, 1), "identical": pulled["identical"],
                                          "bytes_downloaded": pulled.get("bytes_downloaded"),
                                          "image_id": pulled["image_id"]}
            note("restore_by_pull", results["restore_by_pull"])
            bench_restore.empty_engine(host)
            if not args.no_rebuild:
                print("[4/5] restore by rebuild on the emptied second engine", file=sys.stderr)
                # Exit 9 (rebuilt, but not the manifest's ID) still measures what a rebuild costs.
                started = time.monotonic()
                proc = subprocess.run(bench_build.envkit("restore", str(manifest), "--rebuild", "--json"),
                                      capture_output=True, text=True, cwd=REPO, env={**os.environ, **on_second})
                seconds = time.monotonic() - started
                if proc.returncode not in (0, 9):
                    sys.stderr.write(proc.stderr[-4000:])
                    raise SystemExit(f"restore --rebuild failed ({proc.returncode})")
                built = (json.loads(proc.stdout) if proc.returncode == 0
                         else {"identical": False, "image_id": _restored_id(proc.stderr)})
                results["restore_by_rebuild"] = {"wall_s": round(seconds, 1), "identical": built["identical"],
                                                 "exit": proc.returncode, "durations": built.get("durations"),
                                                 "image_id": built["image_id"]}
                note("restore_by_rebuild", results["restore_by_rebuild"])
                results["pull_over_rebuild"] = round(
                    results["restore_by_pull"]["wall_s"] / max(seconds, 0.01), 3)  # type: ignore[index]
            bench_restore.empty_engine(host)

            if second is not None:
                print(f"[5/5] push {second} after {first}", file=sys.stderr)
                target2 = f"{address}/{second}"
                results["second"] = args.second
                results["second_push"] = push(second, target2, env, storage)
                note("second_push", results["second_push"])
        finally:
            if derived and second is not None:
                subprocess.run(["docker", "rmi", second], capture_output=True)
            bench_restore.empty_engine(host)
            subprocess.run([str(REPO / "scripts" / "registry.sh"), "stop", str(work / "registry")], check=False)
            shutil.rmtree(work / "registry", ignore_errors=True)

    rows: list[tuple[str, object]] = []
    first_push = results["push"]
    assert isinstance(first_push, dict)
    rows += [("push, empty registry (s)", first_push["wall_s"]),
             ("  registry bytes stored", first_push["registry_bytes_added"]),
             ("  layers sent", first_push["layers_pushed"])]
    for key, label in (("restore_by_pull", "restore by pull, empty engine (s)"),
                       ("restore_by_rebuild", "restore by rebuild, empty engine (s)")):
        if key in results:
            rows.append((label, results[key]["wall_s"]))  # type: ignore[index]
            rows.append(("  identical", results[key]["identical"]))  # type: ignore[index]
    if "pull_over_rebuild" in results:
        rows.append(("pull / rebuild", results["pull_over_rebuild"]))
    if "second_push" in results:
        sp = results["second_push"]
        assert isinstance(sp, dict)
        rows += [(f"push {args.second} after (s)", sp["wall_s"]), ("  registry bytes stored", sp["registry_bytes_added"]),
                 ("  layers sent / already there", f"{sp['layers_pushed']} / {sp['layers_present']}")]
    for name, value in rows:
        print(f"{name:<40} {value!s:>16}")
    bench_build.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
