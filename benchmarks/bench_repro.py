"""Measure sealing and export against issue 4's targets, all ratios from one run.

    python benchmarks/bench_repro.py --image envkit/pytorch-cuda:2.8 --build-json build.json
    python benchmarks/bench_repro.py --image IMAGE --cold-build-seconds 110 --json-out repro.json

Targets: seal time <= 0.3x the image's cold build time; sealed size <= 1.0x unsealed; zstd export
>= 10x faster than gzip -6 at <= 1.1x its size. The cold build time comes from a JSON written by
the build benchmark (`--build-json`; keys tried: cold_build_s, cold_s, seconds, durations.total)
or is given directly. Both exports stream `docker save` of the sealed image into the compressor,
so both include the engine's save time; the same two compressors are also timed on one saved
archive on disk (compress_only), which leaves the engine out. The image's own tags are left alone: the sealed copy
gets a temporary tag, removed at the end with the sealed image unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from envkit.engine.archive import export_image  # noqa: E402
from envkit.engine.client import get_client  # noqa: E402
from envkit.engine.tarstream import SAVE_CHUNK  # noqa: E402
from envkit.image.seal import seal_image  # noqa: E402

TARGETS = {
    "seal_vs_cold_build": ("<=", 0.3),
    "sealed_vs_unsealed_size": ("<=", 1.0),
    "gzip_vs_zstd_time": (">=", 10.0),
    "zstd_vs_gzip_size": ("<=", 1.1),
    "gzip_vs_zstd_time_compress_only": (">=", 10.0),
    "zstd_vs_gzip_size_compress_only": ("<=", 1.1),
}


def cold_build_seconds(path: Path) -> float:
    data = json.loads(path.read_text())
    for key in ("cold_build_s", "cold_s", "seconds"):
        if isinstance(data.get(key), (int, float)):
            return float(data[key])
    total = (data.get("durations") or {}).get("total")
    if isinstance(total, (int, float)):
        return float(total)
    raise SystemExit(f"{path}: no cold build time (cold_build_s, cold_s, seconds or durations.total)")


def gzip_export(client: Any, image: str, out: Path) -> tuple[float, int, str]:
    """`docker save IMAGE | gzip -6` into `out`; returns (seconds, bytes, how)."""
    started = time.monotonic()
    stream = client.api.get_image(image, chunk_size=SAVE_CHUNK)
    gzip_bin = shutil.which("gzip")
    if gzip_bin:
        with open(out, "wb") as fh:
            proc = subprocess.Popen([gzip_bin, "-6", "-c"], stdin=subprocess.PIPE, stdout=fh)
            assert proc.stdin is not None
            for chunk in stream:
                proc.stdin.write(chunk)
            proc.stdin.close()
            if proc.wait() != 0:
                raise SystemExit("gzip failed")
        how = "gzip -6 (command)"
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        with open(out, "wb") as fh:
            for chunk in stream:
                fh.write(compressor.compress(chunk))
            fh.write(compressor.flush())
        how = "zlib level 6 (gzip container)"
    return time.monotonic() - started, out.stat().st_size, how


def compress_only(client: Any, image: str, workdir: Path, level: int) -> dict[str, Any]:
    """Compression alone, from one saved archive on disk: the engine's save time left out."""
    import zstandard

    tar = workdir / "image.tar"
    started = time.monotonic()
    with open(tar, "wb") as fh:
        for chunk in client.api.get_image(image, chunk_size=SAVE_CHUNK):
            fh.write(chunk)
    save_s = time.monotonic() - started
    started = time.monotonic()
    with open(tar, "rb") as src, open(workdir / "c.tar.zst", "wb") as dst:
        zstandard.ZstdCompressor(level=level, threads=-1).copy_stream(src, dst, read_size=SAVE_CHUNK)
    zstd_s = time.monotonic() - started
    gzip_bin = shutil.which("gzip")
    if gzip_bin is None:
        return {"save_only_s": round(save_s, 2)}
    started = time.monotonic()
    with open(tar, "rb") as src, open(workdir / "c.tar.gz", "wb") as dst:
        subprocess.run([gzip_bin, "-6", "-c"], stdin=src, stdout=dst, check=True)
    gzip_s = time.monotonic() - started
    return {
        "save_only_s": round(save_s, 2),
        "compress_zstd_s": round(zstd_s, 2),
        "compress_gzip_s": round(gzip_s, 2),
        "compress_zstd_bytes": (workdir / "c.tar.zst").stat().st_size,
        "compress_gzip_bytes": (workdir / "c.tar.gz").stat().st_size,
    }


