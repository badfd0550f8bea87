"""Evidence-weighted model averaging over a fitted family of candidates.

With ``model_averaging=True`` a ``LaplaceBNN`` with ``candidates`` predicts
with the mixture of its candidates' linearized posteriors, weighted by their posterior
model probabilities under a uniform prior over the family,

    w_k = p(y | M_k) / Σ_j p(y | M_j)       (the softmax of the Laplace evidences),

instead of with the candidate of highest evidence alone. The mixture is passed to BoTorch
as the Gaussian with its mean and covariance (moment matching, jointly over the ``q``
points and outputs): every acquisition function, analytic or Monte Carlo, and every
gradient through it keep working. Pathwise (Thompson) samples come from the mixture
itself: each component contributes its share of the paths.

Weights below ``MIN_WEIGHT`` are dropped (the rest renormalised), so that a family whose
evidence is decisive costs no more to query than one model; so is every candidate whose
evidence is over fewer observations than the model's (a large-N round that refit only
the chosen candidate, ``selection.fit_by_evidence``): evidences over different data are
not comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from lapbo.selection import CandidateScore

#: Mixture weights below this are dropped (and the rest renormalised).
MIN_WEIGHT = 1e-3


def evidence_weights(scores: Sequence[CandidateScore], n_observations: int,
                     min_weight: float = MIN_WEIGHT) -> list[float]:
    """The mixture weight of every candidate ``(K,)`` (zeros included), from the evidences
    of those refit on all ``n_observations`` rows; weights below ``min_weight`` are set to
    zero and the others renormalised to sum to one."""
    usable = [i for i, s in enumerate(scores)
              if s.n_observations == n_observations and math.isfinite(s.log_marginal_likelihood)]
    if not usable:
        return [0.0] * len(scores)
    top = max(scores[i].log_marginal_likelihood for i in usable)
    raw = {i: math.exp(scores[i].log_marginal_likelihood - top) for i in usable}
    total = sum(raw.values())
    kept = {i: r for i, r in raw.items() if r / total >= min_weight}
    total = sum(kept.values())
    return [kept.get(i, 0.0) / total for i in range(len(scores))]


def mixture_moments(weights: Sequence[float], means: Sequence[Tensor],
                    covariances: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean ``(*b, n)`` and covariance ``(*b, n, n)`` of the mixture ``Σ_k w_k N(μ_k, Σ_k)``:
    ``μ = Σ w_k μ_k`` and ``Σ = Σ w_k (Σ_k + (μ_k − μ)(μ_k − μ)ᵀ)``."""
    mean = sum(w * m for w, m in zip(weights, means))
    cov = sum(w * (c + (m - mean).unsqueeze(-1) * (m - mean).unsqueeze(-2))
              for w, m, c in zip(weights, means, covariances))
    return mean, cov


def allocate_samples(weights: Sequence[float], n_samples: int) -> list[int]:
    """Paths per component for ``n_samples`` draws from the mixture: ``⌊w_k n⌋`` each, the
    remainder to the largest fractional parts (stratified, so the counts track the
    weights exactly instead of multinomially)."""
    exact = [w * n_samples for w in weights]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda k: counts[k] - exact[k])
    for k in order[: n_samples - sum(counts)]:
        counts[k] += 1
    return counts

