"""Write a tiny YOLO detection dataset (coloured boxes on grey) and its data.yaml, for trying
`yolo train` without downloading anything:

    python examples/make_yolo_dataset.py --out data/boxes --train 16 --val 4 --size 64

The layout is the one Ultralytics reads for any dataset:

    data/boxes/data.yaml
    data/boxes/images/{train,val}/*.jpg
    data/boxes/labels/{train,val}/*.txt    one line per object: class x_centre y_centre width height (0..1)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = {0: "red box", 1: "blue box"}
COLOURS = {0: (220, 40, 40), 1: (40, 80, 220)}


def write_split(root: Path, split: str, count: int, size: int, rng: random.Random) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        grey = rng.randrange(60, 200)
        image = Image.new("RGB", (size, size), (grey, grey, grey))
        canvas = ImageDraw.Draw(image)
        lines = []
        for _ in range(rng.randint(1, 2)):
            cls = rng.randrange(len(CLASSES))
            w, h = rng.randint(size // 5, size // 2), rng.randint(size // 5, size // 2)
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            canvas.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[cls])
            centre = ((x + w / 2) / size, (y + h / 2) / size)
            lines.append(f"{cls} {centre[0]:.5f} {centre[1]:.5f} {w / size:.5f} {h / size:.5f}")
        image.save(images / f"{index:04d}.jpg", quality=95)
        (labels / f"{index:04d}.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Dataset root to create.")
    parser.add_argument("--train", type=int, default=16, help="Training images.")
    parser.add_argument("--val", type=int, default=4, help="Validation images.")
    parser.add_argument("--size", type=int, default=64, help="Image side in pixels.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    write_split(args.out, "train", args.train, args.size, rng)
    write_split(args.out, "val", args.val, args.size, rng)
    names = "".join(f"  {cls}: {name}\n" for cls, name in CLASSES.items())
    # A relative path: Ultralytics resolves it against the working directory, so the same
    # data.yaml works on the host and in a container that mounts the project at /workspace.
    (args.out / "data.yaml").write_text(f"path: {args.out.as_posix()}\ntrain: images/train\nval: images/val\n"
                                        f"names:\n{names}")
    print(f"{args.out}: {args.train} training and {args.val} validation images, "
          f"classes {list(CLASSES.values())}")


if __name__ == "__main__":
    main()
