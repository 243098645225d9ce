"""The low-shot protocol and every method, end to end on a tiny synthetic data set."""

import numpy as np
import pytest
import torch

from experiments_fixtures import BASE, CLASSES, FEAT, tiny_lowshot, top1_by_hand
from imprinting import protocol
from imprinting.build import create_head
from imprinting.methods import (
    AllClassJoint,
    Finetune,
    ImprintInit,
    Imprinting,
    LiftedEmbedding,
    NearestNeighbour,
    RandomInit,
    RandomNovel,
    RawFeatureNCM,
)
from imprinting.methods.finetune_e2e import EndToEndFinetune
from imprinting.methods.lifted import train_lifted_embedder
from imprinting.methods.nearest import max_cosine_per_class
from imprinting.train import TrainConfig



@pytest.fixture(scope="module")
def data(lowshot):
    return lowshot


@pytest.fixture(scope="module")
def base(lowshot_base):
    return lowshot_base


def test_accuracies_by_hand():
    data = tiny_lowshot(train_per_class=2, test_per_class=1)
    # test labels are 0..9 in order; predict right for 0, 1, 6, 7 only
    pred = torch.tensor([0, 1, 0, 0, 0, 0, 6, 7, 0, 0])
    scores = torch.nn.functional.one_hot(pred, CLASSES).float()
    acc = protocol.accuracies(scores, data)
    assert acc["all"] == pytest.approx(40.0) and acc["novel"] == pytest.approx(50.0)
    # among novel classes only, rows 8 and 9 (argmax over columns 6-9 of a zero row) pick class 6
    assert acc["novel_only"] == pytest.approx(50.0)


def test_episodes_are_nested_seeded_and_from_training_images(data):
    eps = protocol.episodes(data, shots=(1, 2, 5), draws=3, seed=4)
    by = {(e.draw, e.n): set(e.shots.tolist()) for e in eps}
    for d in range(3):
        assert by[(d, 1)] <= by[(d, 2)] <= by[(d, 5)]
        assert len(by[(d, 5)]) == 5 * len(data.novel)
        assert all(data.train.labels[i] in data.novel for i in by[(d, 5)])
    again = protocol.episodes(data, shots=(1, 2, 5), draws=3, seed=4)
    assert all(torch.equal(a.shots, b.shots) for a, b in zip(eps, again))
    other = protocol.episodes(data, shots=(1,), draws=1, seed=5)
    assert not torch.equal(other[0].shots, eps[0].shots)


def test_imprinting_summaries_equal_imprinting_by_hand_and_base_weights_untouched(data, base):
    """The summarized accuracies of Imprinting and Imprinting+Aug are those of imprinting done
    here with numpy (FC, normalize, novel weight = normalized mean of the shots' embeddings, or
    of all their cached views; base weights the base classifier's rows; argmax of the
    cosines), averaged over the draws; Rand-noFT's are those of its own scores."""
    eps = protocol.episodes(data, shots=(5,), draws=2)
    before = base.classifier.weight.detach().clone()
    results = protocol.run(data, [RandomNovel(base), Imprinting(base), Imprinting(base, True)], eps, progress=False,
                           keep_scores=True)
    acc = {r["method"]: r for r in protocol.summarize(results, exact=True)}
    assert torch.equal(base.classifier.weight.detach(), before)  # methods work on copies

    assert isinstance(base.embedder.fc, torch.nn.Linear) and base.embedder.power is None
    w_fc, b_fc = base.embedder.fc.weight.detach().double().numpy(), base.embedder.fc.bias.detach().double().numpy()

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    def emb(feats):
        return unit(np.asarray(feats, np.float64) @ w_fc.T + b_fc)

    base_rows = unit(base.classifier.weight.detach().double().numpy()[:BASE])
    test_emb = emb(data.test_feats)
    for name, augment in (("Imprinting", False), ("Imprinting+Aug", True)):
        per_draw = []
        for ep in eps:
            y = data.train_y[ep.shots].numpy()
            shots = data.train_aug[ep.shots] if augment else data.train_feats[ep.shots][:, None]  # (m, views, F)
            novel_rows = unit(np.stack([emb(shots[y == c].reshape(-1, FEAT)).mean(0) for c in range(BASE, CLASSES)]))
            cosines = test_emb @ np.concatenate([base_rows, novel_rows]).T
            (kept,) = [r.scores for r in results if r.method == name and r.draw == ep.draw]
            np.testing.assert_allclose(kept.numpy(), float(base.classifier.scale.detach()) * cosines, atol=1e-4)
            per_draw.append(top1_by_hand(cosines, data))
        for metric in ("novel", "all", "novel_only"):
            assert acc[name][f"{metric}_mean"] == pytest.approx(np.mean([d[metric] for d in per_draw]), abs=1e-4), (
                name, metric)
    rand = [top1_by_hand(r.scores, data) for r in results if r.method == "Rand-noFT"]
    for metric in ("novel", "all", "novel_only"):
        assert acc["Rand-noFT"][f"{metric}_mean"] == pytest.approx(np.mean([d[metric] for d in rand]), abs=1e-4)


