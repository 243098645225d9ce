"""`imprint reproduce` end to end on a tiny subset of each real data set: one test (at
least) per experiment of the registry."""

import json

import pytest
import torch
from click.testing import CliRunner

from experiments_fixtures import png_size
from imprinting.cli import main
from imprinting.experiments import REGISTRY

# The experiments the tests below (and test_transfer.py) run: a new experiment needs a test.
TESTED = {"tables", "table3", "fig5", "fig6", "fig7", "beyond", "e2e", "omniglot", "transfer"}


def test_every_experiment_of_the_registry_has_a_command_and_a_test():
    from imprinting.cli.reproduce import reproduce, transfer

    assert set(REGISTRY) == TESTED
    assert set(reproduce.commands) == TESTED - {"transfer"} and transfer.name == "transfer"

TINY = ["--limit-classes", "3", "--image-size", "64", "--augment", "2", "-n", "1", "-n", "2", "--draws", "2",
        "--epochs", "2"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


WHITENED = "WhitenedMeans (chosen on training data)"  # the closed-form head (issue #13)


def _rows(path):
    doc = json.loads(path.read_text())
    assert doc["provenance"]["command"].startswith("imprint reproduce ")
    assert {"date", "machine", "seed", "data"} <= set(doc["provenance"])
    return doc["rows"]


@pytest.mark.parametrize("dataset", ["cub", "flowers102"])
def test_tables_on_a_tiny_subset(shared_data, tmp_path, dataset):
    out = tmp_path / dataset
    run("reproduce", "tables", "--dataset", dataset, "--data-root", shared_data, "--out", out, *TINY)
    rows = _rows(out / "tables_1_2.json")
    methods = {r["method"] for r in rows}
    assert methods == {"Rand-noFT", "Imprinting", "Imprinting+Aug", "Rand+FT", "Imprinting+FT", "AllClassJoint",
                       WHITENED}
    assert {r["n"] for r in rows} == {1, 2} and all(r["draws"] == 2 for r in rows)
    assert (out / "tables_1_2.md").read_text().startswith("# Tables 1 and 2")
    assert (out / "tables_1_2.csv").exists() and png_size(out / "figures_3_4.png") == (1210, 440)
    imp = {r["n"]: r for r in _rows(out / "tables_1_2_full.json") if r["method"] == "Imprinting"}
    rand = {r["n"]: r for r in _rows(out / "tables_1_2_full.json") if r["method"] == "Rand-noFT"}
    assert imp[2]["novel_mean"] > rand[2]["novel_mean"]


def test_figures_and_table3_on_a_tiny_cub_subset(shared_data, tmp_path):
    out = tmp_path / "cub"
    run("reproduce", "table3", "--data-root", shared_data, "--out", out, *TINY)
    assert {r["method"] for r in _rows(out / "table_3.json")} == {"Rand-noFT", "Imprinting", "Imprinting+Aug",
                                                                  "Rand+FT", "Imprinting+FT", WHITENED}
    run("reproduce", "fig6", "--data-root", shared_data, "--out", out, *TINY)
    assert {r["method"] for r in _rows(out / "figure_6.json")} == {"Imprinting", "NearestNeighbour", "Lifted-Avg",
                                                                   "Lifted-NN"}
    assert png_size(out / "figure_6.png") == (660, 440)
    run("reproduce", "fig7", "--data-root", shared_data, "--out", out, "--dims", "16", "--dims", "32", *TINY)
    assert len(_rows(out / "figure_7.json")) == 2 * 2 * 2 and png_size(out / "figure_7.png") == (1100, 440)
    run("reproduce", "beyond", "--data-root", shared_data, "--out", out, *TINY)
    methods = {r["method"] for r in _rows(out / "beyond.json")}
    assert "RawFeatureNCM" in methods and "WhitenedMeans (chosen on training data)" in methods


def test_omniglot_on_a_tiny_subset(shared_data, tmp_path):
    out = tmp_path / "omniglot"
    run("reproduce", "omniglot", "--data-root", shared_data, "--out", out, "--limit-classes", "4", "-n", "1",
        "--draws", "1", "--epochs", "2", "--ft-epochs", "1", "--e2e-shots", "1")
    rows = _rows(out / "tables_1_2.json")
    assert {"Imprinting+FT (end to end)", WHITENED} <= {r["method"] for r in rows}
    assert len(rows) == 9


def test_figure_5_grid_on_a_tiny_cub_subset(shared_data, tmp_path):
    out = tmp_path / "cub"
    run("reproduce", "fig5", "--data-root", shared_data, "--out", out, *TINY)
    rows = _rows(out / "figure_5.json")
    assert len(rows) == 3 and rows[0]["recall_at_1"] >= rows[-1]["recall_at_1"]
    assert png_size(out / "figure_5.png") == (1360, 840)


def test_end_to_end_on_a_tiny_cub_subset(shared_data, tmp_path):
    out = tmp_path / "cub"
    run("reproduce", "e2e", "--data-root", shared_data, "--out", out, "--limit-classes", "2", "--image-size", "32",
        "-n", "1", "--epochs", "1", "--curves")
    rows = _rows(out / "end_to_end.json")
    assert [r["method"] for r in rows] == ["Imprinting", "Rand+FT", "Imprinting+FT", "Rand+FT (end to end)",
                                           "Imprinting+FT (end to end)"]
    assert all(r["n"] == 1 and r["draws"] == 1 and r["novel_std"] == 0 for r in rows)
    assert png_size(out / "end_to_end_curves.png") == (1210, 440)
    # The frozen Imprinting row, recomputed here: the same features, base model and episode.
    from imprinting import protocol
    from imprinting.experiments.data import prepare
    from imprinting.methods import Imprinting
    from imprinting.train import TrainConfig

    data = prepare("cub", shared_data, image_size=32, augment=2, limit=2, progress=False)
    base, _ = protocol.train_base(data, 64, TrainConfig(epochs=20, seed=0))
    (ep,) = protocol.episodes(data, shots=(1,), draws=1, seed=0)
    with torch.no_grad():
        acc = protocol.accuracies(Imprinting(base).fit(data, ep).scorer(data.test_feats), data)
    assert rows[0]["novel_mean"] == round(acc["novel"], 2) and rows[0]["all_mean"] == round(acc["all"], 2)


def test_with_backbone_gives_the_base_model_on_images(shared_data):
    from imprinting import protocol
    from imprinting.backbones import create_backbone
    from imprinting.experiments import data as rp

    bb = create_backbone("efficientnet_lite0", pretrained=True)
    data = rp.prepare("cub", shared_data, image_size=32, augment=0, backbone_obj=bb, limit=2, progress=False)
    base, _ = protocol.train_base(data, 16)
    full = base.with_backbone(bb)
    pixels = rp.cached_pixels(data.test, bb.preprocess.at_size(32), progress=False)
    with torch.no_grad():
        # the cached features come from the machine's fastest engine (within 1e-5 of PyTorch on
        # normalized features, imprinting.engines), and logits are s = 10 times cosines
        torch.testing.assert_close(full(pixels), base.classifier(base.embedder.forward_head(data.test_feats)),
                                   atol=5e-4, rtol=1e-4)
    assert full.embedder.backbone is not bb.module and full.class_names == base.class_names


@pytest.mark.parametrize("size", [32, 160])
def test_centre_of_the_training_square_is_the_test_time_centre_crop(shared_data, size):
    """End-to-end training keeps a square per image; its centre crop must be, to the pixel,
    what the test-time transform gives (CUB photos are not square: the long side matters)."""
    from torchvision.transforms.functional import center_crop

    from imprinting.backbones import create_backbone
    from imprinting.experiments import data as rp

    _, test, _ = rp.read_splits("cub", shared_data)
    test = test.subset(list(range(0, len(test), len(test) // 12)), f"cub-test-sample-{size}")
    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocess.at_size(size)
    square = rp.training_square(pre)
    assert square.resize_size == pre.resize_size and 0 <= square.image_size - size < pre.resize_size - size + 1
    stored = rp.cached_pixels(test, square, progress=False)
    expected = rp.cached_pixels(test, pre, progress=False)
    assert torch.equal(center_crop(stored, [size, size]), expected)


def test_end_to_end_refuses_image_sets_that_cannot_fit_in_memory(monkeypatch):
    from imprinting.backbones import Preprocess
    from imprinting.experiments import data as rp

    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}  # a 24 GiB machine
    monkeypatch.setattr(rp.os, "sysconf", lambda name: pages[name])
    rp.check_memory(1000, Preprocess(180, 183))  # 1000 x 3 x 180 x 180 x 4 B = 0.36 GiB: fine
    with pytest.raises(MemoryError, match=r"25000 images in memory at 180 px: 9\.1 GiB, x3 at peak, and this "
                                          r"machine has 24\.0 GiB"):
        rp.check_memory(25_000, Preprocess(180, 183))
