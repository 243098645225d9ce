"""Table 3 of Qi, Brown and Lowe, CVPR 2018: transfer, the final layer replaced by novel
weights only (novel-only top-1): `imprint reproduce table3`."""

from __future__ import annotations

from imprinting.experiments.base import Experiment, Plan


def plan(setup, o) -> Plan:
    """Rand-noFT, Imprinting (+Aug), the whitened head, and Rand+FT and Imprinting+FT in the
    transfer setting."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.experiments.runner import train_config

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import (
        Finetune,
        Imprinting,
        ImprintInit,
        RandomInit,
        RandomNovel,
        WhitenedMeans,
    )

    data, cfg = setup.data, train_config(o.epochs, o.seed)
    base, _ = protocol.train_base(data, o.dim, cfg)
    methods = [RandomNovel(base), Imprinting(base)] + ([Imprinting(base, True)] if data.train_aug is not None else [])
    methods.append(WhitenedMeans(seed=o.seed))
    methods += [Finetune(base, init, cfg, transfer=True) for init in (RandomInit(), ImprintInit())]
    return Plan([(methods, protocol.episodes(data, o.shots, o.draws, o.seed))])


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.experiments.runner import write_results

    return write_results(r, "table_3", "Table 3: transfer to the novel classes (novel_only column)",
                         ["method", "n", "novel_only", "draws", "seconds"])


EXPERIMENT = Experiment(
    name="table3",
    help="""Table 3: transfer, the final layer replaced by novel weights only (novel-only top-1).

    Rand+FT and Imprinting+FT fine-tune the FC layer and the novel-only final layer on the
    n novel examples alone (frozen backbone).
    """,
    data="features",
    plan=plan,
    write=write,
)
