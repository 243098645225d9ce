"""Taught examples that look taught to the wrong class (``imprinting.suspects``): the rule on
hand-made probabilities, the leave-one-out probabilities of a hand-made table, and the
issue's acceptance test on the README's first five minutes with 3 photos in a wrong folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imprinting.classes import ClassTable
from imprinting.suspects import (
    MAX_OWN_PROBABILITY,
    Suspect,
    find_suspects,
    leave_one_out_probabilities,
)

REPO = Path(__file__).resolve().parents[1]

# --- the rule, on hand-made probabilities ---------------------------------------------------

P = np.array([
    [0.05, 0.90, 0.05],  # 0: taught as 0, p(own) 0.05 < 0.1, looks like 1 (0.90)   -> suspect
    [0.30, 0.60, 0.10],  # 1: taught as 0, another class wins but p(own) 0.30: unsure -> not
    [0.80, 0.10, 0.10],  # 2: taught as 0, right
    [0.08, 0.02, 0.90],  # 3: taught as 1, p(own) 0.02, looks like 2 (0.90)          -> suspect, first
    [0.10, 0.85, 0.05],  # 4: taught as 1, right
    [0.10, 0.10, 0.80],  # 5: taught as 2, right
    [0.45, 0.45, 0.10],  # 6: taught as 2, p(own) exactly 0.1: not below               -> not
])
Y = np.array([0, 0, 0, 1, 1, 2, 2])


def test_an_example_whose_own_class_is_improbable_is_named_most_suspicious_first():
    got = find_suspects(P, Y)
    assert got == [Suspect(3, 1, 2, 0.90, 0.02), Suspect(0, 0, 1, 0.90, 0.05)]
    assert MAX_OWN_PROBABILITY == 0.1
    assert got[0].to_dict() == {"index": 3, "label": 1, "looks_like": 2, "probability": 0.90, "own_probability": 0.02}


def test_the_maximum_own_probability_is_a_strict_bound():
    # at 0.35, example 1 (p(own) 0.30, class 1 at 0.60) joins; example 6 (0.1 < 0.35, ties 0.45/0.45) too:
    # its most probable other class is the first of the tie, 0
    got = find_suspects(P, Y, max_own_probability=0.35)
    assert [(s.index, s.looks_like, s.probability) for s in got] == [(3, 2, 0.90), (0, 1, 0.90), (6, 0, 0.45),
                                                                     (1, 1, 0.60)]
    assert [s.index for s in find_suspects(P, Y, max_own_probability=0.0500001)] == [3, 0]
    assert [s.index for s in find_suspects(P, Y, max_own_probability=0.05)] == [3]  # 0.05 is not below 0.05


def test_a_class_taught_from_one_example_is_never_suspected():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.99, 0.01]])  # example 2, alone in class 1, p(own) 0.01
    assert find_suspects(p, np.array([0, 0, 1])) == []
    assert [s.index for s in find_suspects(p, np.array([0, 1, 1]))] == [2]  # with a second example, it is
    # rows calibration could not score (scored False) are never suspects either
    assert find_suspects(p, np.array([0, 1, 1]), scored=np.array([True, True, False])) == []


def test_an_improbable_class_that_no_other_class_beats_is_not_suspected():
    flat = np.full((4, 20), 0.05)  # p(own) 0.05 < 0.1, but no class is more probable than its own
    assert find_suspects(flat, np.array([0, 0, 1, 1])) == []


def test_bad_arguments_are_refused():
    assert find_suspects(np.zeros((0, 3)), np.zeros(0, np.int64)) == []
    with pytest.raises(ValueError, match="expected probabilities"):
        find_suspects(P, Y[:-1])
    with pytest.raises(ValueError, match="class indices"):
        find_suspects(P, np.array([0, 0, 0, 1, 1, 2, 3]))
    with pytest.raises(ValueError, match="class indices"):
        find_suspects(P, Y.astype(float))
    with pytest.raises(ValueError, match="max_own_probability"):
        find_suspects(P, Y, max_own_probability=0)
    with pytest.raises(ValueError, match="scored"):
        find_suspects(P, Y, scored=np.ones(3, bool))


# --- leave-one-out probabilities of a hand-made table (no head: softmax(s * cos)) -----------

def test_leave_one_out_probabilities_of_a_table_are_those_computed_by_hand():
    a = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # class "a"; its third example points at "b"
    b = np.array([[0.0, 1.0], [0.6, 0.8]])
    table = ClassTable(2)
    table.add("a", a)
    table.add("b", b)
    e = np.concatenate([a, b])
    p, scored = leave_one_out_probabilities(table, e, ["a", "a", "a", "b", "b"], scale=10.0)
    assert scored.all() and p.shape == (5, 2)
    # a[2] = (0, 1): "a" without it is normalize((1, 0) + (0.8, 0.6)) = (3, 1) / sqrt(10), cosine 1 / sqrt(10);
    # "b" is normalize((0, 1) + (0.6, 0.8)) = (1, 3) / sqrt(10), cosine 3 / sqrt(10)
    own = 1 / (1 + np.exp(10 * (3 - 1) / np.sqrt(10)))
    assert p[2, 0] == pytest.approx(own, rel=1e-4) and own == pytest.approx(0.00179, abs=1e-5)
    # b[1] = (0.6, 0.8): "b" without it is (0, 1), cosine 0.8; "a" is normalize(1.8, 1.6), cosine 2.36 / |(1.8, 1.6)|
    own_b1 = 1 / (1 + np.exp(10 * (2.36 / np.hypot(1.8, 1.6) - 0.8)))
    assert p[4, 1] == pytest.approx(own_b1, rel=1e-4) and own_b1 == pytest.approx(0.142, abs=1e-3)
    assert find_suspects(p, np.array([0, 0, 0, 1, 1]), scored) == [Suspect(2, 0, 1, float(p[2, 1]), float(p[2, 0]))]


# --- the acceptance test: the first five minutes, 3 photos in a wrong folder --------

SEED = 0  # chooses the 3 photos and their wrong folders


def _flowers_train(shared_data: Path, out: Path) -> Path:
    """train/<class>/ of the README's first five minutes, made by the benchmark's own code."""
    if not (shared_data / "flowers102" / "flowers-102" / "setid.mat").is_file():
        pytest.skip(f"real data not found: Flowers-102 is expected in {shared_data / 'flowers102'} (../shared/data)")
    spec = importlib.util.spec_from_file_location("first_five_minutes", REPO / "benchmarks" / "first_five_minutes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(out), "--data-root", str(shared_data)])
    return out / "train"


@pytest.fixture(scope="module")
def five_minutes_train(shared_data, tmp_path_factory) -> Path:
    return _flowers_train(shared_data, tmp_path_factory.mktemp("five"))


def _create_from_folder(folder: Path):
    """What ``imprint create MODEL --from-folder FOLDER`` does (default --head auto, --dim 0),
    through the same library calls (``cli.evaluate.teach_and_calibrate``), then the suspects
    from its leave-one-out scores. Returns (the image paths, the suspects, the head's kind)."""
    import imprinting
    from imprinting.calibration import calibrate
    from imprinting.data.folder import read_folder
    from imprinting.imprint import imprint_folder

    model = imprinting.create_model("efficientnet_lite0", dim=None, power=0.5)
    images = read_folder(folder)
    taught = imprint_folder(model, images, head="auto")
    names = [taught["classes"][y] for y in taught["labels"]]
    result = calibrate(model, taught["embeddings"], names, "leave-one-out")
    table = model.classes
    p, scored = leave_one_out_probabilities(table, taught["embeddings"].numpy(), names, result.scale)
    labels = np.array([table.index_of(n) for n in names])
    kind = table.head.kind if table.head is not None else "normalized-mean"
    return list(images.paths), [(s, table.name_at(s.looks_like)) for s in find_suspects(p, labels, scored)], kind


@pytest.mark.real_data
def test_three_photos_moved_into_wrong_folders_are_named(five_minutes_train, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(five_minutes_train, train, symlinks=True)
    photos = sorted(train.glob("*/*.jpg"))
    classes = sorted(p for p in train.iterdir() if p.is_dir())
    assert len(photos) == 50 and len(classes) == 10
    rng = np.random.default_rng(SEED)
    moved = {}  # file name -> the class it really is
    for i in rng.choice(len(photos), 3, replace=False):
        photo = photos[i]
        wrong = rng.choice([c for c in classes if c != photo.parent])
        os.rename(photo, wrong / photo.name)
        moved[photo.name] = photo.parent.name

    paths, suspects, kind = _create_from_folder(train)
    named = {Path(paths[s.index]).name: (s, looks_like) for s, looks_like in suspects}
    found = set(named) & set(moved)
    others = set(named) - set(moved)
    report = (f"head {kind}; moved {moved}; named "
              + ", ".join(f"{n} (p(own) {s.own_probability:.3f}, looks like {c} {s.probability:.2f})"
                          for n, (s, c) in named.items()))
    assert len(found) >= 2, report
    assert len(others) <= 3, report


@pytest.mark.real_data
def test_with_every_photo_in_its_folder_none_is_named(five_minutes_train):
    _, suspects, kind = _create_from_folder(five_minutes_train)
    assert suspects == [], f"head {kind}: {suspects}"
