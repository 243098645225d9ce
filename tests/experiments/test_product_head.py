"""``methods.ProductHead`` is the product's path: its scores are those of a model made by
``imprint train --head whitened`` (``fit_trained_head``) and then taught the episode's classes one
at a time, the way ``imprint add-class`` teaches them."""

from __future__ import annotations

import numpy as np
import torch
from experiments_fixtures import tiny_lowshot

from imprinting import protocol
from imprinting.build import build_model
from imprinting.imprint import fit_trained_head
from imprinting.methods import ProductHead
from imprinting.protocol import LowShotData
from imprinting.spec import ModelSpec


def _noisy(noise=1.5):
    """The tiny data set with its classes overlapping, so that the correction matters."""
    d = tiny_lowshot(0, train_per_class=30)
    g = torch.Generator().manual_seed(1)

    def blur(x):
        return (x + noise * torch.randn(x.shape, generator=g)).clamp_min(0)

    return LowShotData("noisy", d.train, d.test, blur(d.train_feats), blur(d.test_feats), d.base, d.novel)


def test_the_method_scores_as_a_trained_model_taught_the_episode():
    data = _noisy()
    ep = protocol.episodes(data, (1,), 1, 0)[0]
    fit = ProductHead(True).fit(data, ep)
    got = fit.scorer(data.test_feats).numpy()
    frozen = ProductHead(False).fit(data, ep)  # the frozen corrections score otherwise here
    assert fit.info["correction"]["1"] != frozen.info["correction"]["1"]

    names = [str(c) for c in range(len(data.order))]
    base = data.base_train_idx
    spec = ModelSpec(backbone=None, pretrained=False, dim=None, feature_dim=data.feature_dim)
    model = build_model(spec, names[: len(data.base)])
    report = fit_trained_head(model, data.train_feats[base], data.train_y[base].numpy(), "whitened")
    assert report["head"] == "whitened" and model.classes.head.rule is not None
    y = data.train_y.numpy()
    with torch.no_grad():
        for c in range(len(data.base), len(data.order)):  # one class at a time, as add-class does
            shots = ep.shots[torch.from_numpy(y[ep.shots.numpy()] == c)]
            model.imprint_embeddings(names[c], model.embedder.forward_head(data.train_feats[shots]))
        e = model.embedder.forward_head(data.test_feats).numpy()
    want = model.classes.logits(None, e)
    assert model.classes.names == tuple(names) and model.classes.head_info()["correction"] == fit.info["correction"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).all()
