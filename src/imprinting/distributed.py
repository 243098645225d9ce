"""Several processes, one model: PyTorch's own ``torch.distributed``, set up from torchrun.

Nothing home-made: the process group is PyTorch's (gloo on CPU, NCCL on GPU), joined from
the variables ``torchrun`` exports (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); gradients are averaged by ``DistributedDataParallel``.
A plain ``python`` or ``imprint`` run (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) is one
process, and every helper here is then a no-op. ``IMPRINTING_DISTRIBUTED=0`` keeps a
process out of the group even under torchrun; ``IMPRINTING_DIST_BACKEND`` overrides the
backend (default: ``nccl`` when CUDA is available, else ``gloo``).

What the library does with it:
  - ``imprinting.train.train``: DDP, a class-balanced sampler sharded across ranks
    (``ShardedBatchSampler``), rank-0-only checkpoints and progress bars (see its docs);
  - ``imprinting.data.features.cached_features``: each rank extracts one shard of the
    images, the shards are gathered (``gather_rows``) and rank 0 writes the cache file a
    single process would write.
"""

from __future__ import annotations

import atexit
import math
import os
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

# Rank r's torch RNG starts at seed + RANK_SEED_STRIDE * r: rank 0 draws what a single process draws.
RANK_SEED_STRIDE = 1_000_003


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes, once; True when running on several ranks.

    Safe to call any number of times and from a plain single process (it returns False).
    A group the caller initialized itself is used as it is.
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if os.environ.get("IMPRINTING_DISTRIBUTED", "1") == "0":
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    backend = backend or os.environ.get("IMPRINTING_DIST_BACKEND") or (
        "nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)  # env:// from torchrun's variables
    atexit.register(_destroy)
    return dist.get_world_size() > 1


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """A process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0, the only rank that writes files and prints (True in a single process)."""
    return rank() == 0


def device() -> torch.device:
    """The device this rank computes on: its GPU under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dev = device()
        dist.barrier(device_ids=[dev.index] if dev.type == "cuda" else None)


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; for small things and training state)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers, in place.

    Randomly initialised weights differ between processes (each draws its own seed): a
    frozen backbone must be the same on every rank before features are computed with it.
    """
    if not active():
        return
    dev = _comm_device()
    for t in [*module.parameters(), *module.buffers()]:
        if t.device == dev and t.data.is_contiguous():
            dist.broadcast(t.data, src=src)
        else:  # NCCL sends GPU tensors; both need them contiguous (channels-last weights are not)
            moved = t.data.to(dev).contiguous()
            dist.broadcast(moved, src=src)
            t.data.copy_(moved)


def run_on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 only, its result on every rank. If it raises, every rank raises,
    instead of the others waiting for rank 0 until the collective times out."""
    if not active():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 (re-raised below, on every rank)
            error = exc
    status = broadcast_object(("error", f"{type(error).__name__}: {error}") if error is not None else ("ok", result))
    if error is not None:
        raise error
    if status[0] == "error":
        raise RuntimeError(f"rank 0 failed: {status[1]}")
    return status[1]


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks (float64)."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_ranks_agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank."""
    if not active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _comm_device() -> torch.device:
    return device()  # NCCL communicates GPU tensors, gloo CPU tensors


# -- sharding ------------------------------------------------------------------


def shard_range(n: int, rank: int, world: int, align: int = 1) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, end)`` of ``n`` items.

    Shares are made of whole blocks of ``align`` items (the last block may be short), split
    as evenly as blocks allow, in rank order: concatenated, the shares are ``range(n)``.
    """
    blocks = -(-n // align)
    first, last = blocks * rank // world, blocks * (rank + 1) // world
    return min(first * align, n), min(last * align, n)


def gather_rows(local: torch.Tensor, chunk_bytes: int = 64 << 20) -> torch.Tensor:
    """Concatenate every rank's rows (dim 0) in rank order; the result on the CPU, on every rank.

    Shares may differ in length (an empty one too); the other dimensions and the dtype must
    agree. The rows travel in chunks of about ``chunk_bytes`` per rank, so GPU memory for
    NCCL stays bounded whatever the data set's size.
    """
    local = local.detach().cpu().contiguous()
    if not active():
        return local
    infos = all_gather_object((local.shape[0], tuple(local.shape[1:]), str(local.dtype).removeprefix("torch.")))
    kinds = {(t, d) for n, t, d in infos if n}
    if len(kinds) > 1:
        raise ValueError(f"ranks computed rows of different shapes or types: {sorted(kinds)}")
    tail, dtype_name = kinds.pop() if kinds else (tuple(local.shape[1:]), str(local.dtype).removeprefix("torch."))
    dtype = getattr(torch, dtype_name)
    width = math.prod(tail)
    counts = [n for n, _, _ in infos]
    flat = local.to(dtype).reshape(local.shape[0], width)
    rows_per_chunk = max(1, min(max(counts), chunk_bytes // (max(1, width) * flat.element_size())))
    out = torch.empty(sum(counts), width, dtype=dtype)
    starts = [sum(counts[:r]) for r in range(len(counts))]
    dev = _comm_device()
    for offset in range(0, max(counts), rows_per_chunk):
        send = torch.zeros(rows_per_chunk, width, dtype=dtype, device=dev)
        mine = flat[offset : offset + rows_per_chunk]
        send[: mine.shape[0]] = mine.to(dev)
        recv = [torch.empty_like(send) for _ in counts]
        dist.all_gather(recv, send)
        for r, part in enumerate(recv):
            k = max(0, min(rows_per_chunk, counts[r] - offset))
            if k:
                out[starts[r] + offset : starts[r] + offset + k] = part[:k].cpu()
    return out.reshape(sum(counts), *tail)


class ShardedBatchSampler(Sampler):
    """Rank ``rank``'s share of each batch of one sample stream that every rank draws alike.

    ``sampler`` (a ``RandomSampler`` or the class-balanced ``WeightedRandomSampler``, with a
    generator seeded the same on every rank) gives the single-process stream of indices; it
    is cut into global batches of ``batch_size`` exactly as a one-process ``DataLoader``
    would cut it, and rank r takes positions r, r + world, ... of each batch. So the union
    over ranks of step t's batches is the single process's batch t, the class balance of
    the stream is kept, and every rank runs the same number of steps.

    Items are ``(index, real)`` pairs: a rank whose share of the last, short batch would be
    empty gets the batch's first index with ``real=False`` (weight zero in the loss), so no
    rank is ever left without a batch while the others wait for it. ``PairDataset`` turns
    the pairs into ``(*dataset[index], real)``.
    """

    def __init__(self, sampler: Sampler, batch_size: int, rank: int, world: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank = rank
        self.world = world

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def global_sizes(self) -> list[int]:
        """The size of each global batch (what one process would see)."""
        n, b = len(self.sampler), self.batch_size
        return [min(b, n - s) for s in range(0, n, b)]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        batch: list[int] = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield self._share(batch)
                batch = []
        if batch:
            yield self._share(batch)

    def _share(self, batch: list[int]) -> list[tuple[int, bool]]:
        mine = [(i, True) for i in batch[self.rank :: self.world]]
        return mine or [(batch[0], False)]


class PairDataset(Dataset):
    """``dataset[index] + (real,)`` for the ``(index, real)`` items of ``ShardedBatchSampler``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, real = item
        return (*self.dataset[index], torch.tensor(bool(real)))
