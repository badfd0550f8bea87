"""Evidence-weighted model averaging over a fitted family of candidates.

With ``model_averaging=True`` a ``LaplaceBNN`` with ``candidates`` predicts
with the mixture of its candidates' linearized posteriors, weighted by their posterior
model probabilities under a uniform prior over the family,

    w_k = p(y | M_k) / Σ_j p(y | M_j)       (the softmax of the Laplace evidences),

instead of with the candidate of highest evidence alone. The mixture is passed to BoTorch
as a ``MixturePosterior``: a ``GPyTorchPosterior`` whose Gaussian has the mixture's mean
and covariance (jointly over the ``q`` points and outputs: what analytic acquisition
functions and ``mean``/``variance`` see) and whose samples come from the mixture itself
(what Monte Carlo acquisition functions and fantasies see): every acquisition function
and every gradient through it keep working. Pathwise (Thompson) samples also come from
the mixture: each component contributes its share of the paths.

Weights below ``MIN_WEIGHT`` are dropped (the rest renormalised), so that a family whose
evidence is decisive costs no more to query than one model; so is every candidate whose
evidence is over fewer observations than the model's (a large-N round that refit only
the chosen candidate, ``selection.fit_by_evidence``): evidences over different data are
not comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from linear_operator.operators import DenseLinearOperator
from torch import Tensor

#: Mixture weights below this are dropped (and the rest renormalised).
MIN_WEIGHT = 1e-3


def evidence_weights(evidences: Sequence[float], rows: Sequence[int], n_observations: int,
                     min_weight: float = MIN_WEIGHT) -> list[float]:
    """The mixture weight of every candidate ``(K,)`` (zeros included), from the
    ``evidences`` of those whose evidence is over all ``n_observations`` rows (``rows``:
    the rows of each one's evidence); weights below ``min_weight`` (in ``[0, 1)``) are set
    to zero and the others renormalised to sum to one. The candidates of highest evidence
    are always kept, whatever ``min_weight``."""
    if isinstance(min_weight, bool) or not isinstance(min_weight, (int, float)) \
            or not 0 <= min_weight < 1:
        raise ValueError(f"min_weight must be a number in [0, 1), not {min_weight!r}.")
    usable = [i for i, (e, r) in enumerate(zip(evidences, rows))
              if r == n_observations and math.isfinite(e)]
    if not usable:
        return [0.0] * len(evidences)
    top = max(evidences[i] for i in usable)
    raw = {i: math.exp(evidences[i] - top) for i in usable}
    total = sum(raw.values())
    kept = {i: r for i, r in raw.items() if r / total >= min_weight or r == 1.0}
    total = sum(kept.values())
    return [kept.get(i, 0.0) / total for i in range(len(evidences))]


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



class MixturePosterior(GPyTorchPosterior):
    """The mixture ``Σ_k w_k p_k`` of Gaussian posteriors over the same points.

    ``distribution`` is the Gaussian with the mixture's mean and covariance, so
    ``mean``, ``variance``, analytic acquisition functions and BoTorch's choice of
    sampler see a ``GPyTorchPosterior``; ``rsample_from_base_samples`` returns samples
    of the mixture itself: of the ``S`` samples, the ``k``-th block of
    ``allocate_samples(w, S)`` comes from component ``k``, all from the same base
    samples (so Monte Carlo acquisition values are ``Σ_k (n_k / S)`` times those of the
    components, smooth in the inputs).

    Args:
        components: ``GPyTorchPosterior`` s of one shape (original outcome scale).
        weights: their mixture weights, summing to one.
    """

    def __init__(self, components: Sequence[GPyTorchPosterior], weights: Sequence[float]
                 ) -> None:
        if any(not isinstance(c, GPyTorchPosterior) for c in components):
            kind = next(type(c).__name__ for c in components
                        if not isinstance(c, GPyTorchPosterior))
            raise UnsupportedError(
                f"model averaging needs Gaussian component posteriors, got a {kind}: a "
                "non-affine outcome transform (e.g. Log, Power, Bilog) or a "
                "posterior_transform makes each component's posterior non-Gaussian. Use "
                "model_averaging=False with such a transform.")
        dists = [c.distribution for c in components]
        mean, cov = mixture_moments(weights, [d.mean.reshape(*d.batch_shape, -1) for d in dists],
                                    [d.covariance_matrix for d in dists])
        if isinstance(dists[0], MultitaskMultivariateNormal):
            mvn: MultivariateNormal = MultitaskMultivariateNormal(
                mean.reshape(dists[0].mean.shape), DenseLinearOperator(cov), interleaved=True)
        else:
            mvn = MultivariateNormal(mean, DenseLinearOperator(cov))
        super().__init__(mvn)
        self.components = list(components)
        self.weights = list(weights)

    def rsample_from_base_samples(self, sample_shape: torch.Size, base_samples: Tensor
                                  ) -> Tensor:
        """Mixture samples ``sample_shape × (*b, q, m)`` from base samples of shape
        ``sample_shape × base_sample_shape`` (as ``GPyTorchPosterior``)."""
        parts = torch.stack([c.rsample_from_base_samples(sample_shape, base_samples)
                             for c in self.components])  # (K, *sample_shape, *b, q, m)
        n = sample_shape.numel()
        counts = torch.tensor(allocate_samples(self.weights, n), device=parts.device)
        which = torch.repeat_interleave(torch.arange(len(counts), device=parts.device), counts)
        flat = parts.reshape(len(counts), n, *parts.shape[1 + len(sample_shape):])
        return flat[which, torch.arange(n, device=parts.device)].reshape(parts.shape[1:])

    def rsample(self, sample_shape: torch.Size | None = None) -> Tensor:
        """Mixture samples ``sample_shape × (*b, q, m)`` (default one sample)."""
        sample_shape = torch.Size([1]) if sample_shape is None else torch.Size(sample_shape)
        base = torch.randn(sample_shape + self.base_sample_shape, dtype=self.dtype,
                           device=self.device)
        return self.rsample_from_base_samples(sample_shape, base)
