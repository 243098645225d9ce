"""``imprint serve`` sets what it loaded aside from Python's cyclic garbage collector before it
serves: a full collection then walks only what was made since, instead of every object of
PyTorch, the engines and the web stack while every request waits for the interpreter lock
(231 ms, against 6 ms once set aside, in docs/serve.md, "Load")."""

from __future__ import annotations

import gc
import weakref

import torch
from click.testing import CliRunner

from imprinting import checkpoint
from imprinting.build import create_model
from imprinting.cli import main


class Cycle:
    def __init__(self):
        self.me = self


def test_serve_collects_then_freezes_what_it_loaded_before_it_serves(tmp_path, monkeypatch):
    import uvicorn

    torch.manual_seed(0)
    model = create_model("conv4", pretrained=False, dim=16)
    model.add_class("red", torch.randn(2, 16))
    checkpoint.save(model, tmp_path / "m.safetensors")
    seen = {}

    def run(app, **options):  # instead of serving: what the collector holds at this point
        seen["frozen"] = gc.get_freeze_count()
        seen["oldest"] = len(gc.get_objects(generation=2))
        seen["garbage"] = garbage()
        app.state.service.close()

    monkeypatch.setattr(uvicorn, "run", run)
    gc.collect()
    before = len(gc.get_objects(generation=2))
    gc.disable()  # only the command's own collection may take the cycle below
    garbage = weakref.ref(Cycle())  # unreachable, kept only by its own cycle: for the collector
    try:
        result = CliRunner().invoke(main, ["serve", str(tmp_path / "m.safetensors"),
                                           "--store", str(tmp_path / "store.sqlite")])
    finally:
        gc.enable()
        gc.unfreeze()  # the rest of the test session collects as usual
    assert result.exit_code == 0, result.output
    assert garbage() is None and seen["garbage"] is None  # collected before the freeze, not kept for ever
    assert seen["frozen"] > before > 10_000  # every object of the process set aside, the model's among them
    assert seen["oldest"] < before / 10  # a full collection now walks only what came after
