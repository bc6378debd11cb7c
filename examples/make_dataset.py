"""Write a tiny ImageFolder dataset (one directory per class, PNG files) for trying the workloads.

Each class is a coloured shape on noise, so a network can learn it in a few epochs even on a CPU:

    python examples/make_dataset.py --out data/tiny --classes 4 --per-class 64
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 30), (180, 60, 200), (30, 200, 200)]
SHAPES = ["ellipse", "rectangle", "triangle"]


def draw(cls: int, size: int, rng: random.Random) -> Image.Image:
    noise = bytes(rng.randrange(256) for _ in range(size * size * 3))
    image = Image.frombytes("RGB", (size, size), noise)
    canvas = ImageDraw.Draw(image)
    colour = COLOURS[cls % len(COLOURS)]
    shape = SHAPES[(cls // len(COLOURS)) % len(SHAPES)]
    half = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(half, size - half), rng.randint(half, size - half)
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "ellipse":
        canvas.ellipse(box, fill=colour)
    elif shape == "rectangle":
        canvas.rectangle(box, fill=colour)
    else:
        canvas.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Dataset root to create.")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=64, help="Training images per class.")
    parser.add_argument("--val-per-class", type=int, default=16, help="Validation images per class.")
    parser.add_argument("--size", type=int, default=64, help="Image side in pixels.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    for split, count in (("train", args.per_class), ("val", args.val_per_class)):
        for cls in range(args.classes):
            folder = args.out / split / f"class_{cls:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                draw(cls, args.size, rng).save(folder / f"{index:05d}.png")
    total = args.classes * (args.per_class + args.val_per_class)
    print(f"wrote {total} images in {args.classes} classes under {args.out}")


if __name__ == "__main__":
    main()
