"""The closed-form head in the product (``imprinting.heads.WhitenedHead`` kept by the class
table): its rows against a hand computation, incremental changes against one batch
computation, the files, the choice rule, and the lite runtime's parity with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import imprinting
from imprinting import checkpoint, heads
from imprinting.build import build_model
from imprinting.classes import ClassTable
from imprinting.classes_file import ClassesData, load_classes, save_classes
from imprinting.errors import ClassError
from imprinting.imprint import fit_model_head
from imprinting.spec import ModelSpec


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _data(seed=0, classes=10, per_class=8, dim=24):
    """Power-transformed unit embeddings of Gaussian classes sharing one elongated covariance."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) * np.linspace(0.05, 1.5, dim)[:, None]
    means = rng.normal(size=(classes, dim)) * 0.6
    x = np.concatenate([means[c] + rng.normal(size=(per_class, dim)) @ mix for c in range(classes)])
    y = np.repeat(np.arange(classes), per_class)
    z = _unit(np.sign(x) * np.sqrt(np.abs(_unit(x))))
    return z, y


def _head(dim, seed=1, shrinkage=0.6, correction=None):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim
    return heads.WhitenedHead(rng.normal(size=dim) * 0.1, cov, shrinkage, correction or {1: 0.5, 5: 1.0})


def test_rows_are_the_shot_corrected_linear_discriminant():
    d = 12
    head = _head(d)
    rng = np.random.default_rng(3)
    sums, counts = rng.normal(size=(4, d)), np.array([1, 3, 5, 0])
    templates = _unit(rng.normal(size=(4, d))).astype(np.float32)
    w, b = head.rows(sums, counts, templates)
    cov, mu = head.covariance, head.centre
    shrunk = 0.4 * cov + 0.6 * np.trace(cov) / d * np.eye(d)
    excess = np.trace(np.linalg.solve(shrunk, cov))
    strength = {1: 0.5, 3: 0.5, 5: 1.0}  # the largest simulated count not above n
    for c in range(4):
        m = (sums[c] / counts[c] if counts[c] else templates[c].astype(np.float64)) - mu
        want_w = np.linalg.solve(shrunk, m)
        want_b = -0.5 * (m @ want_w - (strength[counts[c]] * excess / counts[c] if counts[c] else 0.0))
        np.testing.assert_allclose(w[c], want_w, rtol=1e-5, atol=1e-5)
        assert b[c] == pytest.approx(want_b, rel=1e-5, abs=1e-5)
    q = _unit(rng.normal(size=(3, d))).astype(np.float32)
    np.testing.assert_allclose(head.logits(q, w, b), (q - mu) @ w.T + b, rtol=1e-5, atol=1e-5)


def test_incremental_changes_equal_one_batch_computation():
    z, y = _data()
    head = _head(z.shape[1])
    t = ClassTable(z.shape[1], head=head)
    t.add_vector("base", _unit(np.ones((1, z.shape[1])))[0])
    for c in range(6):
        t.add(f"c{c}", z[y == c][:3])
    t.extend("c2", z[y == 2][3:])
    t.imprint("c4", z[y == 4][3:5])
    snap = t.snapshot("c3")
    t.remove("c3")
    t.remove("c1")
    t.restore(snap)
    batch = ClassTable.from_arrays(t.names, t.weights, t.sums, t.counts, t.scale)
    batch.set_head(head)
    q = z[::5].astype(np.float32)
    np.testing.assert_array_equal(t.logits(t.cosines(q), q), batch.logits(batch.cosines(q), q))
    # by hand: class means of the examples each class holds now
    held = {"c0": z[y == 0][:3], "c2": z[y == 2], "c3": z[y == 3][:3], "c4": z[y == 4][:5], "c5": z[y == 5][:3]}
    for name, ex in held.items():
        i = t.index_of(name)
        np.testing.assert_allclose(t.sums[i], _unit(ex.astype(np.float32).astype(np.float64)).sum(axis=0), atol=1e-12)  # noqa: E501
        assert t.counts[i] == len(ex)
    assert t.names == ("base", "c0", "c2", "c4", "c3", "c5")  # c3 back at its old index, 4


