"""Measuring the installed engines on a backbone: exactness once, speed at each batch size.

``measure(module, preprocess)`` builds every installed engine, runs each on a check batch and
drops those whose float32 features differ from PyTorch eager's by more than ``TOLERANCE``
(max abs). Features are compared as unit-length vectors (the embeddings of a model without an
FC layer, what imprinting compares; the raw differences are recorded too: the pooled features
reach 6, where float32 rounding alone is a few 1e-6). It then times the exact ones at each
size of ``MEASURE_BATCHES`` -- the service's single pictures and small batches, and the
pipeline's batch of 32 -- because the fastest engine is not the same at every size (an engine
measured at 16 images alone was picked for batches of 32 where another was 1.3x faster).

Timing: one warm-up at every size (OpenVINO compiles a kernel set per input shape), then
``MEASURE_RUNS`` rounds; in each round every engine in turn (the first rotating) runs one
untimed image, so that the previous engine's threads have stopped, then one batch of each
size; the median of the rounds. The engines take turns rather than one after the other so
that a change of the machine's load in the middle falls on all of them (and none is timed
while another's threads still spin: onnxruntime's did by default, and slowed the engine
timed after it). The record keeps the seconds it took (``seconds``, graph export and
building included; ``timing_seconds``), once per machine, weights, input size and precision.

Records live in ``<cache>/engines/choices.json``, keyed by ``choice_key`` (machine, weights
fingerprint, input size, precision).
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone

import torch
from torch import nn
from torch.nn.functional import normalize

from imprinting.engines import graph as graphs
from imprinting.engines import runtimes
from imprinting.engines.base import Engine, EngineUnavailable
from imprinting.engines.choice import Choice
from imprinting.engines.torch_engine import TorchEngine
from imprinting.files import atomic_write
from imprinting.spec import fingerprint

TOLERANCE = 1e-5  # max abs difference to PyTorch eager of L2-normalized float32 features
MEASURE_BATCHES = (1, 4, 16, 32)  # the service's single pictures and small batches, the pipeline's 32
MEASURE_RUNS = 3
CHOICES = "choices.json"
RECORD_VERSION = 2  # 1: one batch size (16), "chosen" and "images_per_s" only


def check_batch(preprocess, n: int = max(MEASURE_BATCHES)) -> torch.Tensor:
    """A fixed batch of images with pixels uniform in [0, 1], normalized as ``preprocess`` says."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, preprocess.in_chans, preprocess.image_size, preprocess.image_size, generator=g)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def embedding_difference(features: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs difference between the L2-normalized rows of two feature batches."""
    return float((normalize(features.float(), dim=1) - normalize(reference.float(), dim=1)).abs().max())


def _rate(engine: Engine, x: torch.Tensor) -> float:
    """Images/s of one run of ``engine`` on ``x``."""
    t0 = time.perf_counter()
    engine.run(x)
    return len(x) / (time.perf_counter() - t0)


def time_engines(engines: dict[str, Engine], x: torch.Tensor, batches=MEASURE_BATCHES,
                 runs: int = MEASURE_RUNS) -> dict[int, dict[str, float]]:
    """Batch size -> engine name -> images/s: the median of ``runs`` rounds, the engines
    taking turns (see the module docstring); ``x`` holds at least ``max(batches)`` images."""
    for engine in engines.values():
        for b in batches:
            engine.run(x[:b])  # warm-up: the first run of each input shape
    samples = {b: {name: [] for name in engines} for b in batches}
    names = list(engines)
    for r in range(runs):
        for name in names[r % len(names):] + names[: r % len(names)]:
            engines[name].run(x[:1])  # untimed: the previous engine's threads have stopped spinning
            for b in batches:
                samples[b][name].append(_rate(engines[name], x[:b]))
    return {b: {name: round(statistics.median(s), 1) for name, s in by.items()} for b, by in samples.items()}


def choice_key(fp: str, shape, precision: str) -> str:
    return " | ".join([runtimes.machine_key(), fp, "x".join(map(str, shape)), precision])


def load_choices(path) -> dict:
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: measured again
        return {}
    return choices if isinstance(choices, dict) else {}


def recorded_choice(key: str, cache=None) -> tuple[dict | None, Choice | None]:
    """The record under ``key`` and its per-batch table (``None`` for a record of the
    one-batch format, which is measured again rather than trusted at every size)."""
    record = load_choices(graphs.engines_dir(cache) / CHOICES).get(key)
    if not isinstance(record, dict):
        return None, None
    return record, Choice.from_record(record)


def save_choice(key: str, record: dict, cache=None) -> None:
    path = graphs.engines_dir(cache) / CHOICES
    path.parent.mkdir(parents=True, exist_ok=True)
    choices = load_choices(path)
    choices[key] = record
    atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(choices, indent=1, sort_keys=True)))


def measure(module: nn.Module, preprocess, precision: str = "float32", fp: str | None = None, cache=None,
            batches=MEASURE_BATCHES, runs: int = MEASURE_RUNS):
    """Build, check and time every installed engine. Returns ``(engines, record)``: the built
    exact engines by name and the JSON-able record (``Choice.from_record`` reads its table)."""
    started = time.perf_counter()
    fp = fp or fingerprint(module)
    shape = (preprocess.in_chans, preprocess.image_size, preprocess.image_size)
    batches = tuple(sorted(set(batches)))
    x = check_batch(preprocess, max(batches))
    reference_engine = TorchEngine(module, "float32")
    reference = reference_engine.run(x)
    built, diffs, raw, reasons = {}, {}, {}, {}
    for name, reason in runtimes.available_engines().items():
        if reason is None and precision not in runtimes.engine_precisions(name):
            reason = f"no {precision} on this machine"
        if reason:
            reasons[name] = reason
            continue
        try:
            if name == "torch" and precision == "float32" and runtimes.torch_device(module) == reference_engine.device:
                engine, out = reference_engine, reference  # the reference itself: not run twice
            else:
                engine = runtimes.build_engine(name, module, shape, precision, fp, cache)
                out = engine.run(x)  # the check (and the warm-up at the largest size)
        except EngineUnavailable as exc:
            reasons[name] = str(exc)
            continue
        diffs[name] = embedding_difference(out, reference)
        raw[name] = float((out - reference).abs().max())
        if precision == "float32" and not diffs[name] <= TOLERANCE:
            reasons[name] = f"embeddings differ from PyTorch eager's by {diffs[name]:.2g} (max abs) > {TOLERANCE:g}"
            continue
        built[name] = engine
    timing = time.perf_counter()
    rates = time_engines(built, x, batches, runs) if built else {b: {} for b in batches}
    timing = time.perf_counter() - timing
    choice = Choice(rates)
    record = {"version": RECORD_VERSION, "chosen": choice.name_for(max(batches)),
              "chosen_by_batch": {str(b): n for b, n in choice.chosen.items()},
              "images_per_s_by_batch": {str(b): r for b, r in rates.items()},
              "embedding_max_abs_diff": diffs, "feature_max_abs_diff": raw, "not_eligible": reasons,
              "machine": runtimes.machine_key(), "fingerprint": fp[:16], "input": list(shape), "precision": precision,
              "batches": list(batches), "runs": runs,
              "seconds": round(time.perf_counter() - started, 1), "timing_seconds": round(timing, 1),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    return built, record
