"""benchmarks/compare.py's core on a tiny synthetic data set: every expectation is computed
here independently (the library's own methods, formulas for the bytes)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imprinting import protocol
from imprinting.data import ImageSet
from imprinting.methods import Imprinting, NearestNeighbour, RawFeatureNCM
from imprinting.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CLASSES, BASE, FEAT, DIM = 10, 6, 16, 8


def _load_compare():
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare = _load_compare()


def _has(module: str) -> bool:
    return compare.available(module) is not None


def _tiny(seed=0, train_per_class=12, test_per_class=6):
    """Gaussian clusters in a 16-d non-negative 'feature' space (like ReLU6 features):
    classes 0-5 base, 6-9 novel."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(CLASSES, FEAT, generator=g) * 3

    def draw(per):
        y = torch.arange(CLASSES).repeat_interleave(per)
        return (centers[y] + 0.6 * torch.randn(len(y), FEAT, generator=g)).clamp_min(0), y.tolist()

    xtr, ytr = draw(train_per_class)
    xte, yte = draw(test_per_class)
    names = [f"c{i}" for i in range(CLASSES)]
    train = ImageSet("tiny/train", [Path(f"tr{i}.png") for i in range(len(ytr))], ytr, names, {"split": "train"})
    test = ImageSet("tiny/test", [Path(f"te{i}.png") for i in range(len(yte))], yte, names, {"split": "test"})
    aug = xtr[:, None, :] + 0.1 * torch.rand(len(ytr), 2, FEAT, generator=g)
    return protocol.LowShotData("tiny", train, test, xtr, xte, list(range(BASE)), list(range(BASE, CLASSES)), aug)


CFG = TrainConfig(epochs=8, lr=1e-3, batch_size=16)


@pytest.fixture(scope="module")
def data():
    return _tiny()


@pytest.fixture(scope="module")
def base(data):
    return protocol.train_base(data, DIM, CFG)[0]


@pytest.fixture(scope="module")
def eps(data):
    return protocol.episodes(data, shots=(1, 3), draws=2, seed=1)


def _pred(fitted_or_scorer, feats):
    scorer = getattr(fitted_or_scorer, "scorer", fitted_or_scorer)
    with torch.no_grad():
        return torch.as_tensor(scorer(feats)).argmax(1)


def _stored(data, ep):
    return len(data.base_train_idx) + len(ep.shots)


def test_knn_k1_at_n1_equals_our_nearest_neighbour(data, eps):
    ep = next(e for e in eps if e.n == 1)
    # Our NearestNeighbour over every stored example, on L2-normalized raw features (no FC layer).
    identity = protocol.head_model(FEAT, None, data.names(data.base))
    ours = NearestNeighbour(identity, base_from_examples=True).fit(data, ep)
    knn = compare.SklearnKNN(1).add(data, ep)
    assert torch.equal(_pred(knn, data.test_feats), _pred(ours, data.test_feats))
    assert knn.nbytes == _stored(data, ep) * FEAT * 4 + _stored(data, ep) * 8  # float32 examples + int64 labels


@pytest.mark.skipif(not _has("faiss"), reason="faiss-cpu is not installed")
@pytest.mark.parametrize("k", [1, 3])
def test_faiss_flat_predicts_as_sklearn_knn(data, eps, k):
    for ep in eps:
        f = compare.FaissFlat(k).add(data, ep)
        s = compare.SklearnKNN(k).add(data, ep)
        assert torch.equal(_pred(f, data.test_feats), _pred(s, data.test_feats))
        assert f.nbytes == _stored(data, ep) * FEAT * 4 + _stored(data, ep) * 8


def test_logistic_regression_memory_and_accuracy(data, eps):
    ep = eps[-1]
    fitted = compare.SklearnLogReg("balanced").add(data, ep)
    c, d = CLASSES, FEAT
    # coef_ + intercept_ (float32, as the features) + the scaler's mean_ and scale_ (float64).
    assert fitted.nbytes == (c * d + c) * 4 + 2 * d * 8
    acc = protocol.accuracies(torch.as_tensor(fitted.scorer(data.test_feats)).float(), data)
    assert acc["all"] > 3 * 100 / CLASSES  # far above chance on separable clusters


def test_our_entries_memory_is_the_arrays_they_predict_with(data, base, eps):
    ep = eps[0]
    imp = compare.LibraryMethod("imp", lambda d, b: Imprinting(b))
    imp.setup(data, base)
    fitted = imp.add(data, ep)
    # FC weight + bias, one DIM-d vector per class, one scale.
    assert fitted.nbytes == (FEAT * DIM + DIM + CLASSES * DIM + 1) * 4
    assert torch.equal(_pred(fitted, data.test_feats), _pred(Imprinting(base).fit(data, ep), data.test_feats))
    ncm = compare.LibraryMethod("ncm", lambda d, b: RawFeatureNCM(center=True, power=0.5), uses_base_model=False)
    ncm.setup(data, None)
    # One FEAT-d template per class + the centring mean.
    assert ncm.add(data, ep).nbytes == (CLASSES * FEAT + FEAT) * 4


def test_our_best_entry_is_the_librarys_best_method(data, eps):
    from imprinting.reproduce import best_method

    best = next(c for c in compare.ours(CFG) if c.name == compare.OURS_BEST_NAME)
    best.setup(data, None)
    ep = eps[-1]
    fitted = best.add(data, ep)
    # Imprinting on a 512-d FC embedding (weights, bias, class vectors, scale) + raw class means and mean.
    assert fitted.nbytes == (FEAT * 512 + 512 + CLASSES * 512 + 1) * 4 + (CLASSES * FEAT + FEAT) * 4
    expect = best_method(data, CFG.seed).fit(data, ep)(data.test_feats)
    assert torch.allclose(torch.as_tensor(fitted.scorer(data.test_feats)), expect, atol=1e-5)


