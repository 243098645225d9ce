"""The paper's low-shot protocol: base/novel classes and the random n-shot training sets.

Section 6.1.1: each data set keeps its standard train/test split; its classes are split into
base classes (all their training images train the base classifier) and novel classes, of which
only a small random subset of the training images, n = 1, 2, 5, 10, 20 per class, is used
for low-shot learning. Testing uses the whole test split.

Everything here takes training-split labels only, so test images can never be drawn as
low-shot examples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from imprinting.data import DatasetError, ImageSet
from imprinting.data.cub import cub_base_novel
from imprinting.data.omniglot import BACKGROUND_ALPHABETS

RULES = ("cub", "flowers102", "omniglot", "inaturalist")
FLOWERS_NUM_BASE = 51  # Flowers-102 class ids 1..51 (labels 0..50) are base classes
INATURALIST_MIN_BASE = 100  # iNaturalist classes with at least this many training images are base
SHOTS = (1, 2, 5, 10, 20)


def _present(image_set: ImageSet) -> list[int]:
    """Labels with images: ``meta["present_classes"]`` if the reader gave it, else the labels seen."""
    if "present_classes" in image_set.meta:
        return sorted(image_set.meta["present_classes"])
    return sorted(set(image_set.labels))


def base_novel_split(image_set: ImageSet, rule) -> tuple[list[int], list[int]]:
    """Split the classes that have images into sorted ``(base, novel)`` label lists.

    ``rule`` is one of

    - ``"cub"``: official class ids 1..100 (labels 0..99) are base (paper, Section 6.2);
    - ``"flowers102"``: class ids 1..51 (labels 0..50) are base;
    - ``"omniglot"``: characters of the background alphabets are base, of the evaluation
      alphabets novel (``meta["background_classes"]`` from ``read_omniglot``, else the class
      name's alphabet prefix against ``BACKGROUND_ALPHABETS``);
    - ``"inaturalist"``: classes with at least 100 images in ``image_set`` are base (paper,
      Section 6.3), so ``image_set`` must be the training split;
    - a list of base class labels; every other class with images is novel.

    Only classes with images (``meta["present_classes"]``, else the labels in ``image_set``)
    are returned, so a partial copy of a data set gives no empty classes.
    """
    present = _present(image_set)
    if isinstance(rule, str):
        if rule == "cub":
            return cub_base_novel(present)
        if rule == "flowers102":
            is_base = lambda c: c < FLOWERS_NUM_BASE  # noqa: E731
        elif rule == "omniglot":
            if "background_classes" in image_set.meta:
                background = set(image_set.meta["background_classes"])
            else:
                background = {c for c, name in enumerate(image_set.class_names)
                              if name.split("/")[0] in BACKGROUND_ALPHABETS}
            is_base = background.__contains__
        elif rule == "inaturalist":
            if image_set.meta.get("split", "train") != "train":
                raise DatasetError(f"{image_set.name}: the inaturalist rule counts training images; "
                                 f"got the {image_set.meta['split']!r} split")
            counts = Counter(image_set.labels)
            is_base = lambda c: counts[c] >= INATURALIST_MIN_BASE  # noqa: E731
        else:
            raise DatasetError(f"rule must be one of {RULES} or a list of base labels, got {rule!r}")
    else:
        given = {int(c) for c in rule}
        bad = sorted(c for c in given if not 0 <= c < len(image_set.class_names))
        if bad:
            raise DatasetError(f"base labels {bad} are not class labels of {image_set.name} "
                             f"(0..{len(image_set.class_names) - 1})")
        is_base = given.__contains__
    return [c for c in present if is_base(c)], [c for c in present if not is_base(c)]


@dataclass
class ShotDraws:
    """Random orders of each novel class's training images, one per draw.

    ``perms[d][c]`` is draw ``d``'s permutation of the training indices of class ``c``; the
    n-shot set of a draw is the first n of each permutation (``take``), so shot sets are
    nested. ``short`` maps each class with fewer training images than ``max(shots)`` to the
    number it has: for n above that number the class uses all its images.
    """

    seed: int
    shots: tuple[int, ...]
    perms: list[dict[int, list[int]]]
    short: dict[int, int]

    def __len__(self) -> int:
        return len(self.perms)

    def __getitem__(self, d: int) -> dict[int, list[int]]:
        return self.perms[d]

    def __iter__(self):
        return iter(self.perms)

    def take(self, d: int, n: int) -> list[int]:
        """The training indices of draw ``d``'s n-shot set."""
        return take(self.perms[d], n)


def shot_draws(
    labels: Sequence[int] | ImageSet,
    novel_classes: Sequence[int],
    shots: Sequence[int] = SHOTS,
    draws: int = 5,
    seed: int = 0,
) -> ShotDraws:
    """Draw ``draws`` random low-shot orders of the novel classes' training images.

    ``labels`` are the labels of the training split (or the training ``ImageSet``; a test
    split is refused); the returned indices index them. For draw ``d`` and class ``c`` the
    order is a permutation of ``c``'s indices (ascending) by a generator seeded with
    ``(seed, d, c)``: it depends on nothing else, not on ``shots``, the order of
    ``novel_classes`` or the other classes. ``shots`` only sets what ``short`` records.
    """
    if isinstance(labels, ImageSet):
        if labels.meta.get("split", "train") != "train":
            raise DatasetError(f"{labels.name}: low-shot examples come from the training split, "
                             f"got the {labels.meta['split']!r} split")
        labels = labels.labels
    shots = tuple(sorted(set(int(n) for n in shots)))
    if not shots or shots[0] < 1:
        raise DatasetError(f"shots must be positive numbers, got {shots}")
    if draws < 1:
        raise DatasetError(f"draws must be at least 1, got {draws}")
    if seed < 0:
        raise DatasetError(f"seed must be non-negative, got {seed}")
    classes = sorted(set(int(c) for c in novel_classes))
    by_class: dict[int, list[int]] = {c: [] for c in classes}
    for i, label in enumerate(labels):
        if label in by_class:
            by_class[label].append(i)
    perms = []
    for d in range(draws):
        perm = {}
        for c in classes:
            order = np.random.default_rng([seed, d, c]).permutation(len(by_class[c]))
            perm[c] = [by_class[c][j] for j in order]
        perms.append(perm)
    short = {c: len(by_class[c]) for c in classes if len(by_class[c]) < shots[-1]}
    return ShotDraws(seed, shots, perms, short)


def take(draw_perm: dict[int, list[int]], n: int) -> list[int]:
    """The n-shot training indices of one draw: the first ``n`` of each class, classes in order.

    A class with fewer than ``n`` training images gives all it has.
    """
    if n < 1:
        raise DatasetError(f"n must be at least 1, got {n}")
    return [i for c in sorted(draw_perm) for i in draw_perm[c][:n]]
