"""The engine per batch size: the fastest exact engine at each measured size, the pipeline on
the one for its batch, records of the one-size format measured again, ``imprint info``."""

from __future__ import annotations

import json

import pytest
from helpers import make_image, run_cli

from imprinting import engines
from imprinting.backbones import create_backbone
from imprinting.engines import AutoEngine, TorchEngine, measure, pipeline, runtimes, select, select_engine
from imprinting.engines.choice import Choice
from imprinting.spec import fingerprint

SIZES = (1, 4, 16, 32)
# Images/s by engine and batch size, with the crossovers seen on real machines: onnxruntime
# ahead for single images and at 16, OpenVINO ahead at 4 and at 32 (a choice measured at 16
# alone would have run the pipeline's batches of 32 on the slower engine).
RATES = {
    "torch": {1: 120.0, 4: 110.0, 16: 90.0, 32: 37.3},
    "onnxruntime": {1: 290.0, 4: 260.0, 16: 121.8, 32: 114.1},
    "openvino": {1: 200.0, 4: 320.0, 16: 98.9, 32: 150.0},
}


def expected_engine(batch: int, rates=RATES) -> str:
    """The rule, written out: the choice measured at the largest size not above the batch
    (the smallest size below it), where the engine with the most images/s wins."""
    at = max([s for s in SIZES if s <= batch] or [min(SIZES)])
    return max(rates, key=lambda name: rates[name][at])


class Fake(TorchEngine):
    """PyTorch under another engine's name (so exact), noting the batch sizes it ran."""

    def __init__(self, name, module, precision="float32"):
        super().__init__(module, precision)
        self.name, self.sizes = name, []

    def run(self, batch):
        self.sizes.append(len(batch))
        return super().run(batch)


@pytest.fixture
def conv4():
    bb = create_backbone("conv4", pretrained=False)
    bb.module.eval()
    return bb


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """Every engine 'installed' as a Fake, timed by RATES; ``builds`` lists each engine built."""
    monkeypatch.setenv("IMPRINTING_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(name, module, shape, precision="float32", fp=None, cache=None):
        builds.append(name)
        return Fake(name, module, precision)

    monkeypatch.setattr(runtimes, "build_engine", build)
    monkeypatch.setattr(runtimes, "available_engines", lambda: {n: None for n in runtimes.ENGINES})
    monkeypatch.setattr(runtimes, "engine_precisions", lambda name: ["float32"])
    monkeypatch.setattr(measure, "_rate", lambda engine, x: RATES[engine.name][len(x)])
    return builds


def test_each_batch_size_runs_on_the_fastest_exact_engine_measured_at_it(conv4, fakes):
    auto = select_engine(conv4.module, conv4.preprocess)
    assert isinstance(auto, AutoEngine)
    for b in range(1, 70):
        assert auto.engine_for(b).name == expected_engine(b), b
        assert engines.engine_for(auto, b) is auto.engine_for(b)
    built = {auto.engine_for(s).name: auto.engine_for(s) for s in SIZES}
    for b in (1, 3, 4, 16, 20, 32, 40):  # run() dispatches by the batch's own size
        before = {n: len(e.sizes) for n, e in built.items()}
        auto.run(measure.check_batch(conv4.preprocess, b))
        assert {n: e.sizes[before[n]:] for n, e in built.items()} == {n: [b] if n == expected_engine(b) else []
                                                                      for n in built}
    assert select_engine(conv4.module, conv4.preprocess, batch=32).name == "openvino"
    (record,) = json.loads((measure.graphs.engines_dir() / measure.CHOICES).read_text()).values()
    assert record["version"] == 2 and record["batches"] == list(SIZES)
    assert record["chosen_by_batch"] == {str(s): expected_engine(s) for s in SIZES}
    assert record["images_per_s_by_batch"] == {str(s): {n: RATES[n][s] for n in RATES} for s in SIZES}
    assert record["chosen"] == "openvino"  # the largest batches' engine (the pipeline's)


def test_the_pipeline_runs_all_its_batches_on_the_engine_for_its_batch_size(conv4, fakes, tmp_path):
    files = [make_image(tmp_path / f"{i}.png", (30 * i, 90, 200), seed=i) for i in range(5)]
    auto = select_engine(conv4.module, conv4.preprocess)
    ort, ov = auto.engine_for(1), auto.engine_for(4)
    assert (ort.name, ov.name) == ("onnxruntime", "openvino")
    ort.sizes.clear(), ov.sizes.clear()
    want = TorchEngine(conv4.module).run(  # the same pixels through PyTorch itself
        pipeline.center_features(pipeline_pixels(), files, conv4.preprocess, batch_size=32, workers=0))
    got = pipeline.center_features(auto, files, conv4.preprocess, batch_size=32, workers=2)
    assert ov.sizes == [5] and ort.sizes == []  # 5 images: the engine for 5 (measured at 4)
    assert (got - want).abs().max().item() <= 1e-5
    pipeline.center_features(auto, files, conv4.preprocess, batch_size=2, workers=2)
    assert ort.sizes == [2, 2, 1] and ov.sizes == [5]  # the last batch, of 1, too: one engine per call


def pipeline_pixels():
    """An 'engine' that hands back the pipeline's input (the pixels an engine would get)."""

    class Pixels:
        uses_cpu = True

        def run(self, batch):
            import torch

            return torch.as_tensor(batch)

    return Pixels()


def test_best_batch_is_the_largest_size_within_5_percent_of_the_best_rate():
    flat = Choice({1: {"a": 100.0}, 4: {"a": 316.0}, 16: {"a": 310.0}, 32: {"a": 301.0}})
    assert flat.best_batch() == 32  # 301 >= 0.95 * 316 = 300.2
    falling = Choice({1: {"a": 120.0}, 4: {"a": 118.0}, 16: {"a": 90.0}, 32: {"a": 75.0}})
    assert falling.best_batch() == 4  # 118 >= 114 > 90
    mixed = Choice({s: {n: RATES[n][s] for n in RATES} for s in SIZES})
    best = {s: max(RATES[n][s] for n in RATES) for s in SIZES}  # the chosen engine's rate at each size
    assert mixed.best_batch() == max(s for s in SIZES if best[s] >= 0.95 * max(best.values())) == 4
    assert engines.best_batch(TorchEngine(create_backbone("conv4", pretrained=False).module)) == engines.DEFAULT_BATCH


def test_choice_ranges_and_rows():
    c = Choice({s: {n: RATES[n][s] for n in RATES} for s in SIZES})
    assert [c.span(s) for s in SIZES] == ["1-3", "4-15", "16-31", "32 or more"]
    assert c.spans_of("openvino") == ["4-15", "32 or more"] and c.spans_of("onnxruntime") == ["1-3", "16-31"]
    assert c.names() == ["openvino", "onnxruntime"]  # the largest batches' engine first
    row = c.rows()[0]
    assert row == {"batches": "1-3", "measured_at": 1, "engine": "onnxruntime",
                   "images_per_s": {"onnxruntime": 290.0, "openvino": 200.0, "torch": 120.0}}
    same = Choice({1: {"a": 5.0, "b": 1.0}, 32: {"a": 9.0, "b": 2.0}})
    assert same.spans_of("a") == ["1 or more"] and same.names() == ["a"]


def test_a_record_of_the_one_size_format_is_measured_again_once(conv4, fakes, monkeypatch):
    fp = fingerprint(conv4.module)
    shape = (conv4.preprocess.in_chans, conv4.preprocess.image_size, conv4.preprocess.image_size)
    key = measure.choice_key(fp, shape, "float32")
    old = {"batch": 16, "chosen": "onnxruntime", "images_per_s": {"onnxruntime": 121.8, "openvino": 98.9, "torch": 24.0},
           "date": "2026-12-01 10:00 UTC", "precision": "float32"}
    other = {"chosen": "torch", "images_per_s": {"torch": 1.0}, "batch": 16}
    path = measure.graphs.engines_dir() / measure.CHOICES
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({key: old, "another machine | x | 1x28x28 | float32": other}))
    assert Choice.from_record(old) is None
    measured = []
    monkeypatch.setattr(select, "measure", lambda *a, **k: (measured.append(1), measure.measure(*a, **k))[1])
    auto = select_engine(conv4.module, conv4.preprocess)
    again = select_engine(conv4.module, conv4.preprocess)
    assert len(measured) == 1  # the old record: measured again, once
    assert auto.engine_for(32).name == again.engine_for(32).name == "openvino"  # not the old record's choice
    choices = json.loads(path.read_text())
    assert choices["another machine | x | 1x28x28 | float32"] == other  # other records kept as they were
    assert choices[key]["version"] == 2 and Choice.from_record(choices[key]).name_for(32) == "openvino"


