"""read_omniglot and omniglot_train_test: the real data set and tiny copies written here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from imprinting.data import DatasetError
from imprinting.data.omniglot import BACKGROUND_ALPHABETS, omniglot_train_test, read_omniglot

# part -> alphabet -> number of characters; every character gets DRAWINGS drawings
TINY = {"background": {"Latin": 2, "Greek": 1}, "evaluation": {"Angelic": 2}}
DRAWINGS = 4


def write_omniglot(root: Path, tiny=TINY, drawings=DRAWINGS) -> Path:
    folder = root / "omniglot" / "omniglot-py"
    number = 0
    for part, alphabets in tiny.items():
        for alphabet, n_chars in alphabets.items():
            for k in range(1, n_chars + 1):
                number += 1
                char = folder / f"images_{part}" / alphabet / f"character{k:02d}"
                char.mkdir(parents=True)
                for drawer in range(1, drawings + 1):
                    Image.new("1", (3, 3), 1).save(char / f"{number:04d}_{drawer:02d}.png")
    return folder


def test_tiny_all_parts(tmp_path):
    write_omniglot(tmp_path)
    images = read_omniglot(tmp_path)
    # background first, classes sorted within a part
    assert images.class_names == ["Greek/character01", "Latin/character01", "Latin/character02",
                                  "Angelic/character01", "Angelic/character02"]
    assert images.meta["background_classes"] == [0, 1, 2]
    assert images.meta["part"] == "all"
    assert len(images) == 5 * DRAWINGS
    assert images.labels == [c for c in range(5) for _ in range(DRAWINGS)]
    for path, label in zip(images.paths, images.labels):
        assert "/".join(path.parts[-3:-1]) == images.class_names[label]


@pytest.mark.parametrize("part, names, background", [
    ("background", ["Greek/character01", "Latin/character01", "Latin/character02"], [0, 1, 2]),
    ("evaluation", ["Angelic/character01", "Angelic/character02"], []),
])
def test_tiny_one_part(tmp_path, part, names, background):
    write_omniglot(tmp_path)
    images = read_omniglot(tmp_path, part)
    assert images.class_names == names
    assert images.meta["background_classes"] == background
    assert len(images) == len(names) * DRAWINGS


def test_bad_part_name(tmp_path):
    with pytest.raises(ValueError, match="part"):
        read_omniglot(tmp_path, "test")


def test_missing_part_folder_names_it(tmp_path):
    write_omniglot(tmp_path, {"background": {"Latin": 1}})
    assert len(read_omniglot(tmp_path, "background")) == DRAWINGS
    with pytest.raises(DatasetError, match="images_evaluation"):
        read_omniglot(tmp_path, "all")


def test_empty_character_folder_names_it(tmp_path):
    folder = write_omniglot(tmp_path)
    (folder / "images_evaluation" / "Angelic" / "character03").mkdir()
    with pytest.raises(DatasetError, match="character03: character folder has no images"):
        read_omniglot(tmp_path)


def test_empty_alphabet_and_part_folders_name_them(tmp_path):
    folder = write_omniglot(tmp_path)
    (folder / "images_evaluation" / "Empty_Alphabet").mkdir()
    with pytest.raises(DatasetError, match="Empty_Alphabet"):
        read_omniglot(tmp_path, "evaluation")
    (tmp_path / "other" / "omniglot" / "omniglot-py" / "images_background").mkdir(parents=True)
    with pytest.raises(DatasetError, match="images_background: no alphabet folders"):
        read_omniglot(tmp_path / "other", "background")


def test_train_test_by_drawer(tmp_path):
    write_omniglot(tmp_path)
    images = read_omniglot(tmp_path)
    train, test = omniglot_train_test(images, train_per_class=3)
    assert (train.meta["split"], test.meta["split"]) == ("train", "test")
    assert images.meta.get("split") is None  # the input is left alone
    assert sorted(p.stem[-2:] for p in train.paths) == sorted(["01", "02", "03"] * 5)
    assert sorted(p.stem[-2:] for p in test.paths) == ["04"] * 5
    assert set(train.paths).isdisjoint(test.paths)
    assert sorted(train.paths + test.paths) == sorted(images.paths)
    assert train.class_names == test.class_names == images.class_names
    assert train.meta["background_classes"] == [0, 1, 2]
    for part in (train, test):
        assert all("/".join(p.parts[-3:-1]) == part.class_names[y] for p, y in zip(part.paths, part.labels))


def test_train_test_sorts_by_drawer_number_not_listing_order(tmp_path):
    write_omniglot(tmp_path)
    images = read_omniglot(tmp_path, "evaluation")
    reversed_images = images.subset(reversed(range(len(images))))
    train, _ = omniglot_train_test(reversed_images, train_per_class=1)
    assert sorted(p.name for p in train.paths) == ["0004_01.png", "0005_01.png"]


def test_train_test_errors(tmp_path):
    folder = write_omniglot(tmp_path)
    images = read_omniglot(tmp_path)
    with pytest.raises(DatasetError, match="character01: 4 drawings"):
        omniglot_train_test(images, train_per_class=4)
    with pytest.raises(ValueError, match="train_per_class"):
        omniglot_train_test(images, train_per_class=0)
    odd = folder / "images_background" / "Greek" / "character01" / "drawing.png"
    Image.new("1", (3, 3), 1).save(odd)
    with pytest.raises(DatasetError, match="drawing.png: expected a file name"):
        omniglot_train_test(read_omniglot(tmp_path), train_per_class=2)


def test_background_alphabets_constant_matches_tiny_names():
    assert len(BACKGROUND_ALPHABETS) == len(set(BACKGROUND_ALPHABETS)) == 30
    assert "Latin" in BACKGROUND_ALPHABETS and "Angelic" not in BACKGROUND_ALPHABETS


@pytest.fixture(scope="module")
def real_omniglot(shared_data):
    return read_omniglot(shared_data)


def _count_pngs(folder: Path) -> tuple[int, int]:
    """(number of character folders, number of png files) under one images_<part> folder."""
    characters = files = 0
    for _, _, names in os.walk(folder):
        pngs = [n for n in names if n.endswith(".png")]
        characters += bool(pngs)
        files += len(pngs)
    return characters, files


@pytest.mark.real_data
def test_real_omniglot(shared_data, real_omniglot):
    folder = shared_data / "omniglot" / "omniglot-py"
    n_back, files_back = _count_pngs(folder / "images_background")
    n_eval, files_eval = _count_pngs(folder / "images_evaluation")
    images = real_omniglot
    assert len(images.class_names) == n_back + n_eval == 1623
    assert len(images) == files_back + files_eval == 32460
    assert images.meta["background_classes"] == list(range(n_back))
    assert n_back == 964
    alphabets = sorted(p.name for p in (folder / "images_background").iterdir())
    assert tuple(alphabets) == tuple(sorted(BACKGROUND_ALPHABETS))
    assert images.class_names[:n_back] == sorted(images.class_names[:n_back])
    assert images.class_names[n_back:] == sorted(images.class_names[n_back:])
    assert {name.split("/")[0] for name in images.class_names[:n_back]} == set(alphabets)


@pytest.mark.real_data
def test_real_train_test(real_omniglot):
    train, test = omniglot_train_test(real_omniglot)
    assert len(train) == len(test) == 1623 * 10
    assert {int(p.stem[-2:]) for p in train.paths} == set(range(1, 11))
    assert {int(p.stem[-2:]) for p in test.paths} == set(range(11, 21))
    assert set(train.paths).isdisjoint(test.paths)
    assert sorted(set(train.labels)) == sorted(set(test.labels)) == list(range(1623))
