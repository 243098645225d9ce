"""benchmarks/compare.py's core on a tiny synthetic data set: every expectation is computed
here independently (the library's own methods, formulas for the bytes)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments_fixtures import CLASSES, FEAT, png_size, tiny_lowshot, top1_by_hand
from imprinting import protocol
from imprinting.build import create_head
from imprinting.methods import Imprinting, NearestNeighbour, RawFeatureNCM
from imprinting.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DIM = 8


def _load_compare():
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare = _load_compare()


def _has(module: str) -> bool:
    return compare.available(module) is not None


CFG = TrainConfig(epochs=8, lr=1e-3, batch_size=16)


@pytest.fixture(scope="module")
def data():
    return tiny_lowshot(train_per_class=12, test_per_class=6, views=2)


@pytest.fixture(scope="module")
def base(data):
    return protocol.train_base(data, DIM, CFG)[0]


@pytest.fixture(scope="module")
def eps(data):
    return protocol.episodes(data, shots=(1, 3), draws=2, seed=1)


def _pred(fitted, feats):
    scorer = fitted.scorer
    with torch.no_grad():
        return torch.as_tensor(scorer(feats)).argmax(1)


def _stored(data, ep):
    return len(data.base_train_idx) + len(ep.shots)


def test_knn_k1_at_n1_equals_our_nearest_neighbour(data, eps):
    ep = next(e for e in eps if e.n == 1)
    # Our NearestNeighbour over every stored example, on L2-normalized raw features (no FC layer).
    identity = create_head(FEAT, None, data.names(data.base))
    ours = NearestNeighbour(identity, base_from_examples=True).fit(data, ep)
    knn = compare.SklearnKNN(1).fit(data, ep)
    assert torch.equal(_pred(knn, data.test_feats), _pred(ours, data.test_feats))
    assert knn.info["nbytes"] == _stored(data, ep) * FEAT * 4 + _stored(data, ep) * 8  # float32 examples + int64 labels


@pytest.mark.skipif(not _has("faiss"), reason="faiss-cpu is not installed")
@pytest.mark.parametrize("k", [1, 3])
def test_faiss_flat_predicts_as_sklearn_knn(data, eps, k):
    for ep in eps:
        f = compare.FaissFlat(k).fit(data, ep)
        s = compare.SklearnKNN(k).fit(data, ep)
        assert torch.equal(_pred(f, data.test_feats), _pred(s, data.test_feats))
        assert f.info["nbytes"] == _stored(data, ep) * FEAT * 4 + _stored(data, ep) * 8


def test_logistic_regression_memory_and_accuracy(data, eps):
    ep = eps[-1]
    fitted = compare.SklearnLogReg("balanced").fit(data, ep)
    c, d = CLASSES, FEAT
    # coef_ + intercept_ (float32, as the features) + the scaler's mean_ and scale_ (float64).
    assert fitted.info["nbytes"] == (c * d + c) * 4 + 2 * d * 8
    acc = protocol.accuracies(torch.as_tensor(fitted.scorer(data.test_feats)).float(), data)
    assert acc["all"] > 3 * 100 / CLASSES  # far above chance on separable clusters


def test_our_entries_memory_is_the_arrays_they_predict_with(data, base, eps):
    ep = eps[0]
    fitted = compare.Measured(Imprinting(base)).fit(data, ep)
    # FC weight + bias, one DIM-d vector per class, one scale.
    assert fitted.info["nbytes"] == (FEAT * DIM + DIM + CLASSES * DIM + 1) * 4
    assert torch.equal(_pred(fitted, data.test_feats), _pred(Imprinting(base).fit(data, ep), data.test_feats))
    ncm = compare.Measured(RawFeatureNCM(center=True, power=0.5))
    # One FEAT-d template per class + the centring mean.
    assert ncm.fit(data, ep).info["nbytes"] == (CLASSES * FEAT + FEAT) * 4


def test_our_best_entry_is_the_librarys_best_method(data, eps):
    from imprinting.experiments.beyond import best_method

    best = next(e for e in compare.ours(CFG) if e.name == compare.OURS_BEST_NAME)
    ep = eps[-1]
    fitted = compare.Measured(best.make(data, None)).fit(data, ep)
    # Imprinting on a 512-d FC embedding (weights, bias, class vectors, scale) + raw class means and mean.
    assert fitted.info["nbytes"] == (FEAT * 512 + 512 + CLASSES * 512 + 1) * 4 + (CLASSES * FEAT + FEAT) * 4
    expect = best_method(data, CFG.seed).fit(data, ep).scorer(data.test_feats)
    assert torch.allclose(torch.as_tensor(fitted.scorer(data.test_feats)), expect, atol=1e-5)


@pytest.mark.skipif(not _has("easyfsl"), reason="easyfsl is not installed")
def test_easyfsl_simpleshot_cl2n_equals_centered_ncm(data, eps):
    simpleshot = compare.EasyFSL("SimpleShot", data)
    for ep in eps:
        fitted = simpleshot.fit(data, ep)
        ncm = RawFeatureNCM(center=True).fit(data, ep)
        assert torch.equal(_pred(fitted, data.test_feats), _pred(ncm, data.test_feats))
        assert fitted.info["nbytes"] == (CLASSES * FEAT + FEAT) * 4
    finetune = compare.EasyFSL("Finetune", data, fine_tuning_steps=0)  # no fine-tuning steps: SimpleShot's prototypes
    ep = eps[0]
    assert torch.equal(_pred(finetune.fit(data, ep), data.test_feats), _pred(simpleshot.fit(data, ep), data.test_feats))


def test_compare_runs_every_method_and_reports(data, eps, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=16)
    entries = compare.ours(cfg) + [compare.peer(compare.SklearnLogReg(None)), compare.peer(compare.SklearnKNN(3))]
    entries += compare.last_layer_finetuning(cfg)[:1]
    if _has("easyfsl"):
        entries.append(compare.Entry(lambda d, b: compare.EasyFSL("Finetune", d, fine_tuning_steps=3), "easyfsl"))
    calls = []
    monkeypatch.setattr(compare, "timed", lambda fn, min_seconds: (calls.append(1) or fn(), 0.25 * len(calls)))
    rows = compare.compare(data, entries, eps, dim=DIM, cfg=cfg, progress=False, min_seconds=0.0)
    names = [e.name or "easyfsl Finetune (CL2N)" for e in entries]
    assert len(rows) == len(entries) * len(eps)
    assert {(r["method"], r["n"], r["draw"]) for r in rows} == {(m, e.n, e.draw) for m in names for e in eps}
    # each fit and each prediction goes through the timer, in that order: its seconds are in the row
    assert [(r["add_s"], r["predict_s"]) for r in rows] == [(0.5 * k + 0.25, 0.5 * k + 0.5) for k in range(len(rows))]
    # Accuracies are those of each method's scores, refitted and recomputed here with numpy.
    base = protocol.train_base(data, DIM, cfg)[0]
    by_name = {name: e for name, e in zip(names, entries)}
    for r in rows:
        method = by_name[r["method"]].make(data, base)
        ep = next(e for e in eps if (e.n, e.draw) == (r["n"], r["draw"]))
        scorer = method.fit(data, ep).scorer
        with torch.no_grad():
            expect = top1_by_hand(scorer(data.test_feats), data)
        assert (r["novel"], r["all"]) == pytest.approx((expect["novel"], expect["all"])), r["method"]
    ref = next(r for r in rows if r["method"] == compare.REFERENCE)
    assert ref["bytes"] == (FEAT * DIM + DIM + CLASSES * DIM + 1) * 4

    summary = compare.summarize(rows)
    assert len(summary) == len(entries) * 2
    for s in summary:
        if s["method"] == compare.REFERENCE:
            assert s["add_s_ratio"] == pytest.approx(1.0) and s["bytes_ratio"] == pytest.approx(1.0)
            assert s["novel_delta"] == 0
        mine = [r for r in rows if (r["method"], r["n"]) == (s["method"], s["n"])]
        assert s["novel_mean"] == pytest.approx(np.mean([r["novel"] for r in mine]))
        assert s["all_std"] == pytest.approx(np.std([r["all"] for r in mine]))
        assert s["add_s"] == pytest.approx(np.median([r["add_s"] for r in mine]))

    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nintro kept\n\n## Discussion\n\nkept too\n")
    prov = {"command": "python benchmarks/compare.py", "date": "today"}
    compare.update_section(md, "compare", compare.section(summary, prov, [1, 3], "plot.png"))
    compare.update_section(md, "compare", compare.section(summary, prov, [1, 3], "plot.png"))  # replaced, not appended
    text = md.read_text()
    assert text.count("compare:begin") == 1 and "intro kept" in text and "kept too" in text
    assert "### tiny: top-1 (%)" in text and "### tiny: cost" in text and "Where a peer beats us" in text
    assert f"({compare.REFERENCE}; {compare.OURS_BEST_NAME}; {compare.OURS_NCM_NAME}; {compare.OURS_WHITENED_NAME}; {compare.OURS_PRODUCT_NAME})" in text
    compare.plot_accuracy_vs_time(summary, tmp_path / "plot.png")
    assert png_size(tmp_path / "plot.png") == (825, 1100)  # 7.5 x 10 inches at 110 dpi, one data set


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


def test_timed_repeats_fast_calls_up_to_a_limit(monkeypatch):
    calls = []
    clock = iter([1.0, 1.5])
    monkeypatch.setattr(compare.time, "perf_counter", lambda: next(clock))
    result, seconds = compare.timed(lambda: calls.append(1) or len(calls), min_seconds=0.0, max_repeats=5)
    assert result == 1 and len(calls) == 1 and seconds == 0.5
    monkeypatch.undo()
    calls.clear()
    result, _ = compare.timed(lambda: calls.append(1) or len(calls), min_seconds=10.0, max_repeats=5)
    assert result == 5 and len(calls) == 5
