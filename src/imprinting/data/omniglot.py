"""Omniglot (Lake et al. 2015) in torchvision's folder layout.

Layout: ``<root>/omniglot/omniglot-py/images_{background,evaluation}/<Alphabet>/characterNN/*.png``,
20 drawings per character, file names ``<character number>_<drawer number>.png``. The
background set (30 alphabets, 964 characters) serves as base classes, the evaluation set
(20 alphabets, 659 characters) as novel classes.

Omniglot has no official train/test split of a character's drawings, and the paper (Qi et
al. 2018) does not use Omniglot, so it states no protocol for it. ``omniglot_train_test``
follows the paper's general protocol (a fixed train/test split; low-shot examples come only
from the train split) with a split by drawer: a character's drawings sorted by drawer
number, the first ``train_per_class`` (default 10: drawers 1-10) are train, the rest (drawers
11-20) test. Test drawings thus come from people whose drawings were never trained on, and
up to 10 shots per novel character are available.
"""

from __future__ import annotations

import os
from pathlib import Path

from imprinting.data import DatasetError, ImageSet, data_root
from imprinting.data.images import IMAGE_EXTENSIONS

PARTS = ("background", "evaluation", "all")

# The 30 alphabets of the official background set (images_background).
BACKGROUND_ALPHABETS = (
    "Alphabet_of_the_Magi", "Anglo-Saxon_Futhorc", "Arcadian", "Armenian", "Asomtavruli_(Georgian)",
    "Balinese", "Bengali", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Burmese_(Myanmar)",
    "Cyrillic", "Early_Aramaic", "Futurama", "Grantha", "Greek", "Gujarati", "Hebrew",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Japanese_(hiragana)", "Japanese_(katakana)", "Korean",
    "Latin", "Malay_(Jawi_-_Arabic)", "Mkhedruli_(Georgian)", "N_Ko", "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Sanskrit", "Syriac_(Estrangelo)", "Tagalog", "Tifinagh",
)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_part(folder: Path) -> list[tuple[str, list[Path]]]:
    """``(class name, sorted image paths)`` per character of one ``images_<part>`` folder."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing (Omniglot needs images_background/ and images_evaluation/ "
                           "with <Alphabet>/characterNN/*.png)")
    classes = []
    for alphabet in _subdirs(folder):
        characters = _subdirs(alphabet)
        if not characters:
            raise DatasetError(f"{alphabet}: alphabet folder has no character folders")
        for character in characters:
            files = sorted(f for f in character.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DatasetError(f"{character}: character folder has no images")
            classes.append((f"{alphabet.name}/{character.name}", files))
    if not classes:
        raise DatasetError(f"{folder}: no alphabet folders")
    return classes


def read_omniglot(root: str | os.PathLike | None = None, part: str = "all") -> ImageSet:
    """All drawings of one part: ``background``, ``evaluation`` or ``all`` (background first).

    Class names are ``<Alphabet>/characterNN``, sorted within each part; with ``all``, labels
    0..963 are the background characters and 964..1622 the evaluation ones.
    ``meta["background_classes"]`` lists the labels from images_background (the base classes),
    ``meta["part"]`` is the part. Use ``omniglot_train_test`` for a train/test split.
    """
    if part not in PARTS:
        raise DatasetError(f"part must be one of {PARTS}, got {part!r}")
    folder = data_root(root) / "omniglot" / "omniglot-py"
    parts = ("background", "evaluation") if part == "all" else (part,)
    class_names: list[str] = []
    paths: list[Path] = []
    labels: list[int] = []
    background: list[int] = []
    for p in parts:
        for name, files in _read_part(folder / f"images_{p}"):
            label = len(class_names)
            class_names.append(name)
            if p == "background":
                background.append(label)
            paths.extend(files)
            labels.extend([label] * len(files))
    meta = {"part": part, "background_classes": background}
    return ImageSet(f"omniglot/{part}", paths, labels, class_names, meta)


def _drawer(path: Path) -> int:
    number = path.stem.rpartition("_")[2]
    if "_" not in path.stem or not number.isdigit():
        raise DatasetError(f"{path}: expected a file name <character>_<drawer>, e.g. 0709_01.png")
    return int(number)


def omniglot_train_test(images: ImageSet, train_per_class: int = 10) -> tuple[ImageSet, ImageSet]:
    """Split each character's drawings by drawer: ``(train, test)``.

    A character's drawings are sorted by drawer number (the ``_NN`` of the file name); the
    first ``train_per_class`` are train, the rest test. With the complete data set and the
    default of 10, drawers 1-10 train and drawers 11-20 test, for every character. The split
    is fixed (no seed): the paper uses a fixed train/test split and draws its random low-shot
    examples from the train split only (see ``imprinting.data.splits.shot_draws``). A
    character with no more than ``train_per_class`` drawings would have no test drawing and
    is an error naming its folder.
    """
    if train_per_class < 1:
        raise DatasetError(f"train_per_class must be at least 1, got {train_per_class}")
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(images.labels):
        by_class.setdefault(label, []).append(i)
    train: list[int] = []
    test: list[int] = []
    for label in sorted(by_class):
        indices = sorted(by_class[label], key=lambda i: (_drawer(images.paths[i]), images.paths[i].name))
        if len(indices) <= train_per_class:
            raise DatasetError(f"{images.paths[indices[0]].parent}: {len(indices)} drawings, "
                               f"need more than train_per_class={train_per_class} to leave a test drawing")
        train.extend(indices[:train_per_class])
        test.extend(indices[train_per_class:])
    train_set = images.subset(sorted(train), f"{images.name}/train")
    test_set = images.subset(sorted(test), f"{images.name}/test")
    train_set.meta["split"] = "train"
    test_set.meta["split"] = "test"
    return train_set, test_set
