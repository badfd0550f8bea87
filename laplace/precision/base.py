"""The posterior precision ``Σ⁻¹ = s·H + diag(δ)`` in one storage structure.

Every Laplace variant asks the same four things of its Gaussian (``logdet``,
``J Σ Jᵀ``, ``Σ^{1/2} ε`` and, for BoTorch conditioning, low-rank updates); a
precision class answers them for one way of storing ``H``. Instances are immutable
views for one setting of the hyperparameters ``s`` (the likelihood's Hessian factor
``1/(σ²T)``) and ``δ`` (the prior precision), which may carry gradients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from laplace.utils.errors import NotFittedError, NotPositiveDefiniteError, not_pd_message

__all__ = ["NotFittedError", "NotPositiveDefiniteError", "PrecisionMatrix", "not_pd_message"]


class PrecisionMatrix(ABC):
    """Abstract posterior precision over ``P`` parameters."""

    n_params: int

    @abstractmethod
    def logdet(self) -> Tensor:
        """``log det Σ⁻¹`` (a scalar, differentiable in the hyperparameters)."""

    @abstractmethod
    def inv_square_form(self, Js: Tensor) -> Tensor:
        """``Jₙ Σ Jₙᵀ`` per point for ``Js`` ``(n, K, P)``: ``(n, K, K)``."""

    def joint_inv_square_form(self, Js: Tensor) -> Tensor:
        """``J Σ Jᵀ`` over all points and outputs: ``(n·K, n·K)``, row ``point·K + k``."""
        return self.inv_square_form(Js.reshape(1, -1, Js.shape[-1]))[0]

    @abstractmethod
    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Zero-mean draws ``Σ^{1/2} ε``: ``(n_samples, P)``."""

    def square_form(self, delta: Tensor) -> Tensor:
        """``Δᵀ Σ⁻¹ Δ`` for ``delta`` ``(..., P)``: ``(...)``."""
        return torch.einsum("...p,pq,...q->...", delta, self.to_matrix(), delta)

    @abstractmethod
    def diag(self) -> Tensor:
        """Diagonal of ``Σ⁻¹``: ``(P,)``."""

    @abstractmethod
    def to_matrix(self) -> Tensor:
        """Dense ``Σ⁻¹``: ``(P, P)``."""

    @abstractmethod
    def covariance_diag(self) -> Tensor:
        """Marginal posterior variances ``diag(Σ)``: ``(P,)``."""

    @abstractmethod
    def last_layer_variance(
        self, phi: Tensor, n_outputs: int, bias: bool, joint: bool = False,
        diagonal: bool = False,
    ) -> Tensor:
        """``J Σ Jᵀ`` for last-layer Jacobians ``[I ⊗ φᵀ, I]`` (see ``lastlayer``).

        Args:
            phi: features ``(n, D)``; ``Σ`` is over ``[vec_row(W), b]``.
        Returns:
            ``(n, K, K)``, ``(n, K)`` if ``diagonal``, ``(n·K, n·K)`` if ``joint``.
        """
