"""The service on a model with the closed-form head (``imprinting.heads.WhitenedHead``): taught
classes score as the library scores them, and a restart restores the same predictions (the
store keeps sums and counts; the head's shared statistics come with the model file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imprinting
from imprinting.imprint import fit_model_head
from imprinting.serve.service import Service

COLORS = [(200, 40, 40), (40, 190, 40), (40, 40, 210), (190, 190, 40)]


@pytest.fixture(scope="module")
def whitened_model(tmp_path_factory, kit):
    torch.manual_seed(0)
    model = imprinting.create_model("conv4", pretrained=False, dim=16, power=0.5)
    images, labels = [], []
    for c, color in enumerate(COLORS):
        imgs = [kit.decode(kit.image_bytes(color, seed=10 * c + i, noise=70)) for i in range(4)]
        images += imgs
        labels += [c] * 4
    e = model.embed_images(images)
    for c in range(len(COLORS)):
        model.imprint_embeddings(f"class_{c}", e[torch.tensor(labels) == c])
    report = fit_model_head(model, e.numpy(), np.array(labels), "whitened")
    assert report["head"] == "whitened"
    path = tmp_path_factory.mktemp("head") / "whitened.safetensors"
    imprinting.save(model, path)
    return path


def test_service_scores_with_the_head_and_a_restart_keeps_them(whitened_model, kit, tmp_path):
    store = tmp_path / "store.sqlite"
    teach = [(f"{i}.png", kit.image_bytes((120, 60, 160), seed=50 + i, noise=70)) for i in range(3)]
    probe = [(f"p{i}.png", kit.image_bytes(COLORS[i % 4], seed=90 + i, noise=70)) for i in range(6)]
    with Service.open(whitened_model, store) as s:
        s.teach("violet", teach)
        before = s.predict(probe, k=3)["predictions"]
    with Service.open(whitened_model, store) as s:
        assert s.predict(probe, k=3)["predictions"] == before
    # the library, taught the same images, ranks and scores the same
    model = imprinting.load(whitened_model)
    assert model.classes.head is not None
    model.imprint("violet", [kit.decode(d) for _, d in teach])
    want = model.predict_images([kit.decode(d) for _, d in probe], k=3)
    assert [[c["class"] for c in p["top"]] for p in before] == [p.classes for p in want]
    np.testing.assert_allclose([[c["probability"] for c in p["top"]] for p in before],
                               [p.probabilities for p in want], atol=1e-4)