def ratio_ok(name: str, value: float | None) -> bool | None:
    if value is None:
        return None
    op, limit = TARGETS[name]
    return value <= limit if op == "<=" else value >= limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="image to seal (tag or ID); its tags are not moved")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--build-json", type=Path, help="JSON from the build benchmark with the cold build time")
    source.add_argument("--cold-build-seconds", type=float, help="cold build time of IMAGE, in seconds")
    parser.add_argument("--source-date-epoch", type=int, help="default: the image's label")
    parser.add_argument("--skip-export", action="store_true", help="measure sealing only")
    parser.add_argument("--keep-layers", action="store_true",
                        help="seal the config only (for builds whose layers are deterministic as built)")
    parser.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    parser.add_argument("--tmp-dir", type=Path, help="where archives and sealing files go (needs ~2x the image)")
    parser.add_argument("--keep", action="store_true", help="keep the sealed copy and the archives")
    parser.add_argument("--json-out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)

    client = get_client()
    attrs = client.api.inspect_image(args.image)
    cold = None
    if args.build_json:
        cold = cold_build_seconds(args.build_json)
    elif args.cold_build_seconds:
        cold = args.cold_build_seconds

    bench_tag = f"envkit-bench-sealed:{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix="envkit-bench-", dir=args.tmp_dir))
    result: dict[str, Any] = {
        "image": args.image,
        "image_id": attrs["Id"],
        "unsealed_bytes": int(attrs["Size"]),
        "cold_build_s": cold,
        "cpu_count": os.cpu_count(),
    }
    sealed_id = None
    try:
        def log(message: str) -> None:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)

        sealed = seal_image(client, attrs["Id"], source_date_epoch=args.source_date_epoch, tag=bench_tag,
                            show=lambda event: log(event.message), tmp_dir=workdir, rewrite_layers=not args.keep_layers)
        sealed_id = sealed.image_id
        result.update(
            seal_mode="config only" if args.keep_layers else "layers rewritten",
            seal_s=round(sealed.seconds, 2),
            sealed_id=sealed.image_id,
            sealed_bytes=sealed.sealed_size,
            layers=len(sealed.layers),
            dropped_layers=sealed.dropped_layers,
        )
        if not args.skip_export:
            zst = workdir / "image.tar.zst"
            started = time.monotonic()
            exported = export_image(client, bench_tag, zst, level=args.level)
            result.update(
                zstd_s=round(time.monotonic() - started, 2),
                zstd_bytes=exported.compressed_bytes,
                archive_bytes=exported.uncompressed_bytes,
                zstd_level=args.level,
            )
            gz_s, gz_bytes, how = gzip_export(client, bench_tag, workdir / "image.tar.gz")
            result.update(gzip_s=round(gz_s, 2), gzip_bytes=gz_bytes, gzip_how=how)
            result.update(compress_only(client, bench_tag, workdir, args.level))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            if sealed_id is not None:
                try:
                    if sealed_id != attrs["Id"] or attrs.get("RepoTags"):
                        client.api.remove_image(bench_tag)
                except Exception as exc:  # leave it to the user, say so
                    print(f"could not remove {bench_tag}: {exc}", file=sys.stderr)

    ratios: dict[str, float | None] = {
        "seal_vs_cold_build": result["seal_s"] / cold if cold else None,
        "sealed_vs_unsealed_size": result["sealed_bytes"] / result["unsealed_bytes"],
        "gzip_vs_zstd_time": (result["gzip_s"] / result["zstd_s"]) if "gzip_s" in result else None,
        "zstd_vs_gzip_size": (result["zstd_bytes"] / result["gzip_bytes"]) if "gzip_bytes" in result else None,
    }
    if "compress_gzip_s" in result:
        ratios["gzip_vs_zstd_time_compress_only"] = result["compress_gzip_s"] / result["compress_zstd_s"]
        ratios["zstd_vs_gzip_size_compress_only"] = result["compress_zstd_bytes"] / result["compress_gzip_bytes"]
    result["ratios"] = {k: (round(v, 3) if v is not None else None) for k, v in ratios.items()}
    result["targets_met"] = {k: ratio_ok(k, v) for k, v in ratios.items()}

    print(f"{'measure':<34}{'value':>10}  target   met", file=sys.stderr)
    for name, value in ratios.items():
        op, limit = TARGETS[name]
        shown = f"{value:.3f}" if value is not None else "n/a"
        met = result["targets_met"][name]
        print(f"{name:<34}{shown:>10}  {op} {limit:<5} {'-' if met is None else 'yes' if met else 'NO'}",
              file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