def test_one_shot_nearest_neighbour_equals_imprinting(data, base):
    (ep,) = protocol.episodes(data, shots=(1,), draws=1)
    a = Imprinting(base).fit(data, ep).scorer(data.test_feats).argmax(1)
    b = NearestNeighbour(base).fit(data, ep).scorer(data.test_feats).argmax(1)
    assert torch.equal(a, b)


def test_max_cosine_per_class_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    ex = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    out = max_cosine_per_class(q, ex, torch.tensor([0, 0, 2]), 3)
    assert out[0, 0].item() == pytest.approx(2**-0.5) and out[0, 1].item() == float("-inf")
    assert out[0, 2].item() == pytest.approx(1.0)


def test_every_method_runs_end_to_end_and_fine_tuning_records_curves(data, base):
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=16)
    lifted = train_lifted_embedder(data, dim=8, epochs=3, per_class=4, batch_size=24)
    methods = [Finetune(base, ImprintInit(), cfg), Finetune(base, RandomInit(), cfg), AllClassJoint(8, cfg),
               LiftedEmbedding(lifted, "average"), LiftedEmbedding(lifted, "nearest"), RawFeatureNCM()]
    eps = protocol.episodes(data, shots=(2,), draws=1)
    results = protocol.run(data, methods, eps, progress=False, keep_scores=True)
    assert [r.method for r in results] == ["Imprinting+FT", "Rand+FT", "AllClassJoint", "Lifted-Avg", "Lifted-NN",
                                           "RawFeatureNCM"]
    for r in results:  # the accuracies are those of the scores, recomputed here with numpy
        expected = top1_by_hand(r.scores, data)
        assert (r.novel, r.all, r.novel_only) == pytest.approx((expected["novel"], expected["all"],
                                                                expected["novel_only"]))
    ft = results[0]
    assert [h["epoch"] for h in ft.history] == [1, 2, 3] and {"novel", "all"} <= set(ft.history[0])
    assert len(results[2].history) == 3  # AllClassJoint trains too, without evaluating
    assert all(r.history == [] for r in results[3:])  # training-free methods
    assert results[-1].novel > 80  # class means of well-separated clusters


def test_raw_feature_ncm_is_nearest_class_mean(data):
    (ep,) = protocol.episodes(data, shots=(3,), draws=1)
    scores = RawFeatureNCM().fit(data, ep).scorer(data.test_feats)
    idx = torch.cat([data.base_train_idx, ep.shots])
    x = torch.nn.functional.normalize(data.train_feats[idx], dim=1).numpy()
    y = data.train_y[idx].numpy()
    means = np.stack([x[y == c].mean(0) for c in range(CLASSES)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    expected = torch.nn.functional.normalize(data.test_feats, dim=1).numpy() @ means.T
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5)


def test_end_to_end_fine_tuning_trains_the_backbone(monkeypatch):
    """The fine-tuned copy's backbone moves (and scores the test images); the model passed in
    stays bit-identical; with ``backbone_lr_mult=0`` the copy's backbone stays bit-identical
    while its FC layer trains."""
    from imprinting.methods import finetune_e2e
    from imprinting.model import CosineClassifier, Embedder, ImprintModel

    trained = []
    real_train = finetune_e2e.train
    monkeypatch.setattr(finetune_e2e, "train", lambda m, *a, **k: (trained.append(m), real_train(m, *a, **k))[1])

    data = tiny_lowshot(train_per_class=6, test_per_class=3)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(FEAT, FEAT))
    model = ImprintModel(Embedder(backbone, FEAT, 8), CosineClassifier(8, BASE), [f"c{i}" for i in range(BASE)])
    images = data.train_feats.reshape(-1, 1, 4, 4)
    test_images = data.test_feats.reshape(-1, 1, 4, 4)
    (ep,) = protocol.episodes(data, shots=(2,), draws=1)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bb_before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    fc_before = {k: v.detach().clone() for k, v in model.embedder.fc.state_dict().items()}

    def moved(module, before):
        return max((v.detach() - before[k]).abs().max().item() for k, v in module.state_dict().items())

    method = EndToEndFinetune(model, images, test_images, ImprintInit(), TrainConfig(epochs=2, lr=1e-3, batch_size=8))
    fit = method.fit(data, ep)
    scores = fit.scorer(data.test_feats)
    assert scores.shape == (len(data.test), CLASSES) and [h["epoch"] for h in fit.history] == [1, 2]
    assert method.name == "Imprinting+FT (end to end)"
    (tuned,) = trained
    assert tuned is not model and moved(tuned.embedder.backbone, bb_before) > 1e-4  # the backbone trained
    for k, v in model.state_dict().items():  # the method fine-tunes a copy
        assert torch.equal(v, original[k]), k
    with torch.no_grad():  # the scores are those of the fine-tuned backbone, computed here
        emb = torch.nn.functional.normalize(tuned.embedder.fc(tuned.embedder.backbone(test_images)), dim=1)
        expected = tuned.classifier.scale * emb @ torch.nn.functional.normalize(tuned.classifier.weight, dim=1).T
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)

    frozen = EndToEndFinetune(model, images, test_images, ImprintInit(),
                              TrainConfig(epochs=2, lr=1e-3, batch_size=8, backbone_lr_mult=0))
    frozen.fit(data, ep)
    (_, tuned_frozen) = trained
    for k, v in tuned_frozen.embedder.backbone.state_dict().items():
        assert torch.equal(v, bb_before[k]), k
    assert moved(tuned_frozen.embedder.fc, fc_before) > 1e-4  # while the FC layer trained


