"""Closed-form heads over class means (numpy only): no gradient step, one pass over the data.

A class mean is the sufficient statistic of a Gaussian class model; what the paper's head (the
normalized mean, ``s * cos``) throws away is the shared shape of the classes. ``WhitenedMeans``
keeps it: a within-class covariance S shared by all classes (from the base classes' training
features), shrunk towards its mean eigenvalue, whitens the class means (a linear discriminant,
as in LDA and FeCAM), and each class's bias is corrected for its own shot count: the mean of
n samples is too long, in the whitened norm, by tr(P S) / n on average (P the inverse of the
shrunk S), which would hand a class taught from one picture every query; ``correction`` says
how much of that excess is taken back.

Scores: ``g_c(x) = m_c' P x - (m_c' P m_c - correction * tr(P S) / n_c) / 2`` on features
mapped by ``FeatureMap`` (power transform, L2 normalization, centring on the base mean).

One file a part:

- ``means``: the feature map, the within-class scatter, ``WhitenedMeans``, class means.
- ``episodes``: simulated low-shot episodes on labelled base data and the rules that choose
  from them: ``choose`` (the shrinkage), ``novel_recall``, ``base_recall`` and
  ``episode_correction`` (the correction for the classes at hand). No test label is ever seen.
- ``rule``: that correction rule shipped with a model (``TaughtSetRule``): a sample of the
  model's own labelled rows and the simulated novel recall, so the correction follows the
  classes the model holds, class by class as they are taught.
- ``product``: ``WhitenedHead`` (the head a class table keeps) and ``fit_head``.
"""

from imprinting.heads.episodes import (  # noqa: F401
    EPISODE_CORRECTIONS,
    SimulatedEpisode,
    base_recall,
    choose,
    episode_correction,
    novel_recall,
    scored_episodes,
    simulated_episodes,
)
from imprinting.heads.means import (  # noqa: F401
    CORRECTIONS,
    SHRINKAGES,
    FeatureMap,
    WhitenedMeans,
    class_means,
    within_class_scatter,
)
from imprinting.heads.product import HEADS, WhitenedHead, fit_head  # noqa: F401
from imprinting.heads.rule import TaughtSetRule  # noqa: F401
