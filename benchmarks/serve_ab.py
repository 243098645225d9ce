"""Two (or more) versions of the service, in alternate rounds under the same load.

This machine's speed drifts by 10-20 % within minutes, more than most changes to the service
gain, so one run of each version says little. Each round starts one server per version (from
its source tree, ``PYTHONPATH=<tree>/src``), in turn (the order reversed every other round),
teaches it 3 classes, warms it with 3 requests a client, and times about 1,600 photos: ``clients``
raw-socket clients (``loopback.run_clients``) sending ``photos`` Flowers-102 JPEGs a request.
Printed: photos/s and p50 latency per round, and their means.

Usage (a worktree of the code before, e.g. ``git worktree add /tmp/before <commit>``)::

    flock /tmp/imprinting-bench.lock .venv/bin/python benchmarks/serve_ab.py --rounds 4 --clients 40 \\
        before=/tmp/before/src after=src
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import httpx
import torch

import imprinting
from loopback import REPO, body, run_clients, start_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--photos", type=int, default=1, help="Photos per request.")
    parser.add_argument("versions", nargs="+", help="name=path of a source tree's src folder")
    args = parser.parse_args()
    versions = [v.split("=", 1) for v in args.versions]
    if any(len(v) != 2 for v in versions):
        raise SystemExit("give each version as name=path")

    files = sorted((args.data_root / "flowers102" / "flowers-102" / "jpg").glob("*.jpg"))
    if len(files) < 524:
        raise SystemExit(f"Flowers-102 JPEGs not found under {args.data_root} (--data-root)")
    work = Path(tempfile.mkdtemp(prefix="serve_ab-"))
    torch.manual_seed(0)
    imprinting.save(imprinting.create_model("efficientnet_lite0", dim=None), work / "model.safetensors")
    photos = [(p.name, p.read_bytes()) for p in files[-512:]]
    bodies = [body(photos[i: i + args.photos]) for i in range(0, 512 - args.photos + 1, args.photos)][:64]
    requests = max(3, 1600 // args.photos // args.clients)
    rates: dict[str, list[float]] = {name: [] for name, _ in versions}
    p50s: dict[str, list[float]] = {name: [] for name, _ in versions}
    for r in range(args.rounds):
        for name, path in versions if r % 2 == 0 else versions[::-1]:
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = str(Path(path).resolve())
            try:
                proc, url = start_server(work / "model.safetensors", work / f"{r}-{name}.sqlite", work / "server.log")
            finally:
                os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)
            try:
                with httpx.Client(base_url=url, timeout=120) as c:
                    for k, cls in enumerate(("a", "b", "c")):
                        content, headers = body([(p.name, p.read_bytes()) for p in files[4 * k: 4 * k + 4]])
                        assert c.post(f"/classes/{cls}/examples", content=content, headers=headers).status_code == 201
                run_clients(url, args.clients, bodies, 3)
                results, wall = run_clients(url, args.clients, bodies, requests)
                ok = [t for status, t in results if status == 200]
                if len(ok) != len(results):
                    raise SystemExit(f"{name}: {len(results) - len(ok)} of {len(results)} requests not answered 200")
                rates[name].append(len(ok) * args.photos / wall)
                p50s[name].append(statistics.median(ok) * 1000)
                print(f"round {r} {name}: {rates[name][-1]:.1f} photos/s, p50 {p50s[name][-1]:.1f} ms", flush=True)
            finally:
                proc.terminate()
                proc.wait(60)
    for name, _ in versions:
        print(f"{name}: {' '.join(f'{x:.1f}' for x in rates[name])}; mean {statistics.mean(rates[name]):.1f} "
              f"photos/s, p50 {statistics.mean(p50s[name]):.2f} ms")


if __name__ == "__main__":
    main()
