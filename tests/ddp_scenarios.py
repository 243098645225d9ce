"""The 2-rank scenarios of test_distributed.py, in a module of their own: spawned processes
import the function they run by module name (the tests use pytest's importlib mode)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from imprinting import distributed as dd
from imprinting.model import CosineClassifier, Embedder, ImprintModel
from imprinting.train import FeatureDataset, TensorImageDataset, TrainConfig, train

WORLD = 2

# 33 samples in batches of 8: the last global batch holds 1 sample, so rank 1 gets a padded,
# zero-weight share of it; the classes are unbalanced (13/9/6/5) and the sampler balances them.
FEATURE_CFG = TrainConfig(epochs=3, batch_size=8, lr=1e-3, balanced=True, seed=5)
# 20 images in batches of 6: the last batch (2) splits 1 + 1.
E2E_CFG = TrainConfig(epochs=2, batch_size=6, lr=1e-3, optimizer="adam", seed=2)
RESUME_CFG = TrainConfig(epochs=4, batch_size=8, lr=1e-3, balanced=True, seed=3)


def features():
    g = torch.Generator().manual_seed(0)
    sizes = (13, 9, 6, 5)
    centers = torch.randn(len(sizes), 8, generator=g) * 3
    x = torch.cat([centers[c] + 0.3 * torch.randn(n, 8, generator=g) for c, n in enumerate(sizes)])
    y = torch.tensor([c for c, n in enumerate(sizes) for _ in range(n)])
    return x, y


def head(seed=1):
    torch.manual_seed(seed)
    return ImprintModel(Embedder(torch.nn.Identity(), 8, 6), CosineClassifier(6, 4), [f"c{i}" for i in range(4)])


def image_tensors():
    g = torch.Generator().manual_seed(1)
    return torch.randn(20, 2, 2, 2, generator=g), torch.arange(20) % 3


def net(seed=2):
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 8), torch.nn.ReLU())
    return ImprintModel(Embedder(backbone, 8, 4), CosineClassifier(4, 3), ["a", "b", "c"])


def views():
    x, y = features()
    return torch.stack([x, x + 0.1, x - 0.1], dim=1), y  # 3 cached views: random view choice per draw


def conv4():
    from imprinting.backbones import create_backbone

    torch.manual_seed(0)
    return create_backbone("conv4", pretrained=False)


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(rank: int, port: int, tmp: str, folder: str) -> None:
    from imprinting.data.features import View, cached_features
    from imprinting.data.folder import read_folder

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert dd.init_from_env() and dd.world_size() == WORLD and dd.rank() == rank
    tmp = Path(tmp)
    out = {}

    model = head()
    hist = train(model, FeatureDataset(*features()), FEATURE_CFG, evaluate=lambda m: {"evaluated_on": dd.rank()},
                 progress=False)
    out["feature"] = (state_of(model), hist)

    model = net()
    hist = train(model, TensorImageDataset(*image_tensors()), E2E_CFG, progress=False)
    out["e2e"] = (state_of(model), hist)

    viewed = FeatureDataset(*views())
    straight = head()
    h_straight = train(straight, viewed, RESUME_CFG, progress=False)
    ckpt = tmp / "run.pt"
    first = head()
    train(first, viewed, TrainConfig(**{**RESUME_CFG.__dict__, "epochs": 2}), checkpoint=ckpt, progress=False)
    resumed = head(seed=99)  # a new process: fresh model, state from the checkpoint
    h_resumed = train(resumed, viewed, RESUME_CFG, checkpoint=ckpt, progress=False)
    out["resume"] = (state_of(straight), h_straight, state_of(resumed), h_resumed)

    images = read_folder(folder)
    bb = conv4()
    out["features"] = {v.describe(): cached_features(bb, images, view=v, cache=tmp / "cache", progress=False,
                                                     batch_size=4, num_workers=0)
                       for v in (View(), View(2, seed=1))}
    torch.save(out, tmp / f"rank{rank}.pt")
