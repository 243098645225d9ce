"""Imprinting against hand-computed references: the formula, incremental = batch, isolation."""

import math

import numpy as np
import pytest
import torch

from imprinting import checkpoint
from imprinting.build import create_model
from imprinting.imprint import imprint_weights, normalized_mean, random_weights
from helpers import make_image


def _reference_weight(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    return mean / np.linalg.norm(mean)


@pytest.fixture
def model():
    return create_model("conv4", pretrained=False, dim=8)


def test_weight_is_renormalized_mean_of_normalized_embeddings(model):
    e = torch.randn(5, 8) * torch.tensor([[1.0], [10.0], [0.1], [3.0], [7.0]])  # unequal lengths
    i = model.add_class("x", e)
    np.testing.assert_allclose(model.classifier.weight[i].detach().numpy(), _reference_weight(e.numpy()), atol=1e-6)
    np.testing.assert_allclose(normalized_mean(e).numpy(), _reference_weight(e.numpy()), atol=1e-6)


def test_batch_imprint_weights_match_per_class_reference():
    e = torch.randn(12, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 2])
    w = imprint_weights(e, labels, 4)
    for c in range(3):
        np.testing.assert_allclose(w[c].numpy(), _reference_weight(e[labels == c].numpy()), atol=1e-6)
    assert torch.equal(w[3], torch.zeros(4))  # no examples, no direction


def test_one_example_gives_its_own_direction(model):
    e = torch.tensor([[3.0, 4.0, 0, 0, 0, 0, 0, 0]])
    i = model.add_class("one", e)
    torch.testing.assert_close(model.classifier.weight[i].detach(), e[0] / 5.0)


def test_incremental_equals_batch_also_across_save_and_load(model, tmp_path):
    e = torch.randn(7, 8)
    batch = create_model("conv4", pretrained=False, dim=8)
    batch.add_class("c", e)
    model.add_class("c", e[:2])
    model.add_examples("c", e[2:3])
    path = tmp_path / "m.safetensors"
    checkpoint.save(model, path)
    reloaded = checkpoint.load(path)
    for row in e[3:]:
        reloaded.add_examples("c", row[None])
    torch.testing.assert_close(reloaded.classifier.weight.detach(), batch.classifier.weight.detach(), atol=1e-7, rtol=0)
    assert int(reloaded.classes.counts[0]) == 7


def test_imprinting_never_touches_other_classes_bit_for_bit(model):
    for k in range(20):  # crosses the first buffer growth (16 rows)
        model.add_class(f"c{k}", torch.randn(3, 8))
    before = model.classifier.weight.detach().clone()
    model.add_examples("c5", torch.randn(2, 8))
    after = model.classifier.weight.detach()
    others = [i for i in range(20) if i != 5]
    assert torch.equal(after[others], before[others])
    assert not torch.equal(after[5], before[5])
    model.add_class("new", torch.randn(1, 8))
    assert torch.equal(model.classifier.weight.detach()[:20][others], before[others])


def test_duplicate_and_base_classes_are_refused():
    m = create_model("conv4", pretrained=False, dim=8, num_classes=2)  # two trained "base" classes
    with pytest.raises(ValueError, match="already exists"):
        m.add_class("class_0", torch.randn(1, 8))
    with pytest.raises(ValueError, match="base class"):
        m.add_examples("class_1", torch.randn(1, 8))
    with pytest.raises(KeyError, match="unknown class 'nope'"):
        m.add_examples("nope", torch.randn(1, 8))
    with pytest.raises(ValueError, match="shape"):
        m.add_class("bad", torch.randn(2, 5))


def test_remove_imprinted_class_keeps_the_others(model):
    for k in range(3):
        model.add_class(f"c{k}", torch.randn(2, 8))
    w0, w2 = model.classifier.weight[0].detach().clone(), model.classifier.weight[2].detach().clone()
    model.remove_class("c1")
    assert model.class_names == ["c0", "c2"]
    assert torch.equal(model.classifier.weight[0].detach(), w0) and torch.equal(model.classifier.weight[1].detach(), w2)
    assert model.classes.counts.tolist() == [2, 2]


def test_random_weights_are_xavier_uniform_and_seeded():
    c, d = 300, 64
    w = random_weights(c, d, torch.Generator().manual_seed(1))
    bound = math.sqrt(6.0 / (c + d))
    assert w.abs().max() <= bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.01 * bound
    assert torch.equal(w, random_weights(c, d, torch.Generator().manual_seed(1)))
    assert not torch.equal(w, random_weights(c, d, torch.Generator().manual_seed(2)))


def test_augmented_imprinting_averages_k_random_views(tmp_path):
    m = create_model("conv4", pretrained=False, dim=8, image_size=28)
    files = [make_image(tmp_path / f"{i}.png", (i * 60, 100, 50), size=(48, 40), seed=i) for i in range(2)]
    torch.manual_seed(123)
    views = m.embed_images(files, views=5)
    assert views.shape == (10, 8)
    assert not torch.allclose(views[0], views[1])  # random crops differ
    torch.manual_seed(123)
    m.imprint("aug", files, views=5)
    np.testing.assert_allclose(m.classifier.weight[0].detach().numpy(), _reference_weight(views.numpy()), atol=1e-6)
    assert int(m.classes.counts[0]) == 10


def test_class_restored_from_its_sum_equals_the_imprinted_one(model):
    e = torch.randn(4, 8)
    model.add_class("a", e)
    other = create_model("conv4", pretrained=False, dim=8)
    other.add_class_from_sum("a", model.classes.sums[0].copy(), int(model.classes.counts[0]))
    assert torch.equal(other.classifier.weight.detach(), model.classifier.weight.detach())
    other.add_examples("a", e[:1])
    model.add_examples("a", e[:1])
    assert torch.equal(other.classifier.weight.detach(), model.classifier.weight.detach())


def test_predictions_rank_by_cosine_and_flag_unknowns(model):
    model.add_class("x", torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0]]))
    model.add_class("y", torch.tensor([[0, 1.0, 0, 0, 0, 0, 0, 0]]))
    q = torch.nn.functional.normalize(torch.tensor([[0.9, 0.3, 0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0, 0, 0]]), dim=1)
    p = model.predict_embeddings(q, k=2, unknown_threshold=0.5)
    assert p[0].classes == ["x", "y"] and p[0].cosines[0] == pytest.approx(0.9 / math.sqrt(0.9))
    s = model.classifier.scale.item()
    expected = torch.softmax(torch.tensor([s * p[0].cosines[0], s * p[0].cosines[1]]), 0)
    assert p[0].probabilities == pytest.approx(expected.tolist(), abs=1e-6)
    assert not p[0].unknown and p[1].unknown  # the second query is orthogonal to both classes
