"""Flowers-102's published category names in the reader."""

from imprinting.data.flowers import CLASS_NAMES, read_flowers102
from imprinting.serve.validation import check_class_name


def test_the_published_names_in_label_order():
    assert len(CLASS_NAMES) == 102 and len(set(CLASS_NAMES)) == 102
    # spot checks against the Oxford VGG category list (class id -> name)
    for class_id, name in {1: "pink primrose", 2: "hard-leaved pocket orchid", 12: "colt's foot", 50: "common dandelion",
                           54: "sunflower", 60: "pink-yellow dahlia", 74: "rose", 88: "cyclamen", 102: "blackberry lily"}.items():
        assert CLASS_NAMES[class_id - 1] == name
    for name in CLASS_NAMES:  # usable as service class names as they are
        assert check_class_name(name) == name


def test_the_reader_uses_them(shared_data):
    images = read_flowers102(shared_data, "train", download=False)
    assert images.class_names == list(CLASS_NAMES)
    assert sorted(set(images.labels)) == list(range(102))