def test_paper_head_is_unchanged_without_a_head():
    z, y = _data()
    t = ClassTable(z.shape[1])
    t.add("a", z[y == 0])
    q = z[:4].astype(np.float32)
    np.testing.assert_allclose(t.logits(t.cosines(q), q), 10.0 * q @ _unit(z[y == 0].sum(0, keepdims=True)).T.astype(np.float32),
                               rtol=1e-6)


def test_choice_rule_picks_whitening_where_the_shape_matters_and_refuses_thin_data():
    z, y = _data(classes=12, per_class=10)
    head, report = heads.fit_head(z, y, "auto")
    assert report["head"] == "whitened" and head is not None
    assert report["whitened"] > report["normalized-mean"]
    assert report["shots"] == [1, 2, 5]  # shot counts below the median count (10)
    none, why = heads.fit_head(z[y < 2], y[y < 2], "auto")
    assert none is None and "too few" in why["reason"]
    with pytest.raises(ValueError, match="at least 3 classes"):
        heads.fit_head(z[y < 2], y[y < 2], "whitened")
    assert heads.fit_head(z, y, "normalized-mean")[0] is None


def _headless(dim=24, power=0.5):
    return build_model(ModelSpec(backbone=None, pretrained=False, dim=None, feature_dim=dim, power=power))


def test_files_keep_the_head_exactly(tmp_path):
    z, y = _data()
    model = _headless(z.shape[1])
    feats = torch.from_numpy(np.abs(z).astype(np.float32))  # nonnegative "backbone features"
    e = model.embedder.forward_head(feats)
    for c in range(10):
        model.imprint_embeddings(f"c{c}", e[torch.from_numpy(y == c)])
    report = fit_model_head(model, e.numpy(), y, "whitened")
    assert report["head"] == "whitened" and model.classes.head is not None
    checkpoint.save(model, tmp_path / "m.safetensors")
    back = checkpoint.load(tmp_path / "m.safetensors")
    assert back.spec.power == 0.5 and back.describe()["head"]["kind"] == "whitened-means"
    assert back.classes.head.rule is not None and back.classes.head.rule.labels == model.classes.head.rule.labels
    assert back.describe()["head"] == model.describe()["head"] and "rule" in back.describe()["head"]
    p1, p2 = model.predict_embeddings(e[:7]), back.predict_embeddings(back.embedder.forward_head(feats[:7]))
    assert [p.classes for p in p1] == [p.classes for p in p2]
    np.testing.assert_allclose([p.probabilities for p in p1], [p.probabilities for p in p2], atol=1e-6)
    save_classes(ClassesData.from_table(model.classes), tmp_path / "classes.npz")
    table = load_classes(tmp_path / "classes.npz").table()
    np.testing.assert_array_equal(table.head.rule.reference, model.classes.head.rule.reference)
    q = e[:7].numpy()
    np.testing.assert_array_equal(table.logits(table.cosines(q), q), model.classes.logits(model.classes.cosines(q), q))
    # and the model's predictions are the head's scores, not s * cos
    want = np.argmax(table.logits(table.cosines(q), q), axis=1)
    assert [p.classes[0] for p in p1] == [table.name_at(i) for i in want]


