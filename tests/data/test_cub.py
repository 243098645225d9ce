"""read_cub and cub_base_novel: the real partial copy and tiny copies written here."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imprinting.data import DatasetError
from imprinting.data.cub import cub_base_novel, read_cub

# A tiny official-layout copy: 4 classes listed, class 2 has no images.
CLASSES = ["001.Alpha", "002.Beta", "003.Gamma", "004.Delta"]
# image id -> (relative path, class id, is_training_image); ids are not contiguous
IMAGES = {
    3: ("001.Alpha/a_1.jpg", 1, 1),
    5: ("001.Alpha/a_2.jpg", 1, 0),
    8: ("003.Gamma/g_1.jpg", 3, 1),
    9: ("004.Delta/d_1.jpg", 4, 1),
    12: ("004.Delta/d_2.jpg", 4, 0),
    13: ("003.Gamma/g_2.jpg", 3, 0),
}


def write_cub(root: Path, images=IMAGES, classes=CLASSES) -> Path:
    folder = root / "cub" / "CUB_200_2011"
    (folder / "images").mkdir(parents=True)
    (folder / "classes.txt").write_text("".join(f"{k + 1} {n}\n" for k, n in enumerate(classes)))
    (folder / "images.txt").write_text("".join(f"{i} {p}\n" for i, (p, _, _) in images.items()))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, (_, c, _) in images.items()))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, (_, _, t) in images.items()))
    for rel, _, _ in images.values():
        (folder / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (10, 20, 30)).save(folder / "images" / rel)
    return folder


def test_tiny_copy_train_and_test(tmp_path):
    folder = write_cub(tmp_path)
    train = read_cub(tmp_path, "train")
    test = read_cub(tmp_path, "test")
    assert train.class_names == CLASSES
    assert test.class_names == CLASSES
    assert [p.relative_to(folder / "images").as_posix() for p in train.paths] == [
        "001.Alpha/a_1.jpg", "003.Gamma/g_1.jpg", "004.Delta/d_1.jpg"]
    assert train.labels == [0, 2, 3]
    assert [p.name for p in test.paths] == ["a_2.jpg", "d_2.jpg", "g_2.jpg"]
    assert test.labels == [0, 3, 2]
    assert train.meta["present_classes"] == test.meta["present_classes"] == [0, 2, 3]
    assert (train.meta["split"], test.meta["split"]) == ("train", "test")
    assert set(train.paths).isdisjoint(test.paths)


def test_root_from_environment(tmp_path, monkeypatch):
    write_cub(tmp_path)
    monkeypatch.setenv("IMPRINTING_DATA", str(tmp_path))
    assert len(read_cub(split="train")) == 3


def test_bad_split_name(tmp_path):
    write_cub(tmp_path)
    with pytest.raises(ValueError, match="split"):
        read_cub(tmp_path, "val")


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"])
def test_missing_file_names_it(tmp_path, name):
    folder = write_cub(tmp_path)
    (folder / name).unlink()
    with pytest.raises(DatasetError, match=name):
        read_cub(tmp_path)


@pytest.mark.parametrize(
    "name, line, expect",
    [
        ("images.txt", "seven 001.Alpha/a_1.jpg", "images.txt:3"),
        ("images.txt", "14", "images.txt:3"),
        ("images.txt", "3 001.Alpha/again.jpg", "images.txt:3: image id 3 listed twice"),
        ("image_class_labels.txt", "x 1", "image_class_labels.txt:3"),
        ("image_class_labels.txt", "3 1", "image_class_labels.txt:3: image id 3 listed twice"),
        ("image_class_labels.txt", "99 1", "image_class_labels.txt:3: image id 99 is not in images.txt"),
        ("train_test_split.txt", "-1 1", "train_test_split.txt:3"),
        ("classes.txt", "7 007.Wrong", "classes.txt:3: expected class id 3"),
        ("classes.txt", "3", "classes.txt:3"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, name, line, expect):
    folder = write_cub(tmp_path)
    lines = (folder / name).read_text().splitlines()
    lines[2] = line
    (folder / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        read_cub(tmp_path)
    assert expect in str(err.value)


def test_bad_values_name_file_and_line(tmp_path):
    folder = write_cub(tmp_path)
    labels = folder / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("8 3\n", "8 5\n"))  # only 4 classes
    with pytest.raises(DatasetError, match=r"image_class_labels.txt:3: class id '5'"):
        read_cub(tmp_path)
    labels.write_text(labels.read_text().replace("8 5\n", "8 3\n"))
    split = folder / "train_test_split.txt"
    split.write_text(split.read_text().replace("9 1\n", "9 2\n"))
    with pytest.raises(DatasetError, match=r"train_test_split.txt:4: expected 1 \(train\) or 0 \(test\)"):
        read_cub(tmp_path)


def test_missing_id_names_file(tmp_path):
    folder = write_cub(tmp_path)
    split = folder / "train_test_split.txt"
    split.write_text(split.read_text().replace("12 0\n", ""))
    with pytest.raises(DatasetError, match="train_test_split.txt: no line for image id 12"):
        read_cub(tmp_path)


def test_empty_file_names_it(tmp_path):
    folder = write_cub(tmp_path)
    (folder / "images.txt").write_text("\n")
    with pytest.raises(DatasetError, match="images.txt: empty"):
        read_cub(tmp_path)


def test_missing_image_names_it(tmp_path):
    folder = write_cub(tmp_path)
    (folder / "images" / "003.Gamma" / "g_1.jpg").unlink()
    with pytest.raises(DatasetError, match="g_1.jpg"):
        read_cub(tmp_path, "train")
    assert len(read_cub(tmp_path, "test")) == 3  # only the split's own images are needed


def test_cub_base_novel():
    assert cub_base_novel([150, 0, 99, 100, 199, 5, 5]) == ([0, 5, 99], [100, 150, 199])
    assert cub_base_novel([]) == ([], [])


def _pairs(path: Path) -> dict[int, str]:
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())


@pytest.mark.real_data
def test_real_partial_copy(shared_data):
    folder = shared_data / "cub" / "CUB_200_2011"
    paths = {int(k): v for k, v in _pairs(folder / "images.txt").items()}
    class_ids = {int(k): int(v) for k, v in _pairs(folder / "image_class_labels.txt").items()}
    is_train = {int(k): v == "1" for k, v in _pairs(folder / "train_test_split.txt").items()}
    class_lines = (folder / "classes.txt").read_text().splitlines()

    train = read_cub(shared_data, "train")
    test = read_cub(shared_data, "test")
    assert len(train) == sum(is_train.values())
    assert len(test) == sum(not t for t in is_train.values())
    assert len(train) + len(test) == len(paths)
    assert train.class_names == [line.split(" ", 1)[1] for line in class_lines]
    assert len(train.class_names) == 200
    present = sorted({c - 1 for c in class_ids.values()})
    assert train.meta["present_classes"] == test.meta["present_classes"] == present
    assert len(present) == 100

    expected = {folder / "images" / paths[i]: class_ids[i] - 1 for i in paths if is_train[i]}
    assert dict(zip(train.paths, train.labels)) == expected
    assert set(train.paths).isdisjoint(test.paths)
    # every label's folder name is the class name
    assert all(p.parent.name == train.class_names[y] for p, y in zip(train.paths, train.labels))

    base, novel = cub_base_novel(train.meta["present_classes"])
    assert base == [c for c in present if c + 1 <= 100]
    assert novel == [c for c in present if c + 1 > 100]
    assert (len(base), len(novel)) == (58, 42)  # as SOURCES.md says
