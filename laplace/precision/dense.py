"""Dense posterior precision (``FullLaplace`` and the full last-layer/subnet variants)."""

from __future__ import annotations

import warnings
from functools import cached_property

import torch
from torch import Tensor

from laplace.precision import lastlayer
from laplace.precision.base import NotPositiveDefiniteError, PrecisionMatrix, not_pd_message
from laplace.precision.cancellation import wide_dtype

#: In a dtype narrower than float64, a dense factor whose condition estimate times the
#: dtype's epsilon exceeds this (the relative accuracy it could lose) is redone in float64:
#: a float32 last-layer GGN at ``sigma_noise = 1e-3`` had predictive variances 33 % off.
NARROW_CONDITION = 1e-2


def _ill_conditioned(A: Tensor, prior: Tensor) -> bool:
    """Whether ``λ_max(A) / min δ``, the condition number of ``A = s·H + diag(δ)`` for a
    positive semi-definite ``H`` (a GGN; ``λ_min(A) ≥ min δ``, with equality when ``H`` is
    rank-deficient), times ``A``'s epsilon exceeds ``NARROW_CONDITION``; ``λ_max`` by 20
    power iterations (``P²`` each, against the factor's ``P³/3``)."""
    A = A.detach()
    v = torch.ones(A.shape[-1], dtype=A.dtype, device=A.device)
    for _ in range(20):
        v = A @ v
        v = v / v.norm()
    kappa = (v @ A @ v) / prior.detach().min()
    return bool(kappa * torch.finfo(A.dtype).eps > NARROW_CONDITION)


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
        """Lower Cholesky factor ``L`` of ``Σ⁻¹ = LLᵀ``. In a dtype narrower than float64,
        where that factor fails or the precision's condition number (``_ill_conditioned``)
        exceeds ``NARROW_CONDITION`` over the dtype's epsilon, ``L`` is the float64 factor
        of the same precision (with a ``RuntimeWarning``; results come back in ``H``'s
        dtype)."""
        A = self.to_matrix()
        L, info = torch.linalg.cholesky_ex(A)
        wide = wide_dtype(self.H)
        if wide != self.H.dtype and (int(info) != 0 or _ill_conditioned(A, self.prior)):
            P = self.scale.to(wide) * self.H.to(wide)
            L, info = torch.linalg.cholesky_ex(P + torch.diag_embed(
                self.prior.to(wide).expand(self.n_params)))
            if int(info) == 0:
                warnings.warn(
                    f"The dense posterior precision is ill-conditioned for {self.H.dtype} "
                    f"(its Cholesky factor could lose more than {NARROW_CONDITION:.0%} of "
                    "the accuracy of the posterior covariance); factorised in float64, "
                    f"but the {self.H.dtype} curvature still limits the accuracy (compute "
                    "in float64, or raise sigma_noise or the prior precision).",
                    RuntimeWarning, stacklevel=4)
        if int(info) != 0:
            narrow = (f"; in {self.H.dtype} the curvature's own rounding can exceed the "
                      "prior precision: compute in float64" if wide != self.H.dtype else "")
            raise NotPositiveDefiniteError(
                not_pd_message("dense", f" (Cholesky failed at column {int(info)}{narrow})")
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
        return (2 * self.cholesky.diagonal().log().sum()).to(self.H.dtype)

    def _whiten(self, Js: Tensor) -> Tensor:
        """``L⁻¹ Jᵀ`` as ``(..., P)`` rows: ``J Σ Jᵀ = V Vᵀ``."""
        L = self.cholesky
        rows = Js.reshape(-1, self.n_params).T.to(L.dtype)
        V = torch.linalg.solve_triangular(L, rows, upper=False)
        return V.T.reshape(Js.shape).to(Js.dtype)

    def inv_square_form(self, Js: Tensor) -> Tensor:
        V = self._whiten(Js)
        return V @ V.transpose(-1, -2)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        L = self.cholesky
        eps = torch.randn(n_samples, self.n_params, generator=generator, device=L.device,
                          dtype=L.dtype)
        return torch.linalg.solve_triangular(L.T, eps.T, upper=True).T.to(self.H.dtype)

    def solve(self, v: Tensor) -> Tensor:
        """``Σ v`` for ``v`` ``(P,)``: ``(P,)``."""
        L = self.cholesky
        return torch.cholesky_solve(v.to(L.dtype).unsqueeze(-1), L).squeeze(-1).to(v.dtype)

    @cached_property
    def _covariance(self) -> Tensor:
        return torch.cholesky_inverse(self.cholesky).to(self.H.dtype)

    def covariance(self) -> Tensor:
        """Dense ``Σ``: ``(P, P)``."""
        return self._covariance

    def last_layer_variance(self, phi, n_outputs, bias, joint=False, diagonal=False):
        return lastlayer.dense(self._covariance, phi, n_outputs, bias, joint, diagonal)

    def covariance_diag(self) -> Tensor:
        L = self.cholesky
        Linv = torch.linalg.solve_triangular(
            L, torch.eye(self.n_params, dtype=L.dtype, device=L.device), upper=False)
        return Linv.square().sum(0).to(self.H.dtype)
