"""Training: base training and fine-tuning, in one loop.

Two modes share the loop:
  - frozen backbone: the fully connected layer and the classifier train on cached backbone
    features (fast; ``FeatureDataset``, whose random augmented view per sample stands in for
    image augmentation);
  - end to end: images through the whole network with random crop + flip (``ImageDataset``).

The paper's recipe is the default: RMSProp with momentum 0.9, learning rate 1e-4 for
pretrained layers and 10x for new ones (the FC layer and the classifier), decayed by 0.94
every 4 epochs. ``balanced=True`` oversamples so that every class is equally likely in a
batch (fine-tuning with few novel examples). Evaluation after each epoch is recorded, and
a checkpoint after each epoch makes the run resumable.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from imprinting import distributed as dd
from imprinting.checkpoint import CheckpointError
from imprinting.data.images import load_image
from imprinting.data.transforms import image_mode, train_transform
from imprinting.files import atomic_write
from imprinting.model import ImprintModel


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4  # pretrained layers (the backbone)
    head_lr_mult: float = 10.0  # new layers: FC and classifier
    backbone_lr_mult: float = 1.0  # 0 freezes the backbone in end-to-end mode
    optimizer: str = "rmsprop"  # rmsprop | sgd | adam
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay_every: int = 4
    decay_rate: float = 0.94
    balanced: bool = False
    seed: int = 0
    num_workers: int = 0
    extra: dict = field(default_factory=dict)


class FeatureDataset(Dataset):
    """Cached backbone features (N, F) or (N, k, F) with labels; with k views, each draw of
    a sample takes one of its views at random."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features = features
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        f = self.features[i]
        if f.ndim == 2:
            f = f[torch.randint(f.shape[0], (1,)).item()]
        return f, self.labels[i]


class ImageDataset(Dataset):
    """Image files with labels, randomly cropped and flipped for training."""

    def __init__(self, paths, labels, preprocess, transform=None):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.mode = image_mode(preprocess)
        self.transform = transform or train_transform(preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_image(self.paths[i], self.mode)), self.labels[i]


class TensorImageDataset(Dataset):
    """Preprocessed image tensors (N, C, H, W) held in memory, with labels: end-to-end
    training without decoding a file per step.

    ``crop``: each draw of a sample is a random ``crop`` x ``crop`` window of it, flipped
    horizontally half of the time (random crop + flip as in the paper, within the stored
    image); None serves the tensors as they are.
    """

    def __init__(self, images: torch.Tensor, labels, crop: int | None = None):
        if crop is not None and crop > min(images.shape[-2:]):
            raise ValueError(f"crop {crop} is larger than the images ({tuple(images.shape[-2:])})")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.augment = T.Compose([T.RandomCrop(crop), T.RandomHorizontalFlip()]) if crop else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        return (self.augment(x) if self.augment else x), self.labels[i]


