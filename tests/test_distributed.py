"""Distributed training and feature extraction: 2 gloo processes on the CPU against one process.

One spawn of 2 ranks runs every distributed scenario (process start-up dominates on a small
machine); the single-process references are computed here, independently, with the same
inputs and the same global batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ddp_scenarios import E2E_CFG, FEATURE_CFG, WORLD, conv4, features, head, image_tensors, net, state_of, worker
from helpers import make_image
from imprinting import distributed as dd
from imprinting.train import FeatureDataset, TensorImageDataset, balanced_sampler, train

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image_folder(root: Path) -> Path:
    """11 images in 3 classes: with batches of 4, rank 0 computes 1 batch and rank 1 two."""
    colors = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}
    for k in range(11):
        name = list(colors)[k % 3]
        make_image(root / name / f"{k}.png", colors[name], seed=k)
    return root


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    folder = _image_folder(tmp / "images")
    ctx = mp.start_processes(worker, args=(_free_port(), str(tmp), str(folder)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-rank run did not finish in 240 s (a rank waiting on a collective?)")
    return tmp, folder, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_same_state(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


def test_two_ranks_train_the_single_process_model_frozen_backbone(ranks):
    _, _, out = ranks
    single = head()
    h1 = train(single, FeatureDataset(*features()), FEATURE_CFG, progress=False)
    for r in range(WORLD):
        state, hist = out[r]["feature"]
        _assert_same_state(state, state_of(single), rtol=1e-4, atol=1e-5)
        assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in h1], rel=1e-4)
        assert [h["train_top1"] for h in hist] == pytest.approx([h["train_top1"] for h in h1])
        assert [h["evaluated_on"] for h in hist] == [0, 0, 0]  # rank 0 evaluates, every rank records
    _assert_same_state(out[0]["feature"][0], out[1]["feature"][0], rtol=0, atol=0)  # ranks agree bit for bit


def test_two_ranks_train_the_single_process_model_end_to_end(ranks):
    _, _, out = ranks
    single = net()
    h1 = train(single, TensorImageDataset(*image_tensors()), E2E_CFG, progress=False)
    state, hist = out[0]["e2e"]
    _assert_same_state(state, state_of(single), rtol=1e-4, atol=1e-5)
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in h1], rel=1e-4)
    assert not torch.equal(state["embedder.backbone.1.weight"], state_of(net())["embedder.backbone.1.weight"])


def test_distributed_run_resumes_exactly_from_rank_0s_checkpoint(ranks):
    tmp, _, out = ranks
    straight, h_straight, resumed, h_resumed = out[0]["resume"]
    _assert_same_state(resumed, straight, rtol=0, atol=0)
    assert h_resumed == h_straight
    state = torch.load(tmp / "run.pt", weights_only=True)
    assert state["epoch"] == 4 and len(state["rank_rng"]) == WORLD  # each rank's view choices resume
    assert not [p for p in tmp.iterdir() if p.name.startswith(".run.pt")]  # no temporary files left


def test_sharded_extraction_writes_the_single_process_cache(ranks, tmp_path):
    from imprinting.data.features import View, cached_features
    from imprinting.data.folder import read_folder

    tmp, folder, out = ranks
    images = read_folder(folder)
    bb = conv4()
    torch.set_num_threads(1)
    for view in (View(), View(2, seed=1)):
        # the ranks run PyTorch on their devices; the single process is asked for the same engine
        single = cached_features(bb, images, view=view, cache=tmp_path, progress=False, batch_size=4, num_workers=0,
                                 engine="torch")
        assert single.shape[0] == 11 and single.shape[-1] == 64
        for r in range(WORLD):
            assert torch.equal(out[r]["features"][view.describe()], single)
    written = sorted((tmp / "cache" / "features").iterdir())
    mine = sorted((tmp_path / "features").iterdir())
    assert [p.name for p in written] == [p.name for p in mine]  # the same cache keys
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in mine]  # the same files


def test_sharded_sampler_keeps_the_stream_and_the_class_balance():
    labels = torch.tensor([0] * 300 + [1] * 20 + [2] * 4)

    def stream():
        return balanced_sampler(labels, num_samples=30_000, generator=torch.Generator().manual_seed(0))

    world, batch = 3, 64  # a batch that does not divide by the ranks
    single = list(stream())
    shares = [list(dd.ShardedBatchSampler(stream(), batch, r, world)) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # every rank runs the same number of steps
    rebuilt = []
    for t in range(len(shares[0])):
        size = min(batch, len(single) - t * batch)
        b = [None] * size
        for r in range(world):
            b[r::world] = [i for i, real in shares[r][t] if real]
        rebuilt += b
    assert rebuilt == single  # the union over ranks is the single-process stream
    for r in range(world):
        counts = Counter(labels[i].item() for step in shares[r] for i, _ in step)
        n = sum(counts.values())
        for c in range(3):
            assert abs(counts[c] / n - 1 / 3) < 0.025, (r, counts)  # each rank's share is balanced too


def test_short_last_batch_gives_every_rank_a_step():
    shares = [list(dd.ShardedBatchSampler(range(7), 4, r, 4)) for r in range(4)]
    assert shares[3] == [[(3, True)], [(4, False)]]  # padding: weight zero, but a step to take
    assert [s[1] for s in shares[:3]] == [[(4, True)], [(5, True)], [(6, True)]]


def test_shards_are_whole_batches_in_order():
    for n, align, world in ((11, 4, 2), (100, 8, 3), (3, 4, 4), (0, 4, 2)):
        parts = [dd.shard_range(n, r, world, align) for r in range(world)]
        assert [i for a, b in parts for i in range(a, b)] == list(range(n))
        assert all(a % align == 0 for a, _ in parts)


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dd.init_from_env() is False
    assert (dd.rank(), dd.world_size(), dd.is_main()) == (0, 1, True)
    assert dd.all_reduce_sum([1, 2.5]) == [1.0, 2.5] and dd.broadcast_object("x") == "x"


def test_torchrun_cli_train(tmp_path):
    """The README's command with 2 CPU processes: a trained model, rank 0's checkpoint, one
    cache file computed by both ranks with the one (rank 0's) random backbone the model keeps."""
    from safetensors.torch import load_file

    from imprinting import checkpoint
    from imprinting.backbones import Backbone
    from imprinting.data.features import compute_features
    from imprinting.data.folder import read_folder

    folder = _image_folder(tmp_path / "images")
    env = {**os.environ, "IMPRINTING_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    run = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()),
                          "-m", "imprinting.cli", "train", str(folder), str(tmp_path / "two.safetensors"),
                          "--backbone", "conv4", "--random-init", "--dim", "8", "--epochs", "2", "--batch-size", "4",
                          "--lr", "1e-2", "--augment", "0", "--checkpoint", str(tmp_path / "two.pt")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "wrote" in run.stdout and "2 epochs" in run.stdout
    model = checkpoint.load(tmp_path / "two.safetensors")
    assert model.class_names == ["blue", "green", "red"] and model.classes.counts.tolist() == [0, 0, 0]
    state = torch.load(tmp_path / "two.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["rank_rng"]) == 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0)
    (cached,) = (tmp_path / "cache" / "features").iterdir()
    pre = model.preprocess
    mine = compute_features(Backbone("conv4", model.embedder.backbone, 64, pre, False), pre, read_folder(folder),
                            num_workers=0, progress=False)
    torch.testing.assert_close(load_file(str(cached))["features"], mine, rtol=1e-4, atol=1e-5)
