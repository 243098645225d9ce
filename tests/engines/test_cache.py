"""The feature cache and engines: float32 engines share the entries of before, each entry
names the engine that wrote it, an inexact precision has entries of its own."""

from __future__ import annotations

import torch

from helpers import make_image
from imprinting.backbones import create_backbone
from imprinting.data import ImageSet
from imprinting.data import features as feats
from imprinting.data.features import View, cached_features


def test_float32_engines_share_entries_and_the_entry_names_its_engine(tmp_path):
    paths = [make_image(tmp_path / f"{i}.png", (40 * i, 90, 200), seed=i) for i in range(4)]
    images = ImageSet("tiny/train", paths, [0, 0, 1, 1], ["a", "b"])
    bb = create_backbone("conv4", pretrained=False)
    first = cached_features(bb, images, cache=tmp_path / "c", progress=False, engine="torch")
    assert feats.last_engine.startswith("torch float32")
    entries = list((tmp_path / "c" / "features").iterdir())
    again = cached_features(bb, images, cache=tmp_path / "c", progress=False, engine="onnxruntime")
    assert torch.equal(first, again) and list((tmp_path / "c" / "features").iterdir()) == entries
    assert feats.last_engine == "torch float32"  # read from the entry: who computed these features
    key = feats.cache_key(bb, bb.preprocess, images, View())
    assert key == feats.cache_key(bb, bb.preprocess, images, View(), None)  # the key of before engines
    assert key != feats.cache_key(bb, bb.preprocess, images, View(), "openvino-bfloat16")
    bf16 = cached_features(bb, images, cache=tmp_path / "c", progress=False, engine="torch", precision="bfloat16")
    assert len(list((tmp_path / "c" / "features").iterdir())) == 2 and feats.last_engine.startswith("torch bfloat16")
    assert torch.nn.functional.cosine_similarity(bf16, first).min() > 0.98
