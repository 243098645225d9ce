"""Omniglot: 964 background characters as base, 659 evaluation characters as novel; the
small ConvNet trained from scratch, then every method including end-to-end fine-tuning
(Qi, Brown and Lowe, CVPR 2018, Sec. 4.4 and Table 5): `imprint reproduce omniglot`."""

from __future__ import annotations

from dataclasses import replace

from imprinting.experiments.base import Experiment, Plan, option


def plan(setup, o) -> Plan:
    """Frozen-feature methods at ``--shots``; end-to-end fine-tuning at ``--e2e-shots`` on the
    first ``--e2e-draws`` draws of the same episodes."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.experiments.data import omniglot_config

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import (
        AllClassJoint,
        Finetune,
        Imprinting,
        ImprintInit,
        NearestNeighbour,
        RandomInit,
        RandomNovel,
        WhitenedMeans,
    )
    from imprinting.methods.finetune_e2e import EndToEndFinetune

    data, model = setup.data, setup.more["model"]
    head = model.without_backbone()
    ft = omniglot_config(o.ft_epochs, o.seed, lr=o.ft_lr)
    methods = [RandomNovel(head), Imprinting(head), NearestNeighbour(head), WhitenedMeans(seed=o.seed),
               Finetune(head, RandomInit(), ft), Finetune(head, ImprintInit(), ft), AllClassJoint(o.dim, ft)]
    e2e_cfg = replace(ft, epochs=o.ft_epochs if o.e2e_epochs is None else o.e2e_epochs)
    px = setup.more["train_px"], setup.more["test_px"]
    e2e = [EndToEndFinetune(model, *px, init, e2e_cfg) for init in (RandomInit(), ImprintInit())]
    eps = protocol.episodes(data, sorted(set(o.shots) | set(o.e2e_shots)), o.draws, o.seed)
    history = setup.more["history"]
    info = {"base_training": f"{o.epochs} epochs, final train top-1 {history[-1]['train_top1']:.1f}%",
            "fine_tuning": f"Adam lr {o.ft_lr:g}, batch 128, novel classes oversampled; {o.ft_epochs} epochs "
                           f"(frozen, AllClassJoint), {e2e_cfg.epochs} epochs (end to end)",
            "seconds_base_training": round(setup.seconds, 1), "seconds_methods": None}
    return Plan([(methods, [e for e in eps if e.n in o.shots]),
                 (e2e, [e for e in eps if e.n in o.e2e_shots and e.draw < o.e2e_draws])], info)


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.experiments.runner import write_results
    from imprinting.report.plots import plot_curves

    path = write_results(r, "tables_1_2", "Omniglot: top-1 (%) on novel and all classes")
    plot_curves(r.results, r.out, r.prov)
    return path


EXPERIMENT = Experiment(
    name="omniglot",
    help="""Omniglot: 964 background characters as base, 659 evaluation characters as novel.

    The small ConvNet is trained from scratch on the base characters; then every method,
    including end-to-end fine-tuning of the whole network.
    """,
    data="omniglot",
    plan=plan,
    write=write,
    shared_options=False,
    options=(
        option("--data-root", type="path", default=None, envvar="IMPRINTING_DATA"),
        option("--shots", "-n", type=int, multiple=True, default=(1, 2, 5, 10), show_default=True),
        option("--draws", type=int, default=5, show_default=True),
        option("--seed", type=int, default=0, show_default=True),
        option("--epochs", type=int, default=5, show_default=True, help="Base training epochs (from scratch)."),
        option("--ft-epochs", type=int, default=3, show_default=True, help="Fine-tuning epochs."),
        option("--ft-lr", type=float, default=1e-4, show_default=True,
                help="Learning rate (Adam) of fine-tuning, frozen and end to end, and of AllClassJoint."),
        option("--e2e-shots", type=int, multiple=True, default=(1, 5), show_default=True,
                help="Shot counts for end-to-end fine-tuning (it costs minutes per episode on a CPU)."),
        option("--e2e-draws", type=int, default=1, show_default=True, help="Draws for end-to-end fine-tuning."),
        option("--e2e-epochs", type=int, default=None, help="End-to-end fine-tuning epochs (default: --ft-epochs)."),
        option("--dim", type=int, default=64, show_default=True),
        option("--cache", type="path", default=None, envvar="IMPRINTING_CACHE"),
        option("--out", type="path", default="results/omniglot", show_default=True),
        option("--limit-classes", type=int, default=None, help="Keep only the first K base and K novel characters."),
    ),
)
