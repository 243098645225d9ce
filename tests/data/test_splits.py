"""base_novel_split, shot_draws and take: the paper's low-shot protocol."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from imprinting.data import ImageSet
from imprinting.data.cub import read_cub
from imprinting.data.splits import ShotDraws, base_novel_split, shot_draws, take


def image_set(labels, n_classes, class_names=None, **meta) -> ImageSet:
    names = class_names or [f"class_{c}" for c in range(n_classes)]
    paths = [Path(f"img_{i}.jpg") for i in range(len(labels))]
    return ImageSet("synthetic", paths, list(labels), names, meta)


# ---------------------------------------------------------------- base_novel_split


def test_cub_rule_uses_present_classes():
    present = [0, 3, 99, 100, 150, 199]
    images = image_set([3, 100], 200, present_classes=present)
    assert base_novel_split(images, "cub") == ([0, 3, 99], [100, 150, 199])


def test_cub_rule_without_meta_uses_labels():
    images = image_set([120, 5, 5, 99, 100], 200)
    assert base_novel_split(images, "cub") == ([5, 99], [100, 120])


def test_flowers_rule():
    images = image_set([c for c in range(102) for _ in range(2)], 102)
    base, novel = base_novel_split(images, "flowers102")
    assert base == list(range(51)) and novel == list(range(51, 102))


def test_omniglot_rule_from_meta_and_from_names():
    names = ["Latin/character01", "Greek/character01", "Angelic/character01", "Tengwar/character02"]
    labels = [0, 1, 2, 3, 3]
    assert base_novel_split(image_set(labels, 4, names, background_classes=[0, 1]), "omniglot") == ([0, 1], [2, 3])
    # without meta, the alphabet prefix decides
    assert base_novel_split(image_set(labels, 4, names), "omniglot") == ([0, 1], [2, 3])
    # meta wins over names
    assert base_novel_split(image_set(labels, 4, names, background_classes=[2]), "omniglot") == ([2], [0, 1, 3])


def test_inaturalist_rule_counts_training_images():
    counts = {0: 100, 1: 99, 2: 150, 3: 2, 4: 1}
    labels = [c for c, n in counts.items() for _ in range(n)][::-1]
    base, novel = base_novel_split(image_set(labels, 6, split="train"), "inaturalist")
    assert base == [c for c, n in counts.items() if n >= 100] == [0, 2]
    assert novel == [1, 3, 4]  # class 5 has no image: in neither list
    with pytest.raises(ValueError, match="'val' split"):
        base_novel_split(image_set(labels, 6, split="val"), "inaturalist")


def test_explicit_base_list():
    images = image_set([0, 1, 2, 3, 4, 4], 6)
    assert base_novel_split(images, [4, 0, 0]) == ([0, 4], [1, 2, 3])
    assert base_novel_split(images, (c for c in [5])) == ([], [0, 1, 2, 3, 4])  # 5 has no images
    with pytest.raises(ValueError, match=r"base labels \[6\]"):
        base_novel_split(images, [0, 6])


def test_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of"):
        base_novel_split(image_set([0], 1), "imagenet")


def test_base_and_novel_partition_the_present_classes():
    images = image_set([c for c in range(0, 200, 3)], 200)
    base, novel = base_novel_split(images, "cub")
    assert sorted(base + novel) == sorted(set(images.labels))
    assert not set(base) & set(novel)


# ---------------------------------------------------------------- shot_draws, take

# 3 novel classes with 30, 25 and 3 training images, interleaved with base class 0
LABELS = [0, 1, 2, 3] * 3 + [1, 2, 0] * 22 + [1] * 5


def indices_of(labels, c):
    return [i for i, y in enumerate(labels) if y == c]


def test_permutations_of_each_class():
    draws = shot_draws(LABELS, [1, 2, 3], draws=4)
    assert isinstance(draws, ShotDraws) and len(draws) == 4
    for perm in draws:
        assert sorted(perm) == [1, 2, 3]
        for c in (1, 2, 3):
            assert sorted(perm[c]) == indices_of(LABELS, c)
    assert Counter(LABELS)[1] == 30 and Counter(LABELS)[3] == 3


def test_shots_are_nested():
    draws = shot_draws(LABELS, [1, 2, 3], shots=(1, 2, 5, 10, 20), draws=3)
    for d in range(3):
        previous: set[int] = set()
        for n in (1, 2, 5, 10, 20):
            chosen = take(draws[d], n)
            assert previous <= set(chosen)
            assert chosen == draws.take(d, n)
            per_class = Counter(LABELS[i] for i in chosen)
            assert per_class == {1: n, 2: n, 3: min(n, 3)}
            assert all(LABELS[i] in (1, 2, 3) for i in chosen)
            previous = set(chosen)
        one_shot = take(draws[d], 1)
        assert set(one_shot) <= set(take(draws[d], 2))


def test_short_classes_are_recorded():
    draws = shot_draws(LABELS, [1, 2, 3])
    assert draws.short == {3: 3}
    assert draws.shots == (1, 2, 5, 10, 20)
    assert shot_draws(LABELS, [1, 2, 3], shots=(1, 2)).short == {}
    assert shot_draws(LABELS, [1, 2, 3], shots=(26,)).short == {2: 25, 3: 3}
    assert shot_draws(LABELS, [7]).short == {7: 0}  # no training image at all


def test_deterministic_per_seed_and_draw():
    a = shot_draws(LABELS, [1, 2, 3], seed=7)
    b = shot_draws(LABELS, [1, 2, 3], seed=7)
    assert a.perms == b.perms
    assert shot_draws(LABELS, [1, 2, 3], seed=8).perms != a.perms
    # draws differ from each other, class by class
    for c in (1, 2):
        assert len({tuple(perm[c]) for perm in a}) == len(a)
    # draw d is the same however many draws are asked for
    assert shot_draws(LABELS, [1, 2, 3], draws=2, seed=7).perms == a.perms[:2]


def test_independent_of_shots_order_and_class_order():
    ref = shot_draws(LABELS, [1, 2, 3], shots=(1, 5, 20), seed=3)
    assert shot_draws(LABELS, [3, 1, 2], shots=(20, 1, 5), seed=3).perms == ref.perms
    only_two = shot_draws(LABELS, [2], seed=3)
    assert [perm[2] for perm in only_two] == [perm[2] for perm in ref]


def test_take_orders_classes_and_checks_n():
    perm = {5: [9, 8, 7], 2: [1, 0]}
    assert take(perm, 2) == [1, 0, 9, 8]
    assert take(perm, 10) == [1, 0, 9, 8, 7]
    with pytest.raises(ValueError, match="n must be"):
        take(perm, 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="shots"):
        shot_draws(LABELS, [1], shots=(0, 1))
    with pytest.raises(ValueError, match="shots"):
        shot_draws(LABELS, [1], shots=())
    with pytest.raises(ValueError, match="draws"):
        shot_draws(LABELS, [1], draws=0)
    with pytest.raises(ValueError, match="seed"):
        shot_draws(LABELS, [1], seed=-1)


def test_refuses_a_test_split():
    test = image_set(LABELS, 4, split="test")
    with pytest.raises(ValueError, match="'test' split"):
        shot_draws(test, [1, 2, 3])
    train = image_set(LABELS, 4, split="train")
    assert shot_draws(train, [1, 2, 3]).perms == shot_draws(LABELS, [1, 2, 3]).perms


@pytest.mark.real_data
def test_real_cub_draws_only_novel_training_images(shared_data):
    train = read_cub(shared_data, "train")
    test = read_cub(shared_data, "test")
    base, novel = base_novel_split(train, "cub")
    assert novel and all(c >= 100 for c in novel)
    draws = shot_draws(train, novel, draws=5, seed=0)
    counts = Counter(train.labels)
    assert draws.short == {c: counts[c] for c in novel if counts[c] < 20}
    test_paths = set(test.paths)
    for d in range(len(draws)):
        for n in (1, 2, 5, 10, 20):
            chosen = draws.take(d, n)
            assert len(chosen) == sum(min(n, counts[c]) for c in novel)
            assert all(train.labels[i] in novel for i in chosen)
            assert not {train.paths[i] for i in chosen} & test_paths  # never a test image
    # five draws give five different 1-shot sets
    assert len({tuple(draws.take(d, 1)) for d in range(5)}) == 5