def balanced_sampler(labels: torch.Tensor, num_samples: int | None = None, generator=None) -> WeightedRandomSampler:
    """Draw samples so that every class is equally likely, whatever its number of examples."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels)
    weights = 1.0 / counts[labels].double()
    return WeightedRandomSampler(weights, num_samples or len(labels), replacement=True, generator=generator)


def _param_groups(model: ImprintModel, cfg: TrainConfig, end_to_end: bool) -> list[dict]:
    head = list(model.embedder.fc.parameters()) + [p for p in model.classifier.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": cfg.lr * cfg.head_lr_mult}]
    if end_to_end and cfg.backbone_lr_mult > 0:
        groups.append({"params": list(model.embedder.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult})
    return groups


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be rmsprop, sgd or adam, got {cfg.optimizer!r}")


def train(
    model: ImprintModel,
    dataset: FeatureDataset | ImageDataset,
    cfg: TrainConfig,
    evaluate: Callable[[ImprintModel], dict] | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    end_to_end: bool | None = None,
) -> list[dict]:
    """Train ``model`` on ``dataset`` for ``cfg.epochs`` epochs; returns the per-epoch history.

    With a ``FeatureDataset`` the backbone is frozen and skipped; with an ``ImageDataset`` or
    a ``TensorImageDataset`` the whole network trains (``end_to_end`` overrides the choice). ``evaluate(model)`` runs after each epoch (model in eval
    mode) and its dict is added to the history. With ``checkpoint`` set, the state after
    each epoch is written there (atomically) and a later call resumes from it.

    Under ``torchrun`` (several ranks, see ``imprinting.distributed``) the same call trains
    one model with ``DistributedDataParallel``: ``cfg.batch_size`` is the global batch,
    split across the ranks; the sample stream (class-balanced or not) is the one a single
    process would draw, each rank taking its share of every batch, so the model equals the
    single-process one up to floating-point summation order when the data are not randomly
    augmented (random crops and views are drawn by each rank, from its own seed, and batch
    norm statistics are per rank). ``evaluate`` runs on rank 0 only (on the model's own
    device) and its record reaches every rank; checkpoints and progress bars are rank 0's;
    a resumed run reads the checkpoint on rank 0 and hands it to the others, so only rank
    0 needs to see the file. Every rank returns the same history and holds the same weights.
    """
    if end_to_end is None:
        end_to_end = not isinstance(dataset, FeatureDataset)
    dd.init_from_env()
    if end_to_end:
        return _train(model, dataset, cfg, evaluate, checkpoint, progress, True)
    # Small matrix products on cached features: one thread is faster than two fighting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, dataset, cfg, evaluate, checkpoint, progress, False)
    finally:
        torch.set_num_threads(threads)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _train(model, dataset, cfg, evaluate, checkpoint, progress, end_to_end) -> list[dict]:
    world, rank = dd.world_size(), dd.rank()
    if world > 1:
        _check_same_run(dataset, cfg, end_to_end)
        dd.broadcast_module(model)  # the same weights everywhere, the frozen backbone included
    generator = torch.Generator().manual_seed(cfg.seed)  # the sample stream: the same on every rank
    torch.manual_seed(cfg.seed + dd.RANK_SEED_STRIDE * rank)  # augmentation: each rank its own
    sampler = (
        balanced_sampler(dataset.labels, generator=generator)
        if cfg.balanced
        else RandomSampler(dataset, generator=generator)
    )
    if world > 1:
        batches = dd.ShardedBatchSampler(sampler, cfg.batch_size, rank, world)
        loader = DataLoader(dd.PairDataset(dataset), batch_sampler=batches, num_workers=cfg.num_workers)
        global_sizes = batches.global_sizes()
    else:
        loader = DataLoader(dataset, cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=False)
    home = _device_of(model)
    device = dd.device() if world > 1 else home
    if device != home:
        model.to(device)
    try:
        optimizer = make_optimizer(_param_groups(model, cfg, end_to_end), cfg)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.decay_every, cfg.decay_rate)
        history: list[dict] = []
        start = 0
        if checkpoint is not None:
            start, history = _resume(checkpoint, model, optimizer, scheduler, generator)
        step = model if end_to_end else model.head()
        if world > 1:  # built after resuming: DDP starts every rank from rank 0's weights
            step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
        for epoch in range(start, cfg.epochs):
            model.train()
            if not end_to_end or cfg.backbone_lr_mult == 0:
                model.embedder.backbone.eval()  # frozen: keep batch-norm statistics
            total, correct, loss_sum = 0, 0, 0.0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress or rank != 0)
            lrs = [g["lr"] for g in optimizer.param_groups]  # this epoch's, before the decay step
            for t, batch in enumerate(bar):
                if world == 1:
                    x, y = (v.to(device) for v in batch)
                    logits = step(x)
                    loss = F.cross_entropy(logits, y)
                    real = None
                else:
                    x, y, real = (v.to(device) for v in batch)
                    logits = step(x)
                    losses = F.cross_entropy(logits, y, reduction="none") * real
                    # DDP averages gradients over ranks: scaled so, they are those of the global batch mean.
                    loss = losses.sum() * (world / global_sizes[t])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if real is None:
                    loss_sum += loss.item() * len(y)
                    correct += (logits.argmax(1) == y).sum().item()
                    total += len(y)
                else:  # padding (real False) counts for nothing
                    loss_sum += losses.sum().item()
                    correct += ((logits.argmax(1) == y) & real).sum().item()
                    total += int(real.sum().item())
            scheduler.step()
            if world > 1:
                loss_sum, correct, total = dd.all_reduce_sum([loss_sum, correct, total])
                correct, total = int(correct), int(total)
            model.eval()
            record = {"epoch": epoch + 1, "loss": loss_sum / max(total, 1),
                      "train_top1": 100.0 * correct / max(total, 1), "lr": lrs}
            if evaluate is not None:
                record.update(dd.run_on_main(lambda: _evaluate(model, evaluate, home)))
            history.append(record)
            if checkpoint is not None:
                _save_state(checkpoint, epoch + 1, model, optimizer, scheduler, generator, history, cfg)
        del step
    finally:
        if device != home:
            model.to(home)
    model.eval()
    return history


def _evaluate(model, evaluate, home) -> dict:
    """``evaluate(model)`` with the model on the device it came on (a copy if it trains elsewhere)."""
    with torch.no_grad():
        if _device_of(model) == home:
            return evaluate(model)
        return evaluate(copy.deepcopy(model).to(home).eval())


def _check_same_run(dataset, cfg, end_to_end) -> None:
    """Every rank must train the same thing, or the ranks would wait on each other forever."""
    mine = (len(dataset), cfg.batch_size, cfg.seed, cfg.epochs, cfg.balanced, bool(end_to_end))
    seen = dd.all_gather_object(mine)
    if any(s != seen[0] for s in seen):
        raise ValueError(f"ranks disagree on (data size, batch size, seed, epochs, balanced, end to end): {seen}")


def _rng_states() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _save_state(path, epoch, model, optimizer, scheduler, generator, history, cfg) -> None:
    ranks = dd.all_gather_object(_rng_states())  # a collective: every rank takes part
    dd.run_on_main(lambda: _write_state(path, epoch, model, optimizer, scheduler, generator, history, cfg, ranks))


def _write_state(path, epoch, model, optimizer, scheduler, generator, history, cfg, ranks) -> None:
    state = {
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": ranks[0]["cpu"],
        "rank_rng": ranks,  # each rank's random state (augmentation), for exact resumption
        "history": history,
        "config": asdict(cfg),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _resume(path, model, optimizer, scheduler, generator) -> tuple[int, list[dict]]:
    """Load the state written by ``_save_state`` if ``path`` exists; (0, []) if not.

    Rank 0 reads the file and hands the state to the other ranks (a barrier too: no rank
    starts before all have it).
    """
    payload = None
    if dd.is_main():
        if not Path(path).exists():
            payload = ("none", None)
        else:
            try:
                payload = ("ok", torch.load(path, map_location="cpu", weights_only=True))  # no arbitrary unpickling
            except Exception as exc:
                payload = ("error", str(exc))
    kind, state = dd.broadcast_object(payload)
    if kind == "none":
        return 0, []
    try:
        if kind == "error":
            raise RuntimeError(state)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        ranks = state.get("rank_rng") or [{"cpu": state["torch_rng"]}]
        if len(ranks) == dd.world_size():
            torch.set_rng_state(ranks[dd.rank()]["cpu"])
            if "cuda" in ranks[dd.rank()] and torch.cuda.is_available():
                torch.cuda.set_rng_state(ranks[dd.rank()]["cuda"])
        elif dd.rank() == 0:  # another number of ranks: rank 0 goes on from the saved state, the others
            torch.set_rng_state(ranks[0]["cpu"])  # from their seeds
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot resume training from this file ({exc})") from None
    return int(state["epoch"]), list(state["history"])
