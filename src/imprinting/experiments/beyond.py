"""Beyond the paper: other configurations of imprinting against nearest class mean on the
raw backbone features, and the best combination found: `imprint reproduce beyond`.

The raw-feature transforms are SimpleShot's (Wang et al., 2019: centring, "CL2N") and the
Tukey power transform; the results are discussed in results/README.md.
"""

from __future__ import annotations

from dataclasses import replace

from imprinting.experiments.base import Experiment, Plan

BEST_NAME = "Best: 0.4 x Imprinting D=512 + 0.6 x raw class means (power 0.5, centred)"


def best_method(data, seed: int = 0):
    """The best low-shot configuration found (results/README.md, 'Beyond the paper'): cosines of
    imprinting on a trained 512-d embedding, averaged with those of class means on the
    power-transformed, centred raw features."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import CosineEnsemble, Imprinting, RawFeatureNCM
    from imprinting.train import TrainConfig

    base, _ = protocol.train_base(data, 512, TrainConfig(epochs=20, seed=seed))
    members = [(Imprinting(base, cosine=True), 0.4), (RawFeatureNCM(center=True, power=0.5), 0.6)]
    return CosineEnsemble(members, BEST_NAME)


def default_configs(seed: int = 0) -> dict:
    """name -> (embedding dim or None for no FC, training config, initial scale, per-class scale,
    power transform of the features (with centering) or None)."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.train import TrainConfig

    paper = TrainConfig(epochs=20, seed=seed)
    return {
        "Imprinting (paper: D=64)": (64, paper, 10.0, False, None),
        "Imprinting D=512": (512, paper, 10.0, False, None),
        "Imprinting D=512, 5 epochs": (512, replace(paper, epochs=5), 10.0, False, None),
        "Imprinting no FC": (None, paper, 10.0, False, None),
        "Imprinting no FC, per-class s": (None, paper, 10.0, True, None),
        "Imprinting no FC, power 0.5 + centered": (None, paper, 10.0, False, 0.5),
        "Imprinting no FC, power 0.5 + centered, s=20": (None, paper, 20.0, False, 0.5),
    }


def plan(setup, o, configs: dict | None = None) -> Plan:
    """Four raw-feature class means, imprinting under each of ``configs``, the best ensemble,
    and whitened class means (``imprinting.heads``)."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import Imprinting, RawFeatureNCM, WhitenedMeans
    from imprinting.methods.raw import FeatureTransform

    data = setup.data
    methods = [RawFeatureNCM(), RawFeatureNCM(center=True), RawFeatureNCM(power=0.5),
               RawFeatureNCM(center=True, power=0.5)]
    for name, (dim, cfg, scale, per_class, power) in (configs or default_configs(o.seed)).items():
        transform = FeatureTransform.fit(data, power) if power else None
        base, _ = protocol.train_base(data, dim, cfg, scale=scale, per_class_scale=per_class, transform=transform)
        m = Imprinting(base)
        m.name = name
        methods.append(m)
    methods.append(best_method(data, o.seed))
    methods.append(WhitenedMeans(seed=o.seed))  # the closed-form head (issue #13), no training
    return Plan([(methods, protocol.episodes(data, o.shots, o.draws, o.seed))])


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.experiments.runner import write_results

    return write_results(r, "beyond", "Beyond the paper: configurations vs raw-feature class means")


EXPERIMENT = Experiment(
    name="beyond",
    help="Beyond the paper: other configurations against nearest class mean on raw features.",
    data="features",
    plan=plan,
    write=write,
)
