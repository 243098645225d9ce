"""End-to-end fine-tuning (the whole backbone trains) against the frozen-backbone methods,
on the same episodes and at the same image size: `imprint reproduce e2e`. The paper's
fine-tuning (Qi, Brown and Lowe, CVPR 2018, Sec. 3.3) with the backbone included.

The base model (FC + cosine classifier) is trained on the cached features of the frozen
backbone, as for Tables 1 and 2; end-to-end fine-tuning then starts from it with the
backbone's ImageNet weights, with the paper's optimizer for ``--epochs`` epochs, on random
crops + flips of the images held in memory (``data.training_square``: the centre square of
the image resized as for testing; decoded once and cached like features, as float32: about
2.3 GB for CUB and 3.2 GB for Flowers-102 at 160 px). ``--curves`` evaluates after every
epoch (Figures 3 and 4; costs a pass over the test images per epoch).
"""

from __future__ import annotations

import time

from imprinting.experiments.base import Experiment, Plan, option

RECIPE = "RMSProp, lr 1e-4 backbone / 1e-3 FC and classifier, batch 64, novel classes oversampled"


def plan(setup, o) -> Plan:
    """Imprinting, Rand+FT and Imprinting+FT on frozen features (20 epochs), then Rand+FT and
    Imprinting+FT end to end."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.experiments.data import cached_pixels, check_memory, training_square
    from imprinting.experiments.runner import timed_base, train_config

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import Finetune, Imprinting, ImprintInit, RandomInit
    from imprinting.methods.finetune_e2e import EndToEndFinetune

    data, backbone = setup.data, setup.backbone
    image_size = o.image_size or backbone.preprocess.image_size
    t0 = time.perf_counter()
    pre = backbone.preprocess.at_size(image_size)
    square = training_square(pre)
    check_memory(len(data.train) + len(data.test), square)
    train_px = cached_pixels(data.train, square, o.cache)
    test_px = cached_pixels(data.test, square, o.cache)
    seconds_pixels = round(time.perf_counter() - t0, 1)
    base_cfg = train_config(20, o.seed)
    base, seconds_base = timed_base(data, o.dim, base_cfg)
    full = base.with_backbone(backbone, pre)
    e2e_cfg = train_config(o.epochs, o.seed)  # the paper's recipe: RMSProp, 1e-4 backbone, 1e-3 new layers
    methods = [Imprinting(base), Finetune(base, RandomInit(), base_cfg), Finetune(base, ImprintInit(), base_cfg)]
    methods += [EndToEndFinetune(full, train_px, test_px, init, e2e_cfg, o.curves, image_size, progress=True)
                for init in (RandomInit(), ImprintInit())]
    info = {"seconds_pixels": seconds_pixels, "seconds_base_training": seconds_base, "seconds_methods": None,
            "end_to_end": f"{o.epochs} epochs, {RECIPE}"}
    return Plan([(methods, protocol.episodes(data, o.shots, o.draws, o.seed))], info)


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.experiments.runner import write_results
    from imprinting.report.plots import plot_curves

    path = write_results(r, "end_to_end", "End-to-end fine-tuning vs frozen backbone: top-1 (%)")
    if r.options.curves:
        plot_curves(r.results, r.out, r.prov, stem="end_to_end_curves")
    return path


EXPERIMENT = Experiment(
    name="e2e",
    help="""End-to-end fine-tuning of the whole network vs the frozen-backbone methods.

    Same episodes, same image size: Imprinting, Rand+FT and Imprinting+FT on frozen
    features (20 epochs), then Rand+FT and Imprinting+FT with the whole backbone training
    (the paper's optimizer, --epochs epochs, random crops + flips). The whole backbone
    trains on 2 CPU cores at 20-30 images/s at 160 px, so the defaults are small: n = 1, 5,
    20, one draw, 4 epochs.
    """,
    data="features+backbone",
    plan=plan,
    write=write,
    defaults={"image_size": 160, "augment": 2, "shots": (1, 5, 20), "draws": 1, "epochs": 4,
              "epochs_help": "End-to-end fine-tuning epochs (base training and frozen fine-tuning: 20)."},
    options=(option("--curves", is_flag=True,
                    help="Evaluate after every epoch (Figures 3 and 4; one more test pass per epoch)."),),
)
