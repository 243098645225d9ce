"""The decoding pipeline: the pixels of the eval transform, in order, in parallel; draft decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imprinting.backbones import create_backbone
from imprinting.data.images import ImageError, load_image
from imprinting.data.transforms import eval_crop, eval_transform, train_transform
from imprinting.engines import TorchEngine, pipeline

# Draft decoding (a JPEG's DCT scale 1/2 or less) changes the resized centre crop by at most
# this much, in 8-bit levels, measured on real Flowers-102 and CUB JPEGs at 96 px (resize 110):
DRAFT_MEAN_LEVELS = 4.0  # mean absolute change over every pixel and channel (measured: about 2.6)
DRAFT_P99_LEVELS = 32.0  # 99th percentile (measured: about 19); edges change most


@pytest.fixture(scope="module")
def pre():
    return create_backbone("efficientnet_lite0", pretrained=False).preprocess.at_size(96)


class Pixels(TorchEngine):
    """An 'engine' that returns its input flattened: what the pipeline feeds an engine."""

    def __init__(self):
        self.flatten = torch.nn.Flatten()  # the engine keeps a weak reference only
        super().__init__(self.flatten)


class OffCpuPixels(Pixels):
    """The same, as an engine off the CPU (a GPU's): the next batch is decoded while it runs."""

    uses_cpu = False


@pytest.mark.real_data
def test_the_pipeline_gives_the_eval_transform_bit_for_bit_in_order(pre, flowers_jpegs, cub_jpegs):
    files = flowers_jpegs + cub_jpegs
    want = torch.stack([eval_transform(pre)(load_image(p)) for p in files]).flatten(1)
    threaded = pipeline.center_features(Pixels(), files, pre, batch_size=5, workers=3)
    inline = pipeline.center_features(Pixels(), files, pre, batch_size=64, workers=0)
    overlapped = pipeline.center_features(OffCpuPixels(), files, pre, batch_size=5, workers=2)
    assert torch.equal(threaded, want) and torch.equal(inline, want) and torch.equal(overlapped, want)
    counted = []
    pipeline.center_features(Pixels(), files, pre, batch_size=5, workers=2, progress=counted.append)
    assert sum(counted) == len(files) and max(counted) <= 5


@pytest.mark.real_data
def test_seeded_views_are_train_transform_bit_for_bit(pre, flowers_jpegs, cub_jpegs):
    files = flowers_jpegs[:6] + cub_jpegs[:6]
    tf, want = train_transform(pre), []
    with torch.random.fork_rng(devices=[]):
        for i, p in enumerate(files):
            torch.manual_seed(100 + i)
            img = load_image(p)
            want.append(torch.stack([tf(img) for _ in range(3)]).flatten(1))
    for engine in (Pixels(), OffCpuPixels()):
        got = pipeline.seeded_view_features(engine, files, pre, 3, lambda i: 100 + i, batch_size=5, workers=2)
        assert torch.equal(got, torch.stack(want))


def test_an_unreadable_file_is_named(tmp_path, pre):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        pipeline.center_features(Pixels(), [bad] * 20, pre, batch_size=4, workers=2)


def _crop(pre, path, draft: bool) -> np.ndarray:
    return np.asarray(eval_crop(pre)(load_image(path, reduce_to=pre.resize_size if draft else None)), np.float32)


@pytest.mark.real_data
def test_draft_decoding_changes_the_crop_by_at_most_the_stated_levels(pre, flowers_jpegs, cub_jpegs):
    files = flowers_jpegs + cub_jpegs
    reduced = [load_image(p, reduce_to=pre.resize_size).info.get("draft_scale", 1) for p in files]
    assert sum(k > 1 for k in reduced) >= len(files) // 2  # the images are at least twice the resize
    diff = np.concatenate([np.abs(_crop(pre, p, True) - _crop(pre, p, False)).ravel() for p in files])
    assert diff.mean() <= DRAFT_MEAN_LEVELS and np.percentile(diff, 99) <= DRAFT_P99_LEVELS, \
        (diff.mean(), np.percentile(diff, 99))
    drafted = pipeline.center_features(Pixels(), files, pre, workers=1, draft=True)
    assert drafted.shape == (len(files), 3 * 96 * 96)


@pytest.mark.real_data
def test_draft_leaves_images_alone_when_no_scale_keeps_the_resize_size(flowers_jpegs):
    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocess  # resize 256
    p = next(f for f in flowers_jpegs if min(load_image(f).size) < 2 * pre.resize_size)
    assert "draft_scale" not in load_image(p, reduce_to=pre.resize_size).info
    assert np.array_equal(_crop(pre, p, True), _crop(pre, p, False))


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "conv4"])  # RGB, mean 0.5; grayscale L
def test_normalizing_by_arithmetic_gives_the_eval_transform_bit_for_bit(backbone):
    pre = create_backbone(backbone, pretrained=False).preprocess.at_size(40)
    rng = np.random.default_rng(3)
    mode = "L" if pre.in_chans == 1 else "RGB"
    shape = lambda w, h: (h, w) if mode == "L" else (h, w, 3)  # noqa: E731
    images = [Image.fromarray(rng.integers(0, 256, shape(w, h), dtype=np.uint8), mode)
              for w, h in [(40, 40), (61, 45), (45, 90), (300, 47)]]
    want = torch.stack([eval_transform(pre)(img) for img in images]).flatten(1)
    crops = pipeline.CenterCrops(pre, draft=False)
    assert crops.arithmetic  # float32 / 255, - mean, / std: torchvision's values on this machine
    got = crops.batch(len(images))
    crops(images, 0, got)
    assert torch.equal(torch.from_numpy(got).flatten(1), want)


def test_a_table_the_arithmetic_does_not_give_turns_the_arithmetic_off(monkeypatch, pre):
    real = pipeline.normalize_table
    monkeypatch.setattr(pipeline, "normalize_table", lambda p: np.nextafter(real(p), np.float32(np.inf)))
    crops = pipeline.CenterCrops(pre, draft=False)
    assert not crops.arithmetic
    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, (120, 100, 3), dtype=np.uint8))
    got = crops.batch(1)
    crops([img], 0, got)
    want = eval_transform(pre)(img).numpy()
    assert np.array_equal(got[0], np.nextafter(want, np.float32(np.inf)))  # the table's values, looked up


class ViewOfInput(Pixels):
    """An engine whose output is a view of the batch array it was given (allowed: nothing in
    the contract says an output is fresh memory)."""

    def run(self, batch):
        return torch.from_numpy(batch).flatten(1)


@pytest.mark.parametrize("workers", [0, 2])
def test_reused_batch_arrays_never_overwrite_features_already_returned(pre, workers):
    """Batches of one size share an array; an output that is a view of it is copied before
    the array is filled again, so every image keeps its own pixels."""
    rng = np.random.default_rng(6)
    images = [Image.fromarray(rng.integers(0, 256, (100 + 7 * i, 120, 3), dtype=np.uint8)) for i in range(7)]
    want = torch.stack([eval_transform(pre)(img) for img in images]).flatten(1)
    got = pipeline.center_features(ViewOfInput(), images, pre, batch_size=2, workers=workers)  # 2, 2, 2, 1
    assert torch.equal(got, want)
