"""``FullLaplace``: a dense posterior precision over all (trainable) weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from laplace.posterior.parametric import ParametricLaplace
from laplace.precision import DensePrecision, PrecisionMatrix
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import Inputs


class FullLaplace(ParametricLaplace):
    """Laplace approximation with the full ``P × P`` curvature.

    When the backend provides square-root rows ``R`` of its curvature
    (``H = Σ RᵀR``) and there are fewer rows than parameters, they are kept so that
    the spectrum of ``H`` comes from the small Gram matrix ``RRᵀ``: marginal-likelihood
    tuning then costs one small eigendecomposition in all.
    """

    _key = ("all", "full")

    def _init_H(self) -> None:
        P = self._posterior_dim
        self.H = torch.zeros(P, P, device=self._device, dtype=self._dtype)
        self._rows: list[Tensor] | None = []
        self._spectrum: Tensor | None = None

    def _curv_closure(self, X: Inputs, y: Tensor, N: int) -> tuple[Tensor, Any]:
        sqrt_rows = getattr(self.backend, "sqrt_rows", None)
        if sqrt_rows is None:
            self._rows = None
            return self.backend.full(X, y, N=N)
        rows, loss = sqrt_rows(X, y)
        if self._rows is not None:
            self._rows.append(rows)
            if sum(r.shape[0] for r in self._rows) > self._posterior_dim:
                self._rows = None
        self.H.addmm_(rows.T, rows)  # in place: no P×P temporary per batch
        return loss, None

    def _accumulate(self, H_batch: Tensor | None) -> None:
        if H_batch is not None:
            self.H += H_batch

    def _finalize_fit(self) -> None:
        self._spectrum = None

    def _load_H_state(self, state: Any) -> None:
        self.H = state
        self._rows, self._spectrum = None, None

    def _reduce_across_processes(self) -> None:
        """Sum ``H`` and the loss; keep the square-root rows of all processes (stacked in
        rank order) while there are no more of them than parameters."""
        super()._reduce_across_processes()
        self._rows = distributed_fit.concat_rows(self._rows, self._posterior_dim, self.H)

    @property
    def spectrum(self) -> Tensor:
        """Eigenvalues of ``H`` ``(P,)`` in float64 (computed once per fit).

        Always in float64: a float32 eigendecomposition has absolute errors of order
        ``1e-7·λ_max`` in every eigenvalue, which shifts ``log det`` (and the tuned
        prior) far more than a Cholesky factorization does; in float64 the spectrum is
        as accurate as the float32 curvature it comes from.
        """
        if self._spectrum is None:
            if self._rows:
                R = torch.cat(self._rows).to(torch.float64)
                lam = torch.linalg.eigvalsh(R @ R.T).clamp(min=0)
                pad = lam.new_zeros(self._posterior_dim - lam.numel())
                self._spectrum = torch.cat([pad, lam])
            else:
                self._spectrum = torch.linalg.eigvalsh(self.H.to(torch.float64))
        return self._spectrum

    def _prepare_for_tuning(self) -> None:
        self.spectrum  # noqa: B018  (computed once for all tuning steps)

    def _make_precision(self, scale: Tensor, prior: Tensor) -> PrecisionMatrix:
        spectrum = None
        if prior.numel() == 1:
            # Hyperparameters with gradients mean a tuning loop: one eigendecomposition
            # then serves every step. A one-off evaluation uses a Cholesky factor.
            tuning = prior.requires_grad or scale.requires_grad
            spectrum = self.spectrum if tuning else self._spectrum
        if prior.numel() not in (1, self._posterior_dim):
            prior = self.prior_precision_diag
        return DensePrecision(self.H, scale, prior, spectrum)

    @property
    def posterior_covariance(self) -> Tensor:
        """Dense posterior covariance ``Σ``: ``(P, P)``."""
        return self._precision().covariance()

    @property
    def posterior_scale(self) -> Tensor:
        """Lower-triangular ``S`` with ``S Sᵀ = Σ``: ``(P, P)``."""
        return torch.linalg.cholesky(self.posterior_covariance)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_rows"] = None
        return state
