"""Exact conditioning of a linearized Gaussian-likelihood Laplace posterior on new data.

For regression with noise ``σ²`` and temperature ``T`` the linearized model
``f(x; θ) ≈ f(x; θ*) + J(x)(θ − θ*)`` makes the Laplace posterior ``N(μ, Σ)`` an exact
Gaussian prior for new observations ``y = f(x; θ) + ε``, ``ε ~ N(0, σ²T·I)``. Bayes' rule
then gives, with ``v = σ²T`` and the residual ``r = y − f(x; θ*) − J(μ − θ*)``:

    Σ_new⁻¹ = Σ⁻¹ + JᵀJ / v        (the curvature gains the GGN ``JᵀJ`` of the new points)
    μ_new   = μ + Σ_new Jᵀ r / v    (the GLM step; ``θ*`` and the network stay as they are)

``condition`` returns a *new* Laplace object with this posterior (the original is left
unchanged, the network is shared); its GLM predictive mean is
``f(x; θ*) + J(x)(μ_new − θ*)``. laplace-torch's ``fit(loader, override=False)`` adds
the same curvature but keeps the mean at ``θ*`` (see docs/differences.md).
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
from torch import Tensor

from laplace.precision import PrecisionMatrix
from laplace.utils.data import Inputs
from laplace.utils.enums import Likelihood

Conditioned = TypeVar("Conditioned", bound="ConditioningMixin")


class ConditioningMixin:
    """``condition(X, y)`` for a ``ParametricLaplace`` whose storage can add rows.

    The storage supplies ``_add_rows(J)``, called on a shallow copy: add ``JᵀJ`` ``(P, P)``
    to the curvature without changing any tensor or list it shares with the original,
    reset the copy's precision cache, and return the new precision at the current
    hyperparameters.
    """

    def condition(self: Conditioned, X: Inputs, y: Tensor) -> Conditioned:
        """The posterior after observing ``y`` at ``X`` under the linearized model.

        Args:
            X: new inputs ``(n, ...)``.
            y: their targets ``(n, K)`` (or ``(n,)`` with ``K = 1``).
        Returns:
            A new Laplace object of the same class (module docstring); ``self`` is
            unchanged. ``loss`` and ``n_data`` grow as ``fit(..., override=False)`` on
            the new data would make them.
        Raises:
            ValueError: not a regression posterior, or ``y`` of the wrong shape / not
                finite. ``NotFittedError`` before ``fit``.
        """
        self._require_fit()
        if self.likelihood != Likelihood.REGRESSION:
            raise ValueError(
                f"condition needs likelihood='regression' (a Gaussian likelihood), this LA "
                f"has {str(self.likelihood)!r}."
            )
        X = self._prediction_inputs(X)
        Js, f = self.backend.jacobians(X)  # (n, K, P), (n, K)
        n, K, P = Js.shape
        y = _check_targets(y, n, K, f)
        resid = (y - self._linearized_outputs(f, Js)).reshape(-1)  # (n·K,)
        J = Js.reshape(n * K, P)
        v = 1 / self._H_factor.detach()
        new = copy.copy(self)
        precision = new._add_rows(J)
        shift = precision.solve(J.T @ resid / v)  # (P,)
        offset = shift if self._glm_offset is None else self._glm_offset + shift
        new.mean = self._embed_posterior_mean(self._posterior_mean + shift)
        new._glm_offset = offset
        new.loss = self.loss + 0.5 * (y - f).square().sum()
        new.n_data = self.n_data + n
        return new

    def _add_rows(self, J: Tensor) -> PrecisionMatrix:
        raise NotImplementedError


def _check_targets(y: Any, n: int, K: int, f: Tensor) -> Tensor:
    """``y`` as ``(n, K)`` in ``f``'s dtype and device, checked (``ValueError`` naming ``y``)."""
    if not isinstance(y, Tensor) or y.numel() != n * K or (y.ndim > 1 and y.shape != (n, K)):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y of shape {shape} must be a tensor ({n}, {K}) for the {n} inputs X.")
    y = y.to(device=f.device, dtype=f.dtype).reshape(n, K)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y must be finite.")
    return y
