"""The folders of the README's "first five minutes": train/<class>/ with the first 5 official
training photos and test/<class>/part0|part1/ with the first 20 test photos of Flowers-102
classes 1, 4, 11, 23, 47, 50, 54, 65, 74, 77, as symlinks into the data set (nothing copied).

    .venv/bin/python benchmarks/first_five_minutes.py /tmp/five --data-root ../shared/data
    cd /tmp/five && imprint create flowers.safetensors --from-folder train/ && imprint evaluate flowers.safetensors test/
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from imprinting.data.flowers import read_flowers102

CLASSES = (1, 4, 11, 23, 47, 50, 54, 65, 74, 77)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    for split, per_class in (("train", 5), ("test", 20)):
        ds = read_flowers102(args.data_root, split, download=False)
        for c in CLASSES:
            files = [f for f, y in zip(ds.paths, ds.labels) if y == c - 1][:per_class]
            for i, f in enumerate(files):
                folder = args.out / split / ds.class_names[c - 1] / (f"part{i % 2}" if split == "test" else "")
                folder.mkdir(parents=True, exist_ok=True)
                os.symlink(Path(f).resolve(), folder / Path(f).name)
    print(f"wrote {args.out}/train and {args.out}/test")


if __name__ == "__main__":
    main()
