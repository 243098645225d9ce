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

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from imprinting.data.images import load_image
from imprinting.data.transforms import image_mode, train_transform
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
    """Preprocessed image tensors (N, C, H, W) held in memory, with labels (small images,
    such as Omniglot's, train end to end from memory)."""

    def __init__(self, images: torch.Tensor, labels):
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


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
    """
    if end_to_end is None:
        end_to_end = not isinstance(dataset, FeatureDataset)
    if end_to_end:
        return _train(model, dataset, cfg, evaluate, checkpoint, progress, True)
    # Small matrix products on cached features: one thread is faster than two fighting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, dataset, cfg, evaluate, checkpoint, progress, False)
    finally:
        torch.set_num_threads(threads)


def _train(model, dataset, cfg, evaluate, checkpoint, progress, end_to_end) -> list[dict]:
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    sampler = (
        balanced_sampler(dataset.labels, generator=generator)
        if cfg.balanced
        else RandomSampler(dataset, generator=generator)
    )
    loader = DataLoader(dataset, cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=False)
    optimizer = make_optimizer(_param_groups(model, cfg, end_to_end), cfg)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.decay_every, cfg.decay_rate)
    history: list[dict] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        start, history = _resume(checkpoint, model, optimizer, scheduler, generator)
    for epoch in range(start, cfg.epochs):
        model.train()
        if not end_to_end or cfg.backbone_lr_mult == 0:
            model.embedder.backbone.eval()  # frozen: keep batch-norm statistics
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
        for x, y in bar:
            if end_to_end:
                logits = model(x)
            else:
                logits = model.classifier(model.embedder.forward_head(x))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        scheduler.step()
        model.eval()
        record = {"epoch": epoch + 1, "loss": loss_sum / max(total, 1), "train_top1": 100.0 * correct / max(total, 1)}
        if evaluate is not None:
            with torch.no_grad():
                record.update(evaluate(model))
        history.append(record)
        if checkpoint is not None:
            _save_state(checkpoint, epoch + 1, model, optimizer, scheduler, generator, history, cfg)
    model.eval()
    return history


def _save_state(path, epoch, model, optimizer, scheduler, generator, history, cfg) -> None:
    from imprinting.files import atomic_write

    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "config": asdict(cfg),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _resume(path, model, optimizer, scheduler, generator) -> tuple[int, list[dict]]:
    from imprinting.checkpoint import CheckpointError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary unpickling
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot resume training from this file ({exc})") from None
    return int(state["epoch"]), list(state["history"])
