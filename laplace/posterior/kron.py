"""``KronLaplace``: a Kronecker-factored (KFAC) posterior precision."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from laplace.posterior.parametric import ParametricLaplace
from laplace.precision import KronPrecision, PrecisionMatrix
from laplace.utils.data import Inputs
from laplace.utils.enums import PriorStructure
from laplace.utils.matrix import Kron, KronDecomposed


class KronLaplace(ParametricLaplace):
    """Laplace approximation with Kronecker-factored curvature blocks.

    Args:
        damping: shift each Kronecker factor by ``√δ`` instead of adding ``δ`` to their
            product (a cheaper, damped posterior; see ``KronDecomposed``).

    The raw factors summed over batches are ``H_facs`` (a ``Kron``); ``H`` is their
    eigendecomposition (a ``KronDecomposed``). The prior precision must be scalar or
    layerwise.
    """

    _key = ("all", "kron")

    def __init__(self, model: nn.Module, likelihood: str, *args: Any, damping: bool = False,
                 **kwargs: Any) -> None:
        self.damping = damping
        super().__init__(model, likelihood, *args, **kwargs)

    def _init_H(self) -> None:
        self.H_facs = Kron.init_from_model(self._params, self._device, self._dtype)
        self.H: KronDecomposed | None = None

    def _curv_closure(self, X: Inputs, y: Tensor, N: int) -> tuple[Tensor, Any]:
        return self.backend.kron(X, y, N=N, **self.asdl_fisher_kwargs)

    def _accumulate(self, H_batch: Kron) -> None:
        self.H_facs = self.H_facs + H_batch

    def _finalize_fit(self) -> None:
        self.H = self.H_facs.decompose(damping=self.damping)

    def _default_prior_structure(self) -> PriorStructure:
        return PriorStructure.LAYERWISE

    def _make_precision(self, scale: Tensor, prior: Tensor) -> PrecisionMatrix:
        return KronPrecision(self.H, scale, prior)

    @property
    def posterior_precision(self) -> KronDecomposed:
        """The posterior precision as a ``KronDecomposed`` (``bmm``, ``diag``, ``logdet``)."""
        return self._precision().matrix

    def _H_state(self) -> Any:
        return self.H_facs.kfacs

    def _load_H_state(self, state: Any) -> None:
        self.H_facs = Kron(state)
        self._finalize_fit()
