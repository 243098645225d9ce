"""read_folder on tiny class folders written here."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imprinting.data import DatasetError
from imprinting.data.folder import read_folder
from imprinting.data.images import IMAGE_EXTENSIONS


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (5, 6, 7)).save(path, format="PNG")  # the content need not match the suffix
    return path


def test_classes_and_images(tmp_path):
    image(tmp_path / "zebra" / "b.jpg")
    image(tmp_path / "zebra" / "a.PNG")  # extension in any case
    image(tmp_path / "apple" / "x.jpeg")
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    (tmp_path / "apple" / "sub").mkdir()  # nested folders are not images
    image(tmp_path / "apple" / ".hidden.jpg")
    image(tmp_path / ".cache" / "c.jpg")  # hidden folder: not a class
    (tmp_path / "README.md").write_text("loose files are ignored")

    images = read_folder(tmp_path)
    assert images.class_names == ["apple", "zebra"]
    assert images.paths == [tmp_path / "apple" / "x.jpeg", tmp_path / "zebra" / "a.PNG", tmp_path / "zebra" / "b.jpg"]
    assert images.labels == [0, 1, 1]
    assert images.name == f"folder/{tmp_path.name}"


def test_every_extension_counts(tmp_path):
    for k, ext in enumerate(IMAGE_EXTENSIONS):
        image(tmp_path / "c" / f"img{k}{ext}")
    assert len(read_folder(tmp_path)) == len(IMAGE_EXTENSIONS)


def test_accepts_a_string_path(tmp_path):
    image(tmp_path / "one" / "a.png")
    assert read_folder(str(tmp_path)).class_names == ["one"]


def test_empty_folder_names_it(tmp_path):
    folder = tmp_path / "empty_set"
    folder.mkdir()
    (folder / "loose.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty_set: folder has no class folders"):
        read_folder(folder)


def test_class_without_images_names_it(tmp_path):
    image(tmp_path / "good" / "a.png")
    (tmp_path / "bare_class").mkdir()
    (tmp_path / "bare_class" / "labels.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="bare_class: class folder has no image files"):
        read_folder(tmp_path)


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DatasetError, match="nowhere: no such folder"):
        read_folder(tmp_path / "nowhere")
    file = image(tmp_path / "a_file.png")
    with pytest.raises(DatasetError, match="a_file.png: no such folder"):
        read_folder(file)