def test_end_to_end_with_crop_imprints_centre_crops_and_scores_centre_crops():
    """0 epochs: the scores are those of imprinting, computed here by hand on the centre
    6 x 6 windows of 8 x 8 images (the training crops are random windows, never used)."""
    from imprinting.model import CosineClassifier, Embedder, ImprintModel

    data = tiny_lowshot(train_per_class=4, test_per_class=2)
    g = torch.Generator().manual_seed(1)
    train_px = torch.randn(len(data.train), 1, 8, 8, generator=g)
    test_px = torch.randn(len(data.test), 1, 8, 8, generator=g)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, FEAT))
    model = ImprintModel(Embedder(backbone, FEAT, 8), CosineClassifier(8, BASE), [f"c{i}" for i in range(BASE)])
    method = EndToEndFinetune(model, train_px, test_px, ImprintInit(), TrainConfig(epochs=0), crop=6)
    (ep,) = protocol.episodes(data, shots=(2,), draws=1)
    scores = method.fit(data, ep).scorer(data.test_feats)

    with torch.no_grad():
        embed = lambda x: torch.nn.functional.normalize(model.embedder.fc(backbone(x[..., 1:7, 1:7])), dim=1)  # noqa: E731
        shots_emb, labels = embed(train_px[ep.shots]), data.train_y[ep.shots]
        novel = torch.stack([torch.nn.functional.normalize(shots_emb[labels == c].mean(0), dim=0)
                             for c in range(BASE, CLASSES)])
        weights = torch.cat([torch.nn.functional.normalize(model.classifier.weight[:BASE], dim=1), novel])
        expected = model.classifier.scale * embed(test_px) @ weights.T
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_transfer_fine_tuning_keeps_only_novel_classes(data, base):
    (ep,) = protocol.episodes(data, shots=(3,), draws=1)
    imprinted = Imprinting(base).fit(data, ep).scorer(data.test_feats)
    untrained = Finetune(base, ImprintInit(), TrainConfig(epochs=0), transfer=True).fit(data, ep).scorer(data.test_feats)
    assert torch.isneginf(untrained[:, :BASE]).all()
    # the novel rows alone, before training: the imprinted scores of the novel columns
    torch.testing.assert_close(untrained[:, BASE:], imprinted[:, BASE:])
    before = base.classifier.weight.detach().clone()
    method = Finetune(base, RandomInit(), TrainConfig(epochs=30, lr=1e-3, batch_size=8), transfer=True)
    fit = method.fit(data, ep)
    trained = fit.scorer(data.test_feats)
    assert torch.equal(base.classifier.weight, before)
    acc = protocol.accuracies(trained, data)
    assert acc["novel_only"] > 60 and acc["novel"] == acc["novel_only"]  # base classes never predicted
    assert len(fit.history) == 30


def test_novel_only_model_keeps_the_novel_rows_and_their_scales(data):
    model = create_head(FEAT, 8, data.names(data.order), per_class_scale=True)
    with torch.no_grad():
        model.classifier.scale.copy_(torch.arange(1.0, CLASSES + 1))
    novel = protocol.novel_only_model(model, data)
    assert novel.class_names == data.names(data.novel)
    torch.testing.assert_close(novel.classifier.weight, model.classifier.weight[BASE:])
    torch.testing.assert_close(novel.classifier.scale, torch.arange(BASE + 1.0, CLASSES + 1))


def test_summary_is_mean_and_std_over_draws():
    rs = [protocol.Result("M", 1, d, novel=v, all=2 * v, novel_only=v, seconds=1.0) for d, v in enumerate([10, 20, 30])]
    (row,) = protocol.summarize(rs)
    assert row["novel_mean"] == 20 and row["novel_std"] == pytest.approx(np.std([10, 20, 30]), abs=0.01)
    assert row["all"] == "40.00 ± 16.33" and row["draws"] == 3


