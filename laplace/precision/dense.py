"""Dense posterior precision (``FullLaplace`` and the full last-layer/subnet variants)."""

from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor

from laplace.precision import lastlayer
from laplace.precision.base import NotPositiveDefiniteError, PrecisionMatrix, not_pd_message


class DensePrecision(PrecisionMatrix):
    """``Σ⁻¹ = s·H + diag(δ)`` stored densely.

    Args:
        H: curvature ``(P, P)``.
        scale: ``s`` (scalar tensor).
        prior: ``δ`` as ``(1,)`` (scalar) or ``(P,)``.
        spectrum: eigenvalues of ``H`` ``(P,)`` (float64 recommended). When given and
            the prior is a scalar, ``logdet`` is ``Σ log(s·λ + δ)``, computed in the
            spectrum's dtype: no factorization per hyperparameter setting
            (marginal-likelihood tuning reuses one eigendecomposition).
    """

    def __init__(
        self, H: Tensor, scale: Tensor, prior: Tensor, spectrum: Tensor | None = None
    ) -> None:
        self.H = H
        self.scale = scale
        self.prior = prior
        self.spectrum = spectrum
        self.n_params = H.shape[0]

    def to_matrix(self) -> Tensor:
        P = self.scale * self.H
        return P + torch.diag_embed(self.prior.expand(self.n_params))

    def diag(self) -> Tensor:
        return self.scale * self.H.diagonal() + self.prior.expand(self.n_params)

    @cached_property
    def cholesky(self) -> Tensor:
        """Lower Cholesky factor ``L`` of ``Σ⁻¹ = LLᵀ``."""
        L, info = torch.linalg.cholesky_ex(self.to_matrix())
        if int(info) != 0:
            raise NotPositiveDefiniteError(
                not_pd_message("dense", f" (Cholesky failed at column {int(info)})")
            )
        return L

    def square_form(self, delta: Tensor) -> Tensor:
        quad = torch.einsum("...p,pq,...q->...", delta, self.H, delta)
        return self.scale * quad + (delta.square() * self.prior.expand(self.n_params)).sum(-1)

    def logdet(self) -> Tensor:
        if self.spectrum is not None and self.prior.numel() == 1:
            # In the spectrum's precision (float64), returned in the curvature's dtype.
            wide = self.spectrum.dtype
            eig = self.scale.to(wide) * self.spectrum + self.prior.to(wide)
            if not bool((eig > 0).all()):
                raise NotPositiveDefiniteError(
                    not_pd_message("dense", f" (smallest eigenvalue {eig.detach().min():.3g})")
                )
            return eig.log().sum().to(self.H.dtype)
        return 2 * self.cholesky.diagonal().log().sum()

    def _whiten(self, Js: Tensor) -> Tensor:
        """``L⁻¹ Jᵀ`` as ``(..., P)`` rows: ``J Σ Jᵀ = V Vᵀ``."""
        rows = Js.reshape(-1, self.n_params).T
        V = torch.linalg.solve_triangular(self.cholesky, rows, upper=False)
        return V.T.reshape(Js.shape)

    def inv_square_form(self, Js: Tensor) -> Tensor:
        V = self._whiten(Js)
        return V @ V.transpose(-1, -2)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        L = self.cholesky
        eps = torch.randn(n_samples, self.n_params, generator=generator, device=L.device,
                          dtype=L.dtype)
        return torch.linalg.solve_triangular(L.T, eps.T, upper=True).T

    def solve(self, v: Tensor) -> Tensor:
        """``Σ v`` for ``v`` ``(P,)``: ``(P,)``."""
        return torch.cholesky_solve(v.unsqueeze(-1), self.cholesky).squeeze(-1)

    @cached_property
    def _covariance(self) -> Tensor:
        return torch.cholesky_inverse(self.cholesky)

    def covariance(self) -> Tensor:
        """Dense ``Σ``: ``(P, P)``."""
        return self._covariance

    def last_layer_variance(self, phi, n_outputs, bias, joint=False, diagonal=False):
        return lastlayer.dense(self._covariance, phi, n_outputs, bias, joint, diagonal)

    def covariance_diag(self) -> Tensor:
        Linv = torch.linalg.solve_triangular(
            self.cholesky, torch.eye(self.n_params, dtype=self.H.dtype, device=self.H.device),
            upper=False,
        )
        return Linv.square().sum(0)
