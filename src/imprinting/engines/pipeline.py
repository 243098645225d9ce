"""Images to backbone features, decoding in threads.

Centre crops (``views=1``): a pool of threads decodes, resizes and crops small groups of
images straight into the batch's normalized float32 array (Pillow and numpy release the
GIL); the calling thread only runs the engine, and nothing is done per image in its loop.
The pixels are those of ``imprinting.data.transforms.eval_transform``, bit for bit.

The engine is the one for the batches' size (``engine.engine_for``: an automatic engine runs
each batch size on the engine measured fastest at it); every batch of one call, the last and
smaller one too, runs on it, so one call's features come from one engine.

When the engine computes on the CPU cores (every CPU engine), decoding and the forward pass
take turns, each with every core: a batch is decoded by all the threads, then the engine runs
on all the cores. Overlapping them would make the decoders and the engine's threads fight for
the same cores, and an engine's parallel loop waits for its slowest thread
(``benchmarks/engines.py``: 0.73x of the bare forward overlapped, 0.8x or more in turns, on 2
cores, 2026-12-02). In turns a batch takes its decoding time plus its forward time, both on
every core, which is all the CPU work there is: only cheaper decoding goes further (hence
``imprinting.data.crop``, which resizes only the crop; the figures are in docs/engines.md).
When the engine runs elsewhere (CUDA), the next batch is decoded while it runs.

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
from PIL import Image

from imprinting.data.images import check_decoded, load_image
from imprinting.data.transforms import eval_crop, image_mode, normalize_table, train_transform
from imprinting.engines.base import Engine

GROUP = 2  # images one decoding task takes: small, so the threads end a batch together


def decode_workers() -> int:
    """Decoding threads: one per core, at most 8."""
    return min(8, max(1, os.cpu_count() or 1))


def for_batch(engine: Engine, size: int) -> Engine:
    """The engine that batches of ``size`` images run on (``Engine.engine_for``)."""
    pick = getattr(engine, "engine_for", None)
    return pick(max(1, size)) if pick is not None else engine


def decode(source, mode: str, reduce_to: int | None = None):
    """A path (decoded, errors name the file) or a PIL image, in ``mode``. Either must pass
    ``imprinting.data.images.check_image_size`` first (a path from its header), since every
    caller resizes the short side next and a thin image would resize to gigabytes."""
    if hasattr(source, "convert"):
        check_decoded(source, resize_to=reduce_to)
        return source if source.mode == mode else source.convert(mode)
    return load_image(source, mode, reduce_to=reduce_to)


class CenterCrops:
    """Sources -> their normalized centre crops, written into a slice of a batch array: the
    pixels ``eval_transform`` gives, as ``center_features`` feeds them to the engine (the
    service fills its batches with it in its decoding threads, ``serve.batcher``)."""

    def __init__(self, pre, draft: bool):
        self.pre, self.mode, self.crop = pre, image_mode(pre), eval_crop(pre)
        self.table = normalize_table(pre)
        self.reduce_to = pre.resize_size if draft else None
        self.mean = np.asarray(pre.mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(pre.std, np.float32).reshape(-1, 1, 1)
        self.arithmetic = self._arithmetic_exact()
        self._normalize = self._arithmetic if self.arithmetic else self._lookup

    def batch(self, count: int) -> np.ndarray:
        s, c = self.pre.image_size, self.pre.in_chans
        return np.empty((count, c, s, s), np.float32)

    def _arithmetic(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """(H, W, C) uint8 -> ``out`` (C, H, W) float32: ToTensor's ``/ 255``, then Normalize's
        ``- mean``, ``/ std``, the same float32 operations in the same order (cheaper than a
        table lookup per channel)."""
        np.copyto(out, pixels.transpose(2, 0, 1), casting="unsafe")
        out /= np.float32(255)
        out -= self.mean
        out /= self.std

    def _lookup(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """The same by the table (``normalize_table``: torchvision's own operations)."""
        for ch in range(out.shape[0]):
            np.take(self.table[ch], pixels[..., ch], out=out[ch])

    def _arithmetic_exact(self) -> bool:
        """Whether ``_arithmetic`` gives the table's values for every 8-bit level of every
        channel, on a crop-sized array: checked once, the table used otherwise."""
        s, c = self.pre.image_size, self.pre.in_chans
        levels = np.resize(np.arange(256, dtype=np.uint8), s * s).reshape(s, s, 1).repeat(c, axis=2)
        got, want = (np.empty((c, s, s), np.float32) for _ in range(2))
        self._arithmetic(levels, got)
        self._lookup(levels, want)
        return bool(np.array_equal(got, want))

    def __call__(self, sources: Sequence, first: int, out: np.ndarray) -> None:
        """Decode ``sources`` (images ``first``, ... of the set) into ``out`` (len(sources), C, H, W)."""
        s, c = self.pre.image_size, self.pre.in_chans
        for i, src in enumerate(sources):
            pixels = np.asarray(self.crop(decode(src, self.mode, self.reduce_to))).reshape(s, s, c)
            self._normalize(pixels, out[i])


def _aliases(features, batch: np.ndarray) -> bool:
    """Whether an engine's output shares memory with its input (an engine may return a view)."""
    if not isinstance(features, torch.Tensor) or features.device.type != "cpu":
        return False
    start, size = features.untyped_storage().data_ptr(), features.untyped_storage().nbytes()
    return start < batch.ctypes.data + batch.nbytes and batch.ctypes.data < start + size


def _run(engine: Engine, work, images: Sequence, batch_size: int, workers: int | None,
         progress: Callable[[int], None] | None) -> list[torch.Tensor]:
    """The engine's outputs, batch by batch, for images decoded by ``work`` (``CenterCrops`` or
    ``_SeededViews``: ``batch(count)`` makes the array, ``work(sources, first, out)`` fills a
    slice) in groups of ``GROUP`` images on ``workers`` threads (0: in this thread). With a CPU
    engine a batch is decoded, then run; otherwise the next batch is decoded while the engine
    runs. A batch's array is reused for the next batch of its size once the engine is done
    with it (a fresh 19 MB array a batch costs page faults and cold cache lines)."""
    n = len(images)
    engine = for_batch(engine, min(batch_size, n) * getattr(work, "views", 1))
    workers = decode_workers() if workers is None else workers
    starts = list(range(0, n, batch_size))
    group = max(1, min(GROUP, -(-batch_size // max(workers, 1))))
    ahead = 0 if getattr(engine, "uses_cpu", True) or not workers else 1  # batches decoded while the engine runs
    pool = ThreadPoolExecutor(workers, thread_name_prefix="imprinting-decode") if workers else None
    pending: deque = deque()
    free: dict[int, list[np.ndarray]] = {}  # arrays the engine is done with, by images

    def submit(k: int) -> None:
        if k < len(starts):
            i = starts[k]
            count = min(batch_size, n - i)
            batch = free[count].pop() if free.get(count) else work.batch(count)
            parts = [(images[i + j : i + min(j + group, count)], i + j, batch[j : j + group])
                     for j in range(0, count, group)]
            if pool is None:
                for part in parts:
                    work(*part)
                pending.append((batch, []))
            else:
                pending.append((batch, [pool.submit(work, *part) for part in parts]))

    out = []
    try:
        for k in range(ahead + 1):
            submit(k)
        for k in range(len(starts)):
            batch, tasks = pending.popleft()
            for t in tasks:
                t.result()
            features = engine.run(batch.reshape(-1, *batch.shape[-3:]))
            if _aliases(features, batch):
                features = features.clone()
            out.append(features)
            free.setdefault(len(batch), []).append(batch)
            submit(k + ahead + 1)
            if progress is not None:
                progress(len(batch))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


def center_features(engine: Engine, images: Sequence, pre, batch_size: int = 32, workers: int | None = None,
                    draft: bool = False, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features (N, F) of the centre crops of ``images`` (paths or PIL images).

    ``workers``: decoding threads (``None``: ``decode_workers()``; 0: decode in this thread).
    ``draft``: decode JPEGs at a reduced DCT scale (``imprinting.data.images.load_image``).
    """
    out = _run(engine, CenterCrops(pre, draft), images, batch_size, workers, progress)
    return torch.cat(out) if out else torch.empty(0)


class _SeededViews:
    """Sources -> ``views`` random crop + flip versions of each, written into a batch array:
    ``train_transform``'s pixels bit for bit, with its random draws taken from a generator
    seeded per image (``seed_of(index)``), so threads give the views one process would. The
    image is resized once for all its views (``train_transform`` resizes it for each)."""

    def __init__(self, pre, views: int, seed_of: Callable[[int], int]):
        self.pre, self.mode, self.views, self.seed_of = pre, image_mode(pre), views, seed_of
        self.resize = train_transform(pre).transforms[0]  # the Resize of the short side
        self.table = normalize_table(pre)

    def batch(self, count: int) -> np.ndarray:
        s, c = self.pre.image_size, self.pre.in_chans
        return np.empty((count, self.views, c, s, s), np.float32)

    def __call__(self, sources: Sequence, first: int, out: np.ndarray) -> None:
        """Views of ``sources`` (images ``first``, ``first + 1``, ... of the set) into ``out``."""
        s, c = self.pre.image_size, self.pre.in_chans
        pixels = np.empty((len(sources), self.views, s, s, c), np.uint8)
        for i, src in enumerate(sources):
            img = self.resize(decode(src, self.mode))
            w, h = img.size
            g = torch.Generator().manual_seed(self.seed_of(first + i))
            for v in range(self.views):  # RandomCrop's draws (none when the image is the crop), then the flip's
                top = 0 if (w, h) == (s, s) else int(torch.randint(0, h - s + 1, (1,), generator=g))
                left = 0 if (w, h) == (s, s) else int(torch.randint(0, w - s + 1, (1,), generator=g))
                view = img.crop((left, top, left + s, top + s))
                if torch.rand(1, generator=g) < 0.5:
                    view = view.transpose(Image.FLIP_LEFT_RIGHT)
                pixels[i, v] = np.asarray(view).reshape(s, s, c)
        for ch in range(c):
            np.take(self.table[ch], pixels[..., ch], out=out[:, :, ch])


def seeded_view_features(engine: Engine, images: Sequence, pre, views: int, seed_of: Callable[[int], int],
                         batch_size: int = 32, workers: int | None = None,
                         progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features (N, views, F) of ``views`` random crop + flip versions of each image, image i's
    drawn from a generator seeded with ``seed_of(i)`` (the feature cache's augmented views).
    Decoded as in ``center_features``; a batch holds ``batch_size`` images' views."""
    out = _run(engine, _SeededViews(pre, views, seed_of), images, batch_size, workers, progress)
    return torch.cat([f.reshape(-1, views, f.shape[-1]) for f in out]) if out else torch.empty(0)


def view_features(engine: Engine, images: Sequence, transform: Callable, views: int, pre, batch_size: int = 32,
                  workers: int | None = None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features (N * views, F) of ``views`` random versions of each image (``transform``:
    random crop + flip to a tensor), drawn in order in this thread."""
    mode = image_mode(pre)
    workers = decode_workers() if workers is None else workers
    if workers:
        with ThreadPoolExecutor(workers, thread_name_prefix="imprinting-decode") as pool:
            decoded = list(pool.map(lambda s: decode(s, mode), images))
    else:
        decoded = [decode(s, mode) for s in images]
    tensors = [transform(img) for img in decoded for _ in range(views)]
    engine = for_batch(engine, min(batch_size, len(tensors)))
    out = []
    for i in range(0, len(tensors), batch_size):
        out.append(engine.run(torch.stack(tensors[i : i + batch_size])))
        if progress is not None:
            progress(len(out[-1]) // views)
    return torch.cat(out) if out else torch.empty(0)
