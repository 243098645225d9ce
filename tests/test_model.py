"""The cosine classifier, the embedder and the linear baseline against hand-computed references."""

import numpy as np
import torch

from imprinting.model import CosineClassifier, Embedder, LinearClassifier


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_cosine_logits_are_scale_times_cosine():
    clf = CosineClassifier(dim=8, num_classes=5, scale=7.5)
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    w = clf.weight.detach().numpy()
    expected = np.array([[7.5 * np.dot(xi, wc) / np.linalg.norm(wc) for wc in w] for xi in x.numpy()])
    np.testing.assert_allclose(clf(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_weight_norm_does_not_change_logits():
    clf = CosineClassifier(dim=6, num_classes=3)
    x = torch.nn.functional.normalize(torch.randn(5, 6), dim=1)
    before = clf(x).detach()
    with torch.no_grad():
        clf.weight.mul_(torch.tensor([[3.0], [0.1], [42.0]]))
    torch.testing.assert_close(clf(x).detach(), before)


def test_argmax_is_nearest_template_by_euclidean_distance():
    # Paper Eq. 7: for unit vectors, max cosine = min Euclidean distance to the template.
    gen = torch.Generator().manual_seed(3)
    clf = CosineClassifier(dim=16, num_classes=20)
    x = torch.nn.functional.normalize(torch.randn(200, 16, generator=gen), dim=1)
    templates = _unit(clf.weight.detach().numpy())
    dist = np.linalg.norm(x.numpy()[:, None, :] - templates[None, :, :], axis=2)
    assert (clf(x).argmax(1).numpy() == dist.argmin(1)).all()


def test_per_class_scale_multiplies_each_column():
    clf = CosineClassifier(dim=4, num_classes=3, per_class_scale=True)
    with torch.no_grad():
        clf.scale.copy_(torch.tensor([1.0, 2.0, 5.0]))
    x = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    cos = x.numpy() @ _unit(clf.weight.detach().numpy()).T
    np.testing.assert_allclose(clf(x).detach().numpy(), cos * np.array([1.0, 2.0, 5.0]), rtol=1e-5, atol=1e-6)


def test_scale_is_trainable_or_fixed():
    assert CosineClassifier(4, 2).scale.requires_grad
    assert not CosineClassifier(4, 2, learn_scale=False).scale.requires_grad
    clf = CosineClassifier(4, 2)
    x = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    torch.nn.functional.cross_entropy(clf(x), torch.tensor([0, 1, 0])).backward()
    assert clf.scale.grad is not None and clf.weight.grad.shape == (2, 4)


def test_embedder_outputs_unit_vectors_and_splits_like_timm():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    emb = Embedder(backbone, feature_dim=10, dim=4)
    x = torch.randn(5, 3, 2, 2)
    out = emb(x)
    assert out.shape == (5, 4)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out, emb.forward_head(emb.forward_features(x)))
    raw = Embedder(backbone, feature_dim=10, dim=None)
    assert raw.dim == 10
    feats = backbone(x)
    expected = feats.detach().numpy() / np.linalg.norm(feats.detach().numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(raw(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_linear_classifier_is_affine_with_bias():
    clf = LinearClassifier(dim=3, num_classes=2)
    x = torch.randn(4, 3)
    W, b = clf.linear.weight.detach().numpy(), clf.linear.bias.detach().numpy()
    np.testing.assert_allclose(clf(x).detach().numpy(), x.numpy() @ W.T + b, rtol=1e-5, atol=1e-6)
    clf.bind(torch.cat([torch.from_numpy(W), torch.ones(1, 3)]), None)  # a row appended: bias 0
    assert clf.num_classes == 3 and clf.linear.bias[2].item() == 0 and torch.equal(clf.linear.bias[:2].detach(),
                                                                                     torch.from_numpy(b))
