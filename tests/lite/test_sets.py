"""Prediction sets on the device: a calibrated model's scores travel in ``classes.npz`` and
the lite runtime's sets and unknown flags equal the PyTorch model's, image for image."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from imprinting.calibration import calibrate
from imprinting.conformal import ConformalError
from imprinting.export import export_classes
from imprinting.lite import load


def test_lite_sets_equal_the_models(conv4_model, conv4_export, tiny_images, tmp_path):
    model = copy.deepcopy(conv4_model)
    paths = tiny_images["red"] + tiny_images["green"]
    model.imprint("red", tiny_images["red"])
    model.imprint("green", tiny_images["green"])
    embeddings = model.embed_images(paths)
    blue = model.embed_images(tiny_images["blue"][:2])  # the file's imprinted class: its examples too
    result = calibrate(model, torch.cat([embeddings, blue]), ["red"] * 5 + ["green"] * 5 + ["blue"] * 2,
                       target_false_reject=0.1)
    assert result.unknown_threshold is not None and model.conformal.n == 12

    folder = tmp_path / "device"
    shutil.copytree(conv4_export, folder)
    with pytest.raises(ConformalError):  # the export was made before any calibration
        load(folder).predict(tiny_images["blue"], coverage=0.9)
    export_classes(model, folder / "classes.npz")
    lite = load(folder)
    assert np.array_equal(lite.conformal.nonconformity, model.conformal.nonconformity)
    images = tiny_images["blue"] + tiny_images["red"][:2]
    same = model.embed_images(images)  # the same embeddings: the two agree to 1e-6
    for coverage in (0.5, 0.8, 0.9):
        mine = lite.predict_embeddings(same.numpy(), k=5, coverage=coverage)
        theirs = model.predict_embeddings(same, k=5, coverage=coverage)
        for a, b in zip(mine, theirs):
            assert a.set == b.set and a.unknown == b.unknown and a.classes == b.classes
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
        # from the images: each runtime's own engine (onnxruntime here), embeddings within ~1e-5
        for a, b in zip(lite.predict(images, k=5, coverage=coverage), model.predict_images(images, k=5, coverage=coverage)):
            assert a.set == b.set and a.unknown == b.unknown
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    lite.save()  # and they survive the device's own save
    assert np.array_equal(load(folder).conformal.known, model.conformal.known)
    # a class added and one removed on both sides: the scores and the threshold are recomputed
    # from the kept examples (imprinting.calibration_set) and still agree, image for image
    extra = model.embed_images(tiny_images["blue"][2:])
    model.add_class("blue again", extra)
    model.remove_class("green")
    lite = load(folder)
    lite.imprint_embeddings("blue again", extra.numpy())
    lite.remove_class("green")
    assert model.threshold_follows and lite.threshold_follows
    assert lite.unknown_threshold == pytest.approx(model.unknown_threshold, abs=1e-6)
    np.testing.assert_allclose(lite.conformal.nonconformity, model.conformal.nonconformity, atol=1e-6)
    assert not lite.conformal.stale_for(lite.classes.names)
    for a, b in zip(lite.predict_embeddings(same.numpy(), k=5, coverage=0.8),
                    model.predict_embeddings(same, k=5, coverage=0.8)):
        assert a.set == b.set and a.unknown == b.unknown