def test_feature_transform_powers_then_centers_on_base_features(data):
    from imprinting.methods.raw import FeatureTransform

    tf = FeatureTransform.fit(data, power=0.5)
    base = data.train_feats[data.base_train_idx].clamp_min(0).numpy() ** 0.5
    np.testing.assert_allclose(tf.mean.numpy(), base.mean(0), atol=1e-5)
    x = torch.tensor([[4.0] * FEAT, [-1.0] * FEAT])
    np.testing.assert_allclose(tf(x).numpy(), np.array([[2.0] * FEAT, [0.0] * FEAT]) - base.mean(0), atol=1e-5)
    model, _ = protocol.train_base(data, dim=None, cfg=TrainConfig(epochs=1), transform=tf)
    emb = model.embedder.forward_head(x)
    np.testing.assert_allclose(emb.detach().norm(dim=1).numpy(), [1.0, 1.0], atol=1e-5)


def test_cosine_ensemble_is_the_weighted_sum_of_member_cosines(data, base):
    from imprinting.methods import CosineEnsemble

    (ep,) = protocol.episodes(data, shots=(2,), draws=1)
    imp, ncm = Imprinting(base, cosine=True), RawFeatureNCM(center=True, power=0.5)
    both = CosineEnsemble([(imp, 0.4), (ncm, 0.6)]).fit(data, ep).scorer(data.test_feats)
    expected = 0.4 * imp.fit(data, ep).scorer(data.test_feats) + 0.6 * ncm.fit(data, ep).scorer(data.test_feats)
    torch.testing.assert_close(both, expected)
    cos = Imprinting(base, cosine=True).fit(data, ep).scorer(data.test_feats)
    assert cos.abs().max() <= 1 + 1e-5  # cosines, not logits
    torch.testing.assert_close(Imprinting(base).fit(data, ep).scorer(data.test_feats), base.classifier.scale * cos)


def test_base_training_is_determined_by_the_seed(data):
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=16, seed=7)
    a, _ = protocol.train_base(data, dim=8, cfg=cfg)
    torch.rand(10)  # whatever ran before must not matter
    b, _ = protocol.train_base(data, dim=8, cfg=cfg)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    c, _ = protocol.train_base(data, dim=8, cfg=TrainConfig(epochs=2, lr=1e-3, batch_size=16, seed=8))
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_episode_seeds_are_the_formulas_the_committed_results_used():
    ep = protocol.Episode(draw=3, n=5, shots=torch.tensor([0]), seed=7)
    assert ep.training_seed(11) == 11 + 1000 * 3 + 5
    assert ep.weights_seed(11) == 11 + 3
    assert ep.init_seed == 1000 * 7 + 3


def test_initializers_add_the_novel_classes_to_a_copy(data, base):
    (ep,) = protocol.episodes(data, shots=(2,), draws=1, seed=3)
    imprinted = ImprintInit().add_novel(base, data, ep)
    assert imprinted.class_names == data.names(data.order) and base.num_classes == BASE
    with torch.no_grad():
        emb = torch.nn.functional.normalize(base.embedder.forward_head(data.train_feats[ep.shots]), dim=1)
    labels = data.train_y[ep.shots]
    for c in range(BASE, CLASSES):  # the normalized mean of the shots' embeddings
        w = torch.nn.functional.normalize(emb[labels == c].mean(0), dim=0)
        torch.testing.assert_close(imprinted.classifier.templates()[c], w, atol=1e-6, rtol=1e-5)
    a, b = RandomInit().add_novel(base, data, ep), RandomInit().add_novel(base, data, ep)
    assert torch.equal(a.classifier.weight, b.classifier.weight)  # seeded by the episode
    g = torch.Generator().manual_seed(ep.init_seed)
    first = torch.nn.init.xavier_uniform_(torch.empty(1, base.config["dim"]), generator=g)
    torch.testing.assert_close(a.classifier.weight[BASE], first[0])
    assert Finetune(base, RandomInit()).name == "Rand+FT" and Finetune(base, ImprintInit()).name == "Imprinting+FT"


def test_lifted_embedder_is_determined_by_the_seed(data):
    """Its batch sampler draws from numpy: seeded too, whatever ran before."""
    import numpy

    a = train_lifted_embedder(data, dim=8, epochs=2, per_class=4, batch_size=24, seed=3)
    numpy.random.rand(5)  # the global numpy state must not matter
    b = train_lifted_embedder(data, dim=8, epochs=2, per_class=4, batch_size=24, seed=3)
    assert torch.equal(a.fc.weight, b.fc.weight)