def test_old_files_have_no_head(tmp_path):
    model = _headless(8, power=None)
    model.imprint_embeddings("a", torch.ones(2, 8))
    checkpoint.save(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert "head" not in meta and "power" not in json.loads(meta["config"])
    assert checkpoint.load(tmp_path / "m.safetensors").classes.head is None


def test_fitting_needs_the_power_transformed_embedder():
    model = _headless(8, power=None)
    with pytest.raises(ClassError, match="power"):
        fit_model_head(model, np.ones((4, 8)), np.arange(4), "whitened")


def test_lite_runtime_scores_like_pytorch(tmp_path):
    from imprinting.export import export
    from imprinting.lite.runtime import LiteModel
    from helpers import class_folder

    torch.manual_seed(0)
    folder = class_folder(tmp_path / "train", classes=4, per_class=4)
    model = imprinting.create_model("conv4", dim=16, pretrained=False, power=0.5)
    from imprinting.imprint import imprint_folder

    report = imprint_folder(model, folder, head="whitened")["head"]
    assert report["head"] == "whitened"
    export(model, tmp_path / "export")
    lite = LiteModel(tmp_path / "export")
    assert lite.classes.head is not None
    images = sorted(folder.rglob("*.png"))
    e_torch = model.embed_images(images).numpy()
    e_lite = lite.embed(images)
    np.testing.assert_allclose(e_lite, e_torch, atol=1e-5)
    l_torch = model.classes.logits(model.classes.cosines(e_torch), e_torch)
    l_lite = lite.logits(e_lite)
    np.testing.assert_allclose(l_lite, l_torch, rtol=1e-4, atol=1e-4 * np.abs(l_torch).max())
    import onnxruntime as ort  # the exported model.onnx computes the head's scores too

    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    l_onnx = session.run(None, {session.get_inputs()[0].name: lite.preprocess(images)})[0]
    np.testing.assert_allclose(l_onnx, l_torch, rtol=1e-4, atol=1e-4 * np.abs(l_torch).max())
    p_torch, p_lite = model.predict_images(images, k=3), lite.predict(images, k=3)
    assert [p.classes for p in p_torch] == [p.classes for p in p_lite]
    np.testing.assert_allclose([p.probabilities for p in p_torch], [p.probabilities for p in p_lite], atol=1e-5)
    # teaching one more class in each gives the same scores again
    model.imprint("extra", images[:2])
    lite.imprint("extra", images[:2])
    q = lite.embed(images[:3])
    np.testing.assert_allclose(lite.logits(q), model.classes.logits(model.classes.cosines(q), q), rtol=1e-5, atol=1e-4)


def test_train_then_whitened_head_on_the_base_data(tmp_path):
    from imprinting.imprint import fit_trained_head
    from helpers import class_folder

    from imprinting.data.folder import read_folder

    torch.manual_seed(0)
    folder = class_folder(tmp_path / "train", classes=5, per_class=4)
    images = read_folder(folder)
    model = imprinting.create_model("conv4", dim=12, pretrained=False, class_names=images.class_names)
    from imprinting.data.features import View, cached_features

    feats = cached_features(model.backbone, images, model.preprocess, View(), tmp_path / "cache", progress=False)
    labels = np.array(images.labels)
    report = fit_trained_head(model, feats, labels, "whitened")
    assert report["head"] == "whitened" and model.spec.power == 0.5
    table = model.classes
    assert table.head is not None and list(table.counts) == [4] * 5  # every class: the mean of its 4 images
    # the class sums are the power-transformed embeddings of the images, by hand
    with torch.no_grad():
        e = torch.nn.functional.normalize(model.embedder.fc(feats), dim=1).numpy().astype(np.float64)
    z = _unit(np.sign(e) * np.sqrt(np.abs(e)))
    for c in range(5):
        np.testing.assert_allclose(table.sums[c], z[labels == c].sum(axis=0), atol=1e-5)
    checkpoint.save(model, tmp_path / "m.safetensors")
    back = checkpoint.load(tmp_path / "m.safetensors")
    q = back.embedder.forward_head(feats).detach()
    assert [p.classes for p in back.predict_embeddings(q)] == [p.classes for p in model.predict_embeddings(q)]


def test_auto_keeps_the_papers_head_when_no_episode_can_be_scored():
    """400 classes of 1-10 examples: no simulated episode has an example of every class, so
    nothing can be compared; ``auto`` keeps the normalized mean and says why (``whitened``,
    asked for explicitly, is a clear error), instead of failing ``imprint create``."""
    import numpy as np

    from imprinting import heads

    rng = np.random.default_rng(0)
    counts = rng.integers(1, 11, size=400)
    y = np.repeat(np.arange(400), counts)
    x = np.abs(rng.normal(size=(400, 32))[y] + rng.normal(size=(len(y), 32))) ** 0.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head, report = heads.fit_head(x, y, "auto", "examples", 0, names=[str(i) for i in range(400)])
    assert head is None and report["head"] == "normalized-mean" and "no simulated episode" in report["reason"]
    with pytest.raises(ValueError, match="no simulated episode"):
        heads.fit_head(x, y, "whitened", "examples", 0)