@pytest.mark.skipif(not _has("easyfsl"), reason="easyfsl is not installed")
def test_easyfsl_simpleshot_cl2n_equals_centered_ncm(data, eps):
    simpleshot = compare.EasyFSL("SimpleShot")
    simpleshot.setup(data, None)
    for ep in eps:
        fitted = simpleshot.add(data, ep)
        ncm = RawFeatureNCM(center=True).fit(data, ep)
        assert torch.equal(_pred(fitted, data.test_feats), _pred(ncm, data.test_feats))
        assert fitted.nbytes == (CLASSES * FEAT + FEAT) * 4
    finetune = compare.EasyFSL("Finetune", fine_tuning_steps=0)
    finetune.setup(data, None)  # no fine-tuning steps: SimpleShot's prototypes
    ep = eps[0]
    assert torch.equal(_pred(finetune.add(data, ep), data.test_feats), _pred(simpleshot.add(data, ep), data.test_feats))


def test_compare_runs_every_method_and_reports(data, eps, tmp_path):
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=16)
    methods = compare.ours(cfg) + [compare.SklearnLogReg(None), compare.SklearnKNN(3)]
    methods += compare.last_layer_finetuning(cfg)[:1]
    if _has("easyfsl"):
        methods.append(compare.EasyFSL("Finetune", fine_tuning_steps=3))
    rows = compare.compare(data, methods, eps, dim=DIM, cfg=cfg, progress=False, min_seconds=0.0)
    assert len(rows) == len(methods) * len(eps)
    assert {(r["method"], r["n"], r["draw"]) for r in rows} == {(m.name, e.n, e.draw) for m in methods for e in eps}
    for r in rows:
        assert 0 <= r["novel"] <= 100 and 0 <= r["all"] <= 100
        assert r["add_s"] > 0 and r["predict_s"] > 0 and r["bytes"] > 0
    # Accuracies are those of the library's own protocol for the same method and episode.
    torch.manual_seed(cfg.seed)
    base = protocol.train_base(data, DIM, cfg)[0]
    ep = eps[0]
    expect = protocol.accuracies(Imprinting(base).fit(data, ep)(data.test_feats), data)
    row = next(r for r in rows if r["method"] == compare.REFERENCE and (r["n"], r["draw"]) == (ep.n, ep.draw))
    assert row["novel"] == pytest.approx(expect["novel"]) and row["all"] == pytest.approx(expect["all"])

    summary = compare.summarize(rows)
    assert len(summary) == len(methods) * 2
    for s in summary:
        if s["method"] == compare.REFERENCE:
            assert s["add_s_ratio"] == pytest.approx(1.0) and s["bytes_ratio"] == pytest.approx(1.0)
            assert s["novel_delta"] == 0
        mine = [r for r in rows if (r["method"], r["n"]) == (s["method"], s["n"])]
        assert s["novel_mean"] == pytest.approx(np.mean([r["novel"] for r in mine]))

    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nintro kept\n\n## Discussion\n\nkept too\n")
    prov = {"command": "python benchmarks/compare.py", "date": "today"}
    compare.update_section(md, "compare", compare.section(summary, prov, [1, 3], "plot.png"))
    compare.update_section(md, "compare", compare.section(summary, prov, [1, 3], "plot.png"))  # replaced, not appended
    text = md.read_text()
    assert text.count("compare:begin") == 1 and "intro kept" in text and "kept too" in text
    assert "### tiny: top-1 (%)" in text and "### tiny: cost" in text and "Where a peer beats us" in text
    compare.plot(summary, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_peer_wins_are_stated_from_the_numbers():
    def s(method, family, novel, all_):
        return {"dataset": "d", "method": method, "family": family, "n": 5, "novel_mean": novel, "all_mean": all_,
                "add_s": 0.01}

    summary = [s(compare.REFERENCE, "ours", 50.0, 70.0), s("best", "ours", 55.0, 69.0),
               s("LogisticRegression", "scikit-learn", 60.0, 68.0), s("k-NN cosine, k=1", "scikit-learn", 40.0, 69.5)]
    wins = compare.peer_wins(summary)
    assert [(w["peer"], w["metric"], w["ours"]) for w in wins] == [("LogisticRegression", "novel", "best")]
    assert wins[0]["gap"] == pytest.approx(5.0) and wins[0]["clear"]
    text = compare.wins_markdown(wins)
    assert "| LogisticRegression |" in text and "+5.0" in text and "discriminative" in text


def test_timed_keeps_the_fastest_call(monkeypatch):
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # three calls of 3, 1 and 2 seconds
    monkeypatch.setattr(compare.time, "perf_counter", lambda: next(clock))
    result, seconds = compare.timed(lambda: "done", min_seconds=100.0, max_repeats=3)
    assert result == "done" and seconds == 1.0


def test_timed_repeats_fast_calls_up_to_a_limit():
    calls = []
    result, seconds = compare.timed(lambda: calls.append(1) or len(calls), min_seconds=0.0, max_repeats=5)
    assert result == 1 and len(calls) == 1 and seconds >= 0
    calls.clear()
    result, _ = compare.timed(lambda: calls.append(1) or len(calls), min_seconds=10.0, max_repeats=5)
    assert result == 5 and len(calls) == 5
