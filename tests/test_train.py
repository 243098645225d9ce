"""The training loop: balanced sampling, the paper's optimizer schedule, resumption."""

from collections import Counter

import pytest
import torch

from imprinting.model import CosineClassifier, Embedder, ImprintModel
from imprinting.train import (
    FeatureDataset,
    TensorImageDataset,
    TrainConfig,
    _param_groups,
    balanced_sampler,
    make_optimizer,
    train,
)


def _clusters(classes=4, per_class=(40, 40, 5, 1), dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    xs, ys = [], []
    for c, n in enumerate(per_class):
        xs.append(centers[c] + 0.3 * torch.randn(n, dim, generator=g))
        ys += [c] * n
    return torch.cat(xs), torch.tensor(ys)


def _head(feature_dim=8, dim=6, classes=4):
    emb = Embedder(torch.nn.Identity(), feature_dim, dim)
    return ImprintModel(emb, CosineClassifier(dim, classes), [f"c{i}" for i in range(classes)])


def test_balanced_sampler_makes_every_class_equally_likely():
    labels = torch.tensor([0] * 100 + [1] * 5 + [2] * 1)
    sampler = balanced_sampler(labels, num_samples=30_000, generator=torch.Generator().manual_seed(0))
    counts = Counter(labels[i].item() for i in sampler)
    for c in range(3):
        assert abs(counts[c] / 30_000 - 1 / 3) < 0.015, counts


def test_paper_optimizer_rmsprop_head_lr_times_ten_and_decay():
    model = _head()
    groups = _param_groups(model, TrainConfig(), end_to_end=True)
    opt = make_optimizer(groups, TrainConfig())
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["momentum"] == 0.9


def test_train_decays_the_learning_rates_by_0_94_every_4_epochs():
    """What ``train`` itself used in each epoch, against the paper's schedule by hand:
    1e-3 for the new layers, 1e-4 for the backbone, x0.94 after every 4 epochs."""
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 8))
    model = ImprintModel(Embedder(backbone, 8, 4), CosineClassifier(4, 2), ["a", "b"])
    x, y = torch.randn(8, 1, 2, 4), torch.tensor([0, 1] * 4)
    hist = train(model, TensorImageDataset(x, y), TrainConfig(epochs=9, batch_size=8), progress=False)
    for epoch, record in enumerate(hist):
        decay = 0.94 ** (epoch // 4)
        assert record["lr"] == [pytest.approx(1e-3 * decay, rel=1e-12), pytest.approx(1e-4 * decay, rel=1e-12)]


def test_training_learns_separable_classes_and_records_each_epoch():
    x, y = _clusters(per_class=(30, 30, 30, 30))
    model = _head()
    seen = []
    hist = train(model, FeatureDataset(x, y), TrainConfig(epochs=6, lr=1e-3, batch_size=16),
                 evaluate=lambda m: seen.append(1) or {"acc": 1.0}, progress=False)
    assert [h["epoch"] for h in hist] == list(range(1, 7)) and len(seen) == 6
    assert hist[-1]["train_top1"] > 95 and hist[-1]["loss"] < hist[0]["loss"]


def test_frozen_backbone_stays_fixed_end_to_end_trains_it():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 8))
    model = ImprintModel(Embedder(backbone, 8, 4), CosineClassifier(4, 2), ["a", "b"])
    before = backbone[1].weight.detach().clone()
    x = torch.randn(20, 8)
    y = torch.arange(20) % 2
    train(model, FeatureDataset(x, y), TrainConfig(epochs=1, lr=1e-2), progress=False)
    assert torch.equal(backbone[1].weight, before)
    train(model, TensorImageDataset(x.reshape(20, 2, 2, 2), y), TrainConfig(epochs=1, lr=1e-2), progress=False)
    assert not torch.equal(backbone[1].weight, before)


def test_tensor_images_with_crop_are_random_windows_flipped_half_the_time():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    ds = TensorImageDataset(images, [0, 1], crop=5)
    windows = {(i, j, flip) for i in range(4) for j in range(4) for flip in (False, True)}
    seen = set()
    torch.manual_seed(0)
    for _ in range(200):
        x, y = ds[1]
        assert x.shape == (3, 5, 5) and y == 1
        # which window of image 1 is it (values are unique, so exactly one matches)
        match = [(i, j, f) for i, j, f in windows
                 if torch.equal(x, (images[1, :, i:i + 5, j:j + 5].flip(-1) if f else images[1, :, i:i + 5, j:j + 5]))]
        assert len(match) == 1
        seen.add(match[0])
    assert {f for _, _, f in seen} == {False, True} and len(seen) > 16
    assert torch.equal(TensorImageDataset(images, [0, 1])[0][0], images[0])  # no crop: as it is
    with pytest.raises(ValueError, match="crop 9 is larger"):
        TensorImageDataset(images, [0, 1], crop=9)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    x, y = _clusters()
    aug = torch.stack([x, x + 0.1, x - 0.1], dim=1)  # 3 views: random view choice must resume too
    cfg = TrainConfig(epochs=4, lr=1e-3, batch_size=8, balanced=True, seed=3)
    straight = _head()
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    h1 = train(straight, FeatureDataset(aug, y), cfg, progress=False)

    resumed = _head()
    resumed.load_state_dict(init)
    ckpt = tmp_path / "run.pt"
    train(resumed, FeatureDataset(aug, y), TrainConfig(**{**cfg.__dict__, "epochs": 2}), checkpoint=ckpt, progress=False)
    other = _head()  # a new process: fresh model, state from the checkpoint
    h2 = train(other, FeatureDataset(aug, y), cfg, checkpoint=ckpt, progress=False)
    assert [h["loss"] for h in h2] == pytest.approx([h["loss"] for h in h1])
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)


def test_corrupt_training_checkpoint_is_a_clear_error(tmp_path):
    from imprinting.checkpoint import CheckpointError

    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes(b"garbage")
    x, y = _clusters()
    with pytest.raises(CheckpointError, match="run.pt"):
        train(_head(), FeatureDataset(x, y), TrainConfig(epochs=1), checkpoint=ckpt, progress=False)
