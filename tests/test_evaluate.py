"""``imprinting.evaluate`` and ``imprint evaluate`` / ``imprint predict`` on nested folders."""

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import make_image, run_cli as run
from imprinting import checkpoint
from imprinting.cli import main
from imprinting.data import DatasetError
from imprinting.evaluate import find_images, read_tree, score
from imprinting.prediction import Prediction


@pytest.fixture
def nested(tmp_path, tiny_folder):
    """The tiny classes again, each class's images spread over sub-folders of several depths,
    with a hidden folder and a non-image file that must be skipped."""
    root = tmp_path / "test"
    for c in ("red", "green", "blue"):
        files = sorted((tiny_folder / c).glob("*.png"))
        for i, f in enumerate(files):
            target = root / c / ("a" if i % 2 else "") / ("b" if i == 3 else "") / f"{c}{i}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
        (root / c / ".hidden").mkdir()
        shutil.copy(files[0], root / c / ".hidden" / "skip.png")
        (root / c / "notes.txt").write_text("not an image")
    return root


def _pred(*names):
    return Prediction(list(names), [1.0 / len(names)] * len(names), [0.5] * len(names))


def test_score_matches_a_count_by_hand():
    truth = ["a", "a", "a", "b", "b", "c"]
    preds = [_pred("a", "b"), _pred("b", "a"), _pred("b", "c"), _pred("b", "a"), _pred("c", "b"), _pred("x", "c")]
    result = score([f"{i}.jpg" for i in range(6)], truth, preds, k=2)
    assert result.top1 == pytest.approx(2 / 6)
    assert result.topk == pytest.approx(5 / 6)  # only image 2 (a) misses a among its two best
    assert result.recall == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 2), "c": 0.0}
    assert result.support == {"a": 3, "b": 2, "c": 1}
    assert result.labels == ["a", "b", "c", "x"]  # a predicted class outside the folder gets a column
    assert result.confused[0] == {"true": "a", "predicted": "b", "count": 2, "share": pytest.approx(2 / 3)}
    assert {(c["true"], c["predicted"], c["count"]) for c in result.confused[1:]} == {("b", "c", 1), ("c", "x", 1)}
    expected = np.zeros((4, 4), int)
    for t, p in zip(truth, preds):
        expected[result.labels.index(t), result.labels.index(p.classes[0])] += 1
    np.testing.assert_array_equal(result.confusion, expected)
    # every top probability is 1/2: bin (0.4, 0.467] holds all 6, 2 right: |2/6 - 0.5|
    assert result.confidence == pytest.approx(0.5) and result.ece == pytest.approx(abs(2 / 6 - 0.5))


def test_read_tree_finds_images_at_any_depth(nested):
    data = read_tree(nested)
    assert data.class_names == ["blue", "green", "red"]
    assert len(data) == 12 and all(".hidden" not in str(p) for p in data.paths)
    assert sorted(p.name for p, y in zip(data.paths, data.labels) if y == 2) == [f"red{i}.png" for i in range(4)]
    assert find_images([nested / "red"]) == sorted(p for p, y in zip(data.paths, data.labels) if y == 2)


def test_read_tree_names_an_empty_class_folder(tmp_path):
    make_image(tmp_path / "t" / "a" / "x" / "1.png")
    (tmp_path / "t" / "b" / "deep").mkdir(parents=True)
    with pytest.raises(DatasetError, match="b: class folder has no image files"):
        read_tree(tmp_path / "t")


def test_evaluate_agrees_with_predicting_each_image(tiny_model, nested):
    from imprinting.evaluate import evaluate

    model = checkpoint.load(tiny_model)
    result = evaluate(model, nested, k=2)
    correct, in_top2 = [], []
    for c in ("blue", "green", "red"):
        for f in find_images([nested / c]):
            p = model.predict_images([f], k=2)[0]
            correct.append(p.classes[0] == c)
            in_top2.append(c in p.classes)
    assert result.top1 == pytest.approx(np.mean(correct)) and result.topk == pytest.approx(np.mean(in_top2))
    assert len(result.images) == 12 and result.confusion.sum() == 12


def test_cli_evaluate_prints_and_writes_every_file(tiny_model, nested, tmp_path):
    out = tmp_path / "ev"
    r = run("evaluate", tiny_model, nested, "--out", out, "-k", "2")
    assert r.exit_code == 0, r.output
    assert "12 images, 3 classes" in r.output and "top-1" in r.output and "top-2" in r.output
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 12
    assert summary["top1"] == pytest.approx(np.mean([r["correct"] == "True" for r in rows]))
    per_class = list(csv.DictReader(open(out / "per_class.csv")))
    assert [r["class"] for r in per_class] == ["blue", "green", "red"]
    assert Image.open(out / "confusion.png").size[0] > 100
    r = run("evaluate", tiny_model, nested, "--out", out, "--json")
    assert json.loads(r.output)["images"] == 12


def test_cli_evaluate_names_folders_the_model_does_not_know(tiny_model, nested, tmp_path):
    shutil.copytree(nested / "red", nested / "purple")
    r = CliRunner().invoke(main, ["evaluate", str(tiny_model), str(nested), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0
    message = r.output.strip()
    assert message.startswith("Error:") and len(message.splitlines()) == 1 and "'purple'" in message


def test_predict_walks_nested_folders_and_writes_csv(tiny_model, nested, tmp_path):
    out = tmp_path / "p.csv"
    r = run("predict", tiny_model, nested, "-k", "2", "--csv", out)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 * 2 and {r["rank"] for r in rows} == {"1", "2"}
    assert {r["image"] for r in rows} == {str(p) for p in read_tree(nested).paths}
    lines = run("predict", tiny_model, nested, "--json").output.splitlines()
    by_image = {json.loads(line)["image"]: json.loads(line) for line in lines}
    for row in rows:
        answer = by_image[row["image"]]
        assert answer["classes"][int(row["rank"]) - 1] == row["class"]
        assert float(row["probability"]) == pytest.approx(answer["probabilities"][int(row["rank"]) - 1], abs=1e-6)
    printed = run("predict", tiny_model, nested / "red", "--csv", "-").output.splitlines()
    assert printed[0] == "image,unknown,rank,class,probability,cosine" and len(printed) == 1 + 4 * 3