def test_a_recorded_choice_builds_the_largest_batches_engine_now_and_the_others_when_needed(conv4, fakes):
    select_engine(conv4.module, conv4.preprocess)  # measures: builds every engine
    fakes.clear()
    auto = select_engine(conv4.module, conv4.preprocess)  # recorded: nothing measured
    assert fakes == ["openvino"]
    assert auto.engine_for(2).name == "onnxruntime" and fakes == ["openvino", "onnxruntime"]
    auto.engine_for(1), auto.engine_for(20)
    assert fakes == ["openvino", "onnxruntime"]  # built once
    assert auto.describe().startswith("openvino float32 (") and "for batches of 4-15, 32 or more; onnxruntime" in auto.describe()
    assert auto.name == "openvino" and auto.best_batch() == 4


def test_imprint_info_shows_the_engine_per_batch_size_and_its_figures(fakes, tiny_folder, tmp_path):
    path = tmp_path / "m.safetensors"
    r = run_cli("create", path, "--backbone", "conv4", "--random-init", "--dim", "16", "--from-folder", tiny_folder)
    assert r.exit_code == 0, r.output
    info = json.loads(run_cli("info", path, "--json").output)
    rows = info["engine_by_batch"]["rows"]
    assert [r["measured_at"] for r in rows] == list(SIZES)
    assert [r["engine"] for r in rows] == [expected_engine(s) for s in SIZES]
    assert [r["images_per_s"] for r in rows] == [{n: RATES[n][s] for n in RATES} for s in SIZES]
    assert info["engine"].startswith("openvino float32")
    text = run_cli("info", path).output
    assert "engine by batch size (auto, measured " in text
    line = next(x for x in text.splitlines() if x.strip().startswith("16-31"))
    assert line.split()[:2] == ["16-31", "onnxruntime"] and "openvino 98.9" in line
    named = json.loads(run_cli("info", path, "--json", "--engine", "torch").output)
    assert named["engine_by_batch"] is None and named["engine"].startswith("torch float32")
