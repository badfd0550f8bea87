"""``DiagLaplace``: a diagonal posterior precision."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from laplace.posterior.parametric import ParametricLaplace
from laplace.precision import DiagPrecision, PrecisionMatrix
from laplace.utils.data import Inputs


class DiagLaplace(ParametricLaplace):
    """Laplace approximation with the diagonal of the curvature."""

    _key = ("all", "diag")

    def _init_H(self) -> None:
        self.H = torch.zeros(self._posterior_dim, device=self._device, dtype=self._dtype)

    def _curv_closure(self, X: Inputs, y: Tensor, N: int) -> tuple[Tensor, Any]:
        return self.backend.diag(X, y, N=N, **self.asdl_fisher_kwargs)

    def _make_precision(self, scale: Tensor, prior: Tensor) -> PrecisionMatrix:
        return DiagPrecision(self.H, scale, self.prior_precision_diag)

    @property
    def posterior_scale(self) -> Tensor:
        """Posterior standard deviations: ``(n_params,)``."""
        return self.posterior_variance.sqrt()

    @property
    def posterior_precision(self) -> Tensor:
        """Diagonal of the posterior precision: ``(n_params,)``."""
        return self._precision().diag()
