"""Figure 7 of Qi, Brown and Lowe, CVPR 2018: Imprinting and AllClassJoint at several
embedding sizes: `imprint reproduce fig7`."""

from __future__ import annotations

from imprinting.experiments.base import Experiment, Plan, option


def plan(setup, o) -> Plan:
    """A base model per embedding size D; Imprinting and AllClassJoint named "... D=<D>"."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.experiments.runner import train_config

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import AllClassJoint, Imprinting

    data, cfg = setup.data, train_config(o.epochs, o.seed)
    methods = []
    for dim in o.dims:
        base, _ = protocol.train_base(data, dim, cfg)
        imp, joint = Imprinting(base), AllClassJoint(dim, cfg)
        imp.name, joint.name = f"Imprinting D={dim}", f"AllClassJoint D={dim}"
        methods += [imp, joint]
    return Plan([(methods, protocol.episodes(data, o.shots, o.draws, o.seed))])


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.experiments.runner import write_results
    from imprinting.report.plots import plot_dims

    path = write_results(r, "figure_7", "Figure 7: embedding size")
    plot_dims(r.results, r.out, r.prov)
    return path


EXPERIMENT = Experiment(
    name="fig7",
    help="Figure 7: Imprinting and AllClassJoint at embedding sizes 64-512 (use -n 1 -n 5).",
    data="features",
    plan=plan,
    write=write,
    options=(option("--dims", type=int, multiple=True, default=(64, 128, 256, 512), show_default=True),),
)
