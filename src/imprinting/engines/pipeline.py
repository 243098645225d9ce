"""Images to backbone features, decoding in threads while the engine runs.

Centre crops (``views=1``): a pool of threads decodes, resizes and crops small groups of
images into one uint8 array each and turns it into the normalized float32 batch (Pillow
and numpy release the GIL); the calling thread only joins groups into batches and runs the
engine, so decoding overlaps the forward pass and nothing is done per image in that loop.
The pixels are those of ``imprinting.data.transforms.eval_transform``, bit for bit.

Random crop + flip views (``views>1``) are drawn in the calling thread, in order, from
PyTorch's random generator, in the order the library drew them before engines (decoding
still runs in the pool), so seeded runs give the same views as before.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch

from imprinting.engines.base import Engine

GROUP = 8  # images one decoding task takes


def decode_workers() -> int:
    """Decoding threads: all cores but one (the engine's), at least 1, at most 8."""
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def decode(source, mode: str, reduce_to: int | None = None):
    """A path (decoded, errors name the file) or a PIL image, in ``mode``."""
    from imprinting.data.images import load_image

    if hasattr(source, "convert"):
        return source.convert(mode)
    return load_image(source, mode, reduce_to=reduce_to)


class _Center:
    """Sources -> normalized centre-crop batches (N, C, H, W) float32, in a worker thread."""

    def __init__(self, pre, draft: bool):
        from imprinting.data.transforms import eval_crop, image_mode, normalize_table

        self.pre, self.mode, self.crop = pre, image_mode(pre), eval_crop(pre)
        self.table = normalize_table(pre)
        self.reduce_to = pre.resize_size if draft else None

    def __call__(self, sources: Sequence) -> np.ndarray:
        s, c = self.pre.image_size, self.pre.in_chans
        pixels = np.empty((len(sources), s, s, c), np.uint8)
        for i, src in enumerate(sources):
            pixels[i] = np.asarray(self.crop(decode(src, self.mode, self.reduce_to))).reshape(s, s, c)
        out = np.empty((len(sources), c, s, s), np.float32)
        for ch in range(c):
            np.take(self.table[ch], pixels[..., ch], out=out[:, ch])
        return out


def center_features(engine: Engine, images: Sequence, pre, batch_size: int = 32, workers: int | None = None,
                    draft: bool = False, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features (N, F) of the centre crops of ``images`` (paths or PIL images).

    ``workers``: decoding threads (``None``: ``decode_workers()``; 0: decode in this thread).
    ``draft``: decode JPEGs at a reduced DCT scale (``imprinting.data.images.load_image``).
    """
    work = _Center(pre, draft)
    n = len(images)
    workers = decode_workers() if workers is None else workers
    if workers == 0:
        out = []
        for i in range(0, n, batch_size):
            out.append(engine.run(work(images[i : i + batch_size])))
            if progress is not None:
                progress(len(out[-1]))
        return torch.cat(out) if out else torch.empty(0)
    group = max(1, min(GROUP, batch_size))
    starts = iter(range(0, n, group))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="imprinting-decode")
    pending: deque = deque()

    def submit() -> None:
        i = next(starts, None)
        if i is not None:
            pending.append(pool.submit(work, images[i : min(i + group, n)]))

    try:
        for _ in range(2 * workers + -(-batch_size // group)):  # keep the decoders busy a batch ahead
            submit()
        out, ready, count = [], [], 0
        while pending:
            part = pending.popleft().result()
            submit()
            ready.append(part)
            count += len(part)
            if count >= batch_size or not pending:
                batch = ready[0] if len(ready) == 1 else np.concatenate(ready)
                out.append(engine.run(batch))
                ready, count = [], 0
                if progress is not None:
                    progress(len(batch))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return torch.cat(out) if out else torch.empty(0)


def view_features(engine: Engine, images: Sequence, transform: Callable, views: int, pre, batch_size: int = 32,
                  workers: int | None = None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features (N * views, F) of ``views`` random versions of each image (``transform``:
    random crop + flip to a tensor), drawn in order in this thread."""
    from imprinting.data.transforms import image_mode

    mode = image_mode(pre)
    workers = decode_workers() if workers is None else workers
    if workers:
        with ThreadPoolExecutor(workers, thread_name_prefix="imprinting-decode") as pool:
            decoded = list(pool.map(lambda s: decode(s, mode), images))
    else:
        decoded = [decode(s, mode) for s in images]
    tensors = [transform(img) for img in decoded for _ in range(views)]
    out = []
    for i in range(0, len(tensors), batch_size):
        out.append(engine.run(torch.stack(tensors[i : i + batch_size])))
        if progress is not None:
            progress(len(out[-1]) // views)
    return torch.cat(out) if out else torch.empty(0)
