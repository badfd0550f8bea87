"""``LowRankLaplace``: the top-``k`` eigenpairs of the curvature plus the prior."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace.curvature.lowrank import top_eigenpairs
from laplace.posterior import arguments  # noqa: F401
from laplace.posterior.parametric import ParametricLaplace
from laplace.posterior.transaction import restores_state_on_error
from laplace.precision import NotFittedError
from laplace.precision.lowrank import LowRankPrecision
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import dataset_size, inputs_to, split_batch


class LowRankLaplace(ParametricLaplace):
    """Laplace approximation with ``Σ⁻¹ = s·U diag(λ) Uᵀ + P₀``.

    Args:
        n_eigenvalues: the rank ``k`` (default ``min(100, n_params)``); with
            ``k = n_params`` the posterior equals ``FullLaplace``'s.

    Other arguments are those of ``BaseLaplace``.

    The eigenpairs come from GGN-vector products (ARPACK) without forming the
    curvature, or from the dense curvature when ``k`` is a large share of ``P``.
    """

    _key = ("all", "lowrank")
    _POSITIONAL = ("backend", "sigma_noise", "prior_precision", "prior_mean", "temperature",
                   "enable_backprop", "dict_key_x", "dict_key_y", "backend_kwargs")

    def __init__(self, model: nn.Module, likelihood: str, *args: Any,
                 n_eigenvalues: int | None = None, **kwargs: Any) -> None:
        if n_eigenvalues is not None:
            n_eigenvalues = checks.positive_int(n_eigenvalues, "n_eigenvalues")
        self.n_eigenvalues = n_eigenvalues
        super().__init__(model, likelihood, *args, **kwargs)
        if n_eigenvalues is not None and n_eigenvalues > self.n_params:
            raise ValueError(f"n_eigenvalues={n_eigenvalues} exceeds the model's "
                             f"{self.n_params} parameters (the rank k must lie in "
                             f"[1, {self.n_params}]).")

    def _init_H(self) -> None:
        self.H: tuple[Tensor, Tensor] | None = None

    def _require_curvature(self) -> None:
        if self.H is None:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(train_loader) (a low-rank "
                "posterior has no prior-only form before fit)."
            )

    @restores_state_on_error
    def fit(self, train_loader: Any, override: bool = True, progress_bar: bool = False,
            distributed: bool | None = None) -> None:
        """As ``ParametricLaplace.fit``. Distributed, the curvature is summed over the
        processes *before* its eigendecomposition: every curvature-vector product (or
        the dense curvature, for a large rank) is all-reduced, so each rank runs the
        same eigensolver iterations on the curvature of all the data."""
        override, progress_bar = checks.fit_flags(override, progress_bar)
        if not override:
            raise ValueError("LowRankLaplace cannot add to a previous fit (override=False).")
        self._distributed = dist = distributed_fit.resolve(distributed)
        N = distributed_fit.data_count(train_loader, dist, self._device, dataset_size)
        self.model.eval()
        self.mean = self._posterior_vector()
        with distributed_fit.collective_errors(dist, "fitting", self._device):
            self._check_batches(train_loader)
        k = self.n_eigenvalues or min(100, self.n_params)
        U, lam, loss = top_eigenpairs(
            self.backend, train_loader, k, self._device, self._dtype, self.n_params,
            N=N, reduce=distributed_fit.all_reduce_nested if dist else None,
        )
        checks.finite_loss(loss, None)
        self.H, self.loss, self.n_data = (U, lam), loss, N
        self._invalidate()

    def _check_batches(self, train_loader: Any) -> None:
        """The number of outputs from the first batch, and every batch's targets (as the
        other structures check them while they accumulate; the eigensolver sees all
        batches at once, so a NaN target in a later one made a NaN loss and evidence)."""
        index = -1
        for index, batch in enumerate(train_loader):
            X, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
            X = inputs_to(X, self._device)
            if index == 0:
                self._set_n_outputs(X)
            self._check_targets(X, y.to(self._device), index)
        if index < 0:
            raise ValueError("The data loader yielded no batches: nothing to fit on.")

    def _make_precision(self, scale: Tensor, prior: Tensor) -> LowRankPrecision:
        U, lam = self.H
        return LowRankPrecision(U, lam, scale, self.prior_precision_diag)

    @property
    def posterior_precision(self) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """``((U, s·λ), prior_precision_diag)`` as laplace-torch returns it."""
        self._require_curvature()
        U, lam = self.H
        return (U, self._H_factor * lam), self.prior_precision_diag

    @property
    def V(self) -> Tensor:
        """``P₀⁻¹ U`` ``(P, k)``: the Woodbury factor of ``Σ = P₀⁻¹ − V K⁻¹ Vᵀ``."""
        (U, _), prior_diag = self.posterior_precision
        return U / prior_diag.reshape(-1, 1)

    @property
    def Kinv(self) -> Tensor:
        """``(diag(1/(s·λ)) + Uᵀ P₀⁻¹ U)⁻¹`` ``(k, k)``, with ``V`` giving the posterior
        covariance ``Σ = P₀⁻¹ − V Kinv Vᵀ`` (laplace-torch's attributes)."""
        (U, eigvals), _ = self.posterior_precision
        return torch.linalg.inv(torch.diag(eigvals.reciprocal()) + U.T @ self.V)

    def _H_state(self) -> Any:
        return list(self.H)

    def _check_H_state(self, state: Any) -> None:
        """``U`` must be ``(n_params, k)`` and ``λ`` ``(k,)`` (any rank ``k``)."""
        U, lam = state
        if U.ndim != 2 or U.shape[0] != self.n_params or tuple(lam.shape) != (U.shape[1],):
            raise ValueError(
                f"State's low-rank curvature has shapes {tuple(U.shape)} and "
                f"{tuple(lam.shape)}, this LowRankLaplace expects ({self.n_params}, k) "
                "and (k,)."
            )

    def _load_H_state(self, state: Any) -> None:
        self.H = (state[0], state[1])


