"""Training never goes through a frozen engine: a module being trained runs in PyTorch."""

from __future__ import annotations

import pytest
import torch

from helpers import make_image
from imprinting import engines
from imprinting.build import create_model
from imprinting.engines import TorchEngine
from imprinting.engines import runtimes, select
from imprinting.train import TensorImageDataset, TrainConfig, train


@pytest.fixture
def no_engines(monkeypatch):
    """Any attempt to build a non-PyTorch engine or to measure fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a frozen engine was asked for during training")

    monkeypatch.setattr(select, "measure", refuse)
    monkeypatch.setattr(runtimes, "build_engine", refuse)


def test_a_model_in_training_mode_embeds_with_pytorch(tmp_path, no_engines):
    model = create_model("conv4", pretrained=False, dim=8, engine="openvino")
    model.train()
    assert isinstance(model.frozen_engine(), TorchEngine)
    files = [make_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    emb = model.embed_images(files)  # in training mode: PyTorch, and the mode is kept
    assert emb.shape == (3, 8) and model.training
    module = model.embedder.backbone
    assert isinstance(engines.frozen_engine(module, model.preprocess, "onnxruntime", training=True), TorchEngine)


def test_end_to_end_training_never_builds_an_engine(no_engines):
    model = create_model("conv4", pretrained=False, dim=8, num_classes=2, engine="auto")
    before = model.embedder.backbone.features[0].weight.detach().clone()
    x, y = torch.randn(8, 1, 28, 28), torch.tensor([0, 1] * 4)
    train(model, TensorImageDataset(x, y), TrainConfig(epochs=1, batch_size=4, seed=0), progress=False)
    assert not torch.equal(before, model.embedder.backbone.features[0].weight)  # the backbone trained


def test_a_part_left_in_training_mode_still_embeds_in_eval_mode(tmp_path):
    """``_embed_with`` skips eval() and train() when no module is training (two walks of every
    module a batch): a backbone left in training mode under a model in eval mode must still
    embed with its running statistics, as a model wholly in eval mode does, and be left in
    eval mode as before."""
    model = create_model("conv4", pretrained=False, dim=8, engine="torch")
    files = [make_image(tmp_path / f"{i}.png", seed=i, noise=80) for i in range(3)]
    model.eval()
    want = model.embed_images(files)
    model.embedder.backbone.features[1].train()  # a BatchNorm: batch statistics if left training
    got = model.embed_images(files)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not any(m.training for m in model.modules())
    # and the walk that decides it reaches every module train() does
    assert {id(m) for m in engines.walk(model)} == {id(m) for m in model.modules()}


def test_the_walk_visits_each_module_once_even_in_a_cycle():
    """``engines.walk`` reaches a module registered twice once, as ``modules()`` does, and
    ends on a cycle (a module registered under itself) instead of looping forever."""
    shared = torch.nn.Linear(2, 2)
    net = torch.nn.Sequential(shared, torch.nn.ReLU(), torch.nn.Sequential(shared, torch.nn.Linear(2, 3)))
    got = engines.walk(net)
    assert len(got) == len({id(m) for m in got}) == len(list(net.modules())) == 5
    net[2].add_module("back", net)  # a cycle: modules() would recurse without end too
    assert {id(m) for m in engines.walk(net)} == {id(m) for m in got}
