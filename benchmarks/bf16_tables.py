"""Whether bf16 may be the default precision of the frozen backbone: Tables 1-2 (``imprint
reproduce tables``) run twice, with float32 and with bfloat16 features (``$IMPRINTING_PRECISION``;
the feature cache keys on the precision, so each run extracts its own), and every cell compared.
The rule (issue #12): bf16 becomes the default only if every top-1 is within 0.3 points.

    .venv/bin/python benchmarks/bf16_tables.py --data-root ../shared/data --datasets cub flowers102

Needs a CPU with bf16 (AMX / avx512_bf16) or a GPU; elsewhere it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def run_tables(dataset: str, precision: str, args, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "imprinting.cli", "reproduce", "tables", "--dataset", dataset, "--data-root",
           args.data_root, "--image-size", str(args.image_size), "--augment", str(args.augment), "--draws",
           str(args.draws), "--out", str(out)]
    env = {**os.environ, "IMPRINTING_PRECISION": precision}
    if args.cache:
        env["IMPRINTING_CACHE"] = args.cache
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "tables_1_2.json").read_text())["rows"]


def mean(cell) -> float:
    return float(str(cell).split("±")[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--datasets", nargs="+", default=["cub", "flowers102"])
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--augment", type=int, default=2)
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default="runs/bf16")
    args = p.parse_args(argv)
    from imprinting.engines.select import engine_precisions

    if "bfloat16" not in engine_precisions("openvino") + engine_precisions("torch"):
        print("this machine has no bf16 engine (no AMX/avx512_bf16 CPU, no GPU): nothing to compare")
        return
    worst = 0.0
    print(f"- command: python benchmarks/bf16_tables.py --datasets {' '.join(args.datasets)} --image-size "
          f"{args.image_size} --augment {args.augment} --draws {args.draws}\n")
    print("| data set | method | n | novel fp32 | novel bf16 | all fp32 | all bf16 | max diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for ds in args.datasets:
        f32 = run_tables(ds, "float32", args, Path(args.out) / f"{ds}-float32")
        b16 = run_tables(ds, "bfloat16", args, Path(args.out) / f"{ds}-bfloat16")
        for a, b in zip(f32, b16):
            assert (a["method"], a["n"]) == (b["method"], b["n"])
            diff = max(abs(mean(a["novel (ours)"]) - mean(b["novel (ours)"])), abs(mean(a["all (ours)"]) - mean(b["all (ours)"])))
            worst = max(worst, diff)
            print(f"| {ds} | {a['method']} | {a['n']} | {mean(a['novel (ours)']):.2f} | {mean(b['novel (ours)']):.2f} | "
                  f"{mean(a['all (ours)']):.2f} | {mean(b['all (ours)']):.2f} | {diff:.2f} |", flush=True)
    print(f"\nlargest difference: {worst:.2f} points -> bf16 {'meets' if worst <= 0.3 else 'misses'} the 0.3-point rule")


if __name__ == "__main__":
    main()
