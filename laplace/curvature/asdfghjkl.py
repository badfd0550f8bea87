"""The laplace-torch ``Asdfghjkl*`` backends, running on the maintained ``asdl`` package.

laplace-torch's ``AsdfghjklGGN``, ``AsdfghjklEF`` and ``AsdfghjklHessian`` need the
legacy ``asdfghjkl`` module, which the ``asdfghjkl`` distribution no longer ships (it
provides the module ``asdl``; laplace-torch 0.3 therefore fails with an
``ImportError``). These classes keep the names and constructor arguments and compute
with ``asdl`` instead:

* ``AsdfghjklGGN`` / ``AsdfghjklEF``: exactly :class:`~laplace.curvature.asdl.AsdlGGN`
  / :class:`~laplace.curvature.asdl.AsdlEF` (``full``, ``diag``, ``kron``).
* ``AsdfghjklHessian``: ``full``/``diag`` as :class:`~laplace.curvature.asdl.AsdlHessian`,
  plus ``eig_lowrank(data_loader)``, the top ``low_rank`` Hessian eigenpairs for a
  low-rank posterior, by ``asdl``'s deflated power iteration on Hessian-vector
  products summed over the loader.

What ``asdl`` does not offer raises ``NotImplementedError`` naming the missing piece:
a Kronecker-factored Hessian, and low-rank eigenpairs restricted to the last layer or
a subnetwork (``asdl``'s power iteration runs over all trainable parameters).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from laplace.curvature.asdl import AsdlEF, AsdlGGN, AsdlHessian, AsdlInterface
from laplace.curvature.curvature import _targets, curvature_options
from laplace.utils.data import inputs_to, split_batch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from asdl import SHAPE_FULL, HessianConfig, HessianMaker, ParamVector, power_method

#: Eigenvalues at or below this are dropped by ``eig_lowrank``.
EIG_EPS = 1e-6


class AsdfghjklInterface(AsdlInterface):
    """laplace-torch's ``AsdfghjklInterface`` on the maintained ``asdl`` package."""


class AsdfghjklGGN(AsdfghjklInterface, AsdlGGN):
    """``AsdlGGN`` under its laplace-torch legacy name (``stochastic``, ``num_samples``)."""


class AsdfghjklEF(AsdfghjklInterface, AsdlEF):
    """``AsdlEF`` under its laplace-torch legacy name."""


class AsdfghjklHessian(AsdfghjklInterface, AsdlHessian):
    """Hessian backend with low-rank eigenpairs (``eig_lowrank``) for ``LowRankLaplace``.

    Args:
        low_rank: number of leading eigenpairs ``eig_lowrank`` computes.
        max_iters: power-iteration steps per eigenpair (default ``10·low_rank``).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        last_layer: bool = False,
        subnetwork_indices: Tensor | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        low_rank: int = 10,
        max_iters: int | None = None,
    ) -> None:
        super().__init__(
            model, likelihood, last_layer=last_layer, subnetwork_indices=subnetwork_indices,
            dict_key_x=dict_key_x, dict_key_y=dict_key_y,
        )
        if low_rank < 1:
            raise ValueError("AsdfghjklHessian: low_rank must be >= 1.")
        self.low_rank = low_rank
        self.max_iters = max_iters or 10 * low_rank

    def eig_lowrank(self, data_loader: Any) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """Leading eigenpairs of the Hessian of ``factor·lossfunc`` over ``data_loader``.

        Returns:
            ``((U, λ), loss)``: eigenvectors ``U`` ``(P, k)`` and eigenvalues ``λ``
            ``(k,)`` of the ``k ≤ low_rank`` eigenpairs with ``λ > EIG_EPS`` (the
            Hessian can have negative eigenvalues; they are dropped), and the loss
            ``factor·lossfunc`` summed over the loader.
        """
        if self.last_layer or self.subnetwork_indices is not None:
            raise NotImplementedError(
                "AsdfghjklHessian.eig_lowrank: asdl's power iteration runs over all "
                "trainable parameters; it has no last-layer or subnetwork restriction."
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        device = params[0].device
        batches = []
        for batch in data_loader:
            X, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
            batches.append((inputs_to(X, device), y.to(device)))

        def hvp(vec: ParamVector) -> ParamVector:
            total = None
            for X, y in batches:
                maker = HessianMaker(self.model, HessianConfig(hessian_shapes=[SHAPE_FULL]))
                dummy = maker.setup_model_call(self.model, X)
                maker.setup_loss_call(_FlatLoss(self), dummy, y)
                with torch.enable_grad():
                    maker.forward_and_backward(hvp=True, vec=vec)
                hv = self.model.hvp
                del self.model.hvp
                total = hv if total is None else total + hv
            return total

        eigvals, eigvecs = power_method(
            hvp, self.model, top_n=self.low_rank, max_iters=self.max_iters
        )
        lam = torch.tensor(eigvals, device=device, dtype=params[0].dtype)
        keep = lam > EIG_EPS
        U = torch.stack([v.get_flatten_vector() for v in eigvecs], dim=1)[:, keep]
        with torch.no_grad():
            loss = sum(_FlatLoss(self)(self.model(X), y) for X, y in batches)
        return (U.detach(), self.factor * lam[keep]), self.factor * loss

    def kron(self, x: Any, y: Tensor, N: int, **kwargs: Any) -> Any:
        curvature_options(self, kwargs)
        raise NotImplementedError(
            "AsdfghjklHessian: asdl has no Kronecker-factored Hessian (the legacy "
            "asdfghjkl module had none either); use 'full', 'diag' or eig_lowrank."
        )


class _FlatLoss(nn.Module):
    """``lossfunc`` of an interface on outputs flattened to ``(n·m, K)``."""

    def __init__(self, iface: AsdlInterface) -> None:
        super().__init__()
        self.iface = iface

    def forward(self, f: Tensor, y: Tensor) -> Tensor:
        f = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.unsqueeze(-1)
        return self.iface.lossfunc(f, _targets(y, f, self.iface.likelihood))

from laplace.utils.reexports import reexports  # noqa: E402

__getattr__ = reexports(__name__, ("CurvatureInterface", "EFInterface", "GGNInterface", "Kron",
                                     "Likelihood"))
