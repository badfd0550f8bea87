"""``KronLaplace``: a Kronecker-factored (KFAC) posterior precision."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace.posterior import arguments
from laplace.posterior.parametric import ParametricLaplace
from laplace.posterior.transaction import restores_state_on_error
from laplace.precision import DiagPrecision, KronPrecision, NotFittedError, PrecisionMatrix
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import Inputs
from laplace.utils.matrix import Kron, KronDecomposed


class KronLaplace(ParametricLaplace):
    """Laplace approximation with Kronecker-factored curvature blocks.

    Args:
        damping: shift each Kronecker factor by ``√δ`` instead of adding ``δ`` to their
            product (a cheaper, damped posterior; see ``KronDecomposed``).

    Before ``fit``, ``H`` is an all-zero ``Kron`` shaped for the parameters and
    ``H_facs`` is ``None``; asking for the posterior raises ``NotFittedError`` (as
    laplace-torch), except for its density (``log_prob``, ``square_norm``,
    ``log_det_posterior_precision``), which is the prior's then, laplace-torch's
    fallback. After ``fit``, ``H_facs`` holds the raw factors summed over batches (a
    ``Kron``) and ``H`` their eigendecomposition (a ``KronDecomposed``). The prior
    precision must be scalar or layerwise.

    ``fit(override=False)`` adds data exactly as one fit on all the data seen would:
    KFAC sums the output factors ``B`` and averages the input factors ``A`` over the
    data set, so the previous ``A`` are rescaled by ``n_old / n`` and the new ones by
    ``n_new / n`` (laplace-torch's rule). Fitting the same data twice therefore gives
    ``kron(2B, A)``, twice the curvature of one fit.
    """

    _key = ("all", "kron")
    _POSITIONAL = arguments.insert_after(arguments.BASE, "backend", "damping")

    def __init__(self, model: nn.Module, likelihood: str, *args: Any, damping: bool = False,
                 **kwargs: Any) -> None:
        self.damping = checks.flag(damping, "damping")
        self._previous_fit: tuple[Kron, int] | None = None
        self.H_facs: Kron | None = None  # also for last-layer variants, whose H waits
        super().__init__(model, likelihood, *args, **kwargs)

    def _init_H(self) -> None:
        self.H: Kron | KronDecomposed = Kron.init_from_model(
            self._params, self._device, self._dtype
        )
        self.H_facs: Kron | None = None

    def _require_curvature(self) -> None:
        if not isinstance(self.H, KronDecomposed):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(train_loader) (a Kronecker "
                "posterior has no prior-only form before fit)."
            )

    def _density_precision(self) -> PrecisionMatrix:
        """Before ``fit``, the prior's diagonal precision: ``square_norm``, ``log_prob``
        and ``log_det_posterior_precision`` (hence the evidence) use the prior there, as
        laplace-torch's fallback; every other posterior quantity raises."""
        if isinstance(self.H, KronDecomposed) or self._posterior_dim is None:
            return self._precision()  # fitted, or NotFittedError (a last layer not yet found)
        prior = self.prior_precision_diag
        return DiagPrecision(torch.zeros_like(prior), self._H_factor, prior)

    def _curv_closure(self, X: Inputs, y: Tensor, N: int) -> tuple[Tensor, Any]:
        return self.backend.kron(X, y, N=N, **self.asdl_fisher_kwargs)

    @restores_state_on_error
    def fit(self, train_loader: Any, override: bool = True, progress_bar: bool = False,
            distributed: bool | None = None) -> None:
        """As ``ParametricLaplace.fit``; with ``override=False`` the factors of the
        previous fits are combined exactly with the new ones (see the class docstring)."""
        override, progress_bar = checks.fit_flags(override, progress_bar)
        self._previous_fit = None
        if not override and self.H_facs is not None:
            previous = (self.H_facs, self.n_data)
            self._init_H()  # accumulate the new batches from zero
            self._previous_fit = previous
        super().fit(train_loader, override=override, progress_bar=progress_bar,
                    distributed=distributed)

    def _reduce_across_processes(self) -> None:
        """Sum the raw factors factor-wise over the processes, before they are
        decomposed: every rank's ``A`` already carries the global ``1/N``, so the sums
        are the factors of one fit on all the data."""
        loss = torch.as_tensor(self.loss, device=self._device, dtype=self._dtype)
        self.loss, kfacs = distributed_fit.all_reduce_nested([loss, self.H.kfacs])
        self.H = Kron(kfacs)

    def _finalize_fit(self) -> None:
        facs = self.H
        if self._previous_fit is not None:
            old, n_old = self._previous_fit
            n = self.n_data
            facs = _scale_input_factors(old, n_old / n) + _scale_input_factors(facs, 1 - n_old / n)
            self._previous_fit = None
        self.H_facs = facs
        self.H = facs.decompose(damping=self.damping)

    def _make_precision(self, scale: Tensor, prior: Tensor) -> PrecisionMatrix:
        return KronPrecision(self.H, scale, prior)

    @property
    def posterior_precision(self) -> KronDecomposed:
        """The posterior precision as a ``KronDecomposed`` (``bmm``, ``diag``, ``logdet``)."""
        return self._precision().matrix

    def _H_state(self) -> Any:
        """The Kronecker factors (all-zero ones of the right shapes before ``fit``)."""
        return (self.H_facs if self.H_facs is not None else self.H).kfacs

    def _load_H_state(self, state: Any) -> None:
        self.H = Kron(state)
        self._previous_fit = None
        self._finalize_fit()


def _scale_input_factors(kron: Kron, factor: float) -> Kron:
    """``kron`` with the input factor ``A`` of every ``[B, A]`` block times ``factor``
    (``A`` carries the ``1/N`` of the data-set average)."""
    return Kron([[F[0], F[1] * factor] if len(F) == 2 else list(F) for F in kron.kfacs])
