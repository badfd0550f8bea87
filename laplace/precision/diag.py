"""Diagonal posterior precision (``DiagLaplace`` and its last-layer/subnet variants)."""

from __future__ import annotations

import torch
from torch import Tensor

from laplace.precision import lastlayer
from laplace.precision.base import NotPositiveDefiniteError, PrecisionMatrix, not_pd_message


class DiagPrecision(PrecisionMatrix):
    """``Σ⁻¹ = diag(s·h + δ)`` for a diagonal curvature ``h`` ``(P,)``."""

    def __init__(self, H: Tensor, scale: Tensor, prior: Tensor) -> None:
        self.H = H
        self.n_params = H.shape[0]
        self.values = scale * H + prior.expand(self.n_params)
        if not bool((self.values > 0).all()):
            raise NotPositiveDefiniteError(
                not_pd_message("diagonal", f" (smallest entry {self.values.detach().min():.3g})")
            )

    def logdet(self) -> Tensor:
        return self.values.log().sum()

    def square_form(self, delta: Tensor) -> Tensor:
        return (delta.square() * self.values).sum(-1)

    def inv_square_form(self, Js: Tensor) -> Tensor:
        return torch.einsum("nkp,p,nlp->nkl", Js, self.values.reciprocal(), Js)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(n_samples, self.n_params, generator=generator,
                          device=self.values.device, dtype=self.values.dtype)
        return eps * self.values.rsqrt()

    def diag(self) -> Tensor:
        return self.values

    def to_matrix(self) -> Tensor:
        return torch.diag(self.values)

    def covariance_diag(self) -> Tensor:
        return self.values.reciprocal()

    def last_layer_variance(self, phi, n_outputs, bias, joint=False, diagonal=False):
        return lastlayer.diag(self.values.reciprocal(), phi, n_outputs, bias, joint, diagonal)
