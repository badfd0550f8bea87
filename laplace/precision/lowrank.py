"""Low-rank plus diagonal posterior precision (``LowRankLaplace``)."""

from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor

from laplace.precision.base import NotPositiveDefiniteError, PrecisionMatrix, not_pd_message
from laplace.precision.cancellation import guard_narrow, guard_subtraction, wide_dtype


class LowRankPrecision(PrecisionMatrix):
    """``Σ⁻¹ = s·U diag(λ) Uᵀ + diag(δ)`` for the top-``k`` eigenpairs ``(U, λ)`` of ``H``.

    With ``W = U·√(sλ)`` every operation goes through the ``k×k`` capacitance matrix
    ``C = I + Wᵀ D⁻¹ W`` (Woodbury and the matrix determinant lemma).

    Args:
        U: orthonormal eigenvectors ``(P, k)``.
        eigenvalues: ``λ`` ``(k,)`` (clamped at zero).
        scale: ``s``.
        prior: ``(1,)`` or ``(P,)``.
    """

    def __init__(self, U: Tensor, eigenvalues: Tensor, scale: Tensor, prior: Tensor) -> None:
        self.U = U
        self.n_params = U.shape[0]
        self.D = prior.expand(self.n_params)
        if not bool((self.D > 0).all()):
            raise NotPositiveDefiniteError(
                not_pd_message("low-rank", " (the prior precision must be positive)")
            )
        # √λ and √scale apart: at λ = 0 (a curvature of lower rank than k) the product's
        # square root has an infinite derivative, and 0·∞ made the σ gradient NaN
        self.W = U * (eigenvalues.clamp(min=0).sqrt() * scale**0.5)

    @cached_property
    def _DinvW(self) -> Tensor:
        return self.W / self.D.unsqueeze(-1)

    @cached_property
    def _capacitance_cholesky(self) -> Tensor:
        k = self.W.shape[1]
        C = torch.eye(k, dtype=self.W.dtype, device=self.W.device) + self.W.T @ self._DinvW
        return torch.linalg.cholesky(C)

    def logdet(self) -> Tensor:
        return self.D.log().sum() + 2 * self._capacitance_cholesky.diagonal().log().sum()

    def square_form(self, delta: Tensor) -> Tensor:
        return (delta @ self.W).square().sum(-1) + (delta.square() * self.D).sum(-1)

    def _project(self, Js: Tensor) -> Tensor:
        """``C^{-1/2} Wᵀ D⁻¹ Jᵀ`` rows: the low-rank correction of ``J Σ Jᵀ``."""
        A = Js @ self._DinvW  # (..., K, k)
        return torch.linalg.solve_triangular(
            self._capacitance_cholesky, A.transpose(-1, -2), upper=False
        ).transpose(-1, -2)

    def inv_square_form(self, Js: Tensor) -> Tensor:
        base = torch.einsum("...kp,p,...lp->...kl", Js, self.D.reciprocal(), Js)
        V = self._project(Js)
        return guard_subtraction(base, base - V @ V.transpose(-1, -2),
                                 lambda: self._symmetric_root_rows(Js))

    def _root_factors(self) -> tuple[Tensor, Tensor]:
        """``Q`` ``(P, k)`` and ``1 − (1 + S²)^{-1/2}`` ``(k,)`` from the thin SVD
        ``D^{-1/2} W = Q S Rᵀ``: ``(I + VVᵀ)^{-1/2} = I − Q diag(shrink) Qᵀ``."""
        Q, S, _ = torch.linalg.svd(self.W / self.D.sqrt().unsqueeze(-1), full_matrices=False)
        return Q, 1 - (1 + S.square()).rsqrt()

    def _symmetric_root_rows(self, Js: Tensor) -> Tensor:
        """``u (I + VVᵀ)^{-1/2}`` for ``u = J D^{-1/2}``, ``Js`` ``(..., K, P)``:
        ``J Σ Jᵀ = (uT)(uT)ᵀ``, non-negative whatever the rounding; in float64
        (``wide_dtype``) from the factors and ``Js`` as given."""
        wide = self._float64()
        Q, shrink = wide._root_factors()
        u = Js.to(Q.dtype) / wide.D.sqrt()
        return u - ((u @ Q) * shrink) @ Q.T

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``D^{-1/2}(I + VVᵀ)^{-1/2} ε`` with ``V = D^{-1/2} W`` (thin SVD of ``V``)."""
        eps = torch.randn(n_samples, self.n_params, generator=generator, dtype=self.W.dtype,
                          device=self.W.device)
        Q, shrink = self._root_factors()
        eps = eps - ((eps @ Q) * shrink) @ Q.T
        return eps / self.D.sqrt()

    def diag(self) -> Tensor:
        return self.W.square().sum(-1) + self.D

    def to_matrix(self) -> Tensor:
        return self.W @ self.W.T + torch.diag(self.D)

    def covariance_diag(self) -> Tensor:
        V = torch.linalg.solve_triangular(self._capacitance_cholesky, self._DinvW.T, upper=False)
        out = self.D.reciprocal() - V.square().sum(0)
        return guard_narrow(out, self.D.reciprocal(), out,
                            lambda: self._float64().covariance_diag(), "weights")

    def _float64(self) -> LowRankPrecision:
        """The same precision in ``wide_dtype`` (a copy of ``W``)."""
        wide = wide_dtype(self.W)
        out = LowRankPrecision.__new__(LowRankPrecision)
        out.U, out.n_params = self.U.to(wide), self.n_params
        out.D, out.W = self.D.to(wide), self.W.to(wide)
        return out

    def last_layer_variance(self, phi, n_outputs, bias, joint=False, diagonal=False):
        raise NotImplementedError("Low-rank Laplace is not offered for the last layer.")
