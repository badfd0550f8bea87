"""Curvlinops adapters: ``CurvlinopsGGN``, ``CurvlinopsEF`` and ``CurvlinopsHessian``.

What Curvlinops computes here:

* ``kron``: :class:`curvlinops.KFACLinearOperator` (``type-2`` exact GGN factors,
  ``mc`` with ``stochastic=True``, ``empirical`` for the EF), read out as raw factors
  ``[B, A]`` / ``[B]`` in the native convention (``A = Σ a aᵀ / (N·positions)``,
  KFAC-"expand" for ``nn.Conv2d``; ``kfac_approx="reduce"`` can be passed through
  ``asdl_fisher_kwargs``). Only ``kron(B, A)`` is convention-free: the scalar
  ``factor`` is split as ``√factor`` on each factor.
* ``CurvlinopsHessian.full``: the exact Hessian of ``factor·lossfunc`` from
  :class:`curvlinops.HessianLinearOperator` applied to identity columns (in chunks).

Everything else is inherited from the native interfaces, which are faster than
building a dense matrix from ``P`` matrix-vector products: per-sample Jacobians for
prediction, the GGN ``full``/``diag``/``sqrt_rows`` from ``Sₙ Jₙ``, and the EF from
per-sample gradients (which, unlike laplace-torch 0.3's Curvlinops EF, is correct on
the last layer: its ``diag`` is never zero there).

The Hessian can be indefinite away from an exact minimum. ``CurvlinopsHessian``
returns it unchanged; the posterior precision classes then raise
``laplace.precision.NotPositiveDefiniteError`` (log-determinant, predictive, sampling)
whenever ``H/σ² + prior`` is not positive definite, so no marginal likelihood is
silently NaN. Raise the prior precision or use a GGN backend in that case.
``CurvlinopsHessian`` has no ``diag`` and no ``kron``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from laplace.curvature.curvature import (
    CurvatureInterface,
    EFInterface,
    GGNInterface,
    _targets,
    curvature_options,
)
from laplace.curvature.layers import unsupported_layer
from laplace.utils.data import Inputs, batch_size
from laplace.utils.enums import Likelihood
from laplace.utils.matrix import Kron

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation inside imports
    from curvlinops import FisherType, HessianLinearOperator, KFACLinearOperator

#: Columns of the identity multiplied at once by the Hessian operator.
HESSIAN_CHUNK = 256


class CurvlinopsInterface(CurvatureInterface):
    """Curvature through Curvlinops linear operators (see the module docstring).

    Args:
        model, likelihood, last_layer, subnetwork_indices, dict_key_x, dict_key_y:
            as for :class:`~laplace.curvature.curvature.CurvatureInterface`.
    """

    _kfac_fisher_type: str | None = None

    # ------------------------------------------------------------------ helpers
    def _batch_size_fn(self, X: Inputs) -> int:
        return batch_size(X, self.dict_key_x)

    def _model_func(self) -> nn.Module:
        """The model as Curvlinops sees it: class dimension second for cross-entropy.

        Curvlinops (like ``CrossEntropyLoss``) reads outputs ``(n, K, ...)``; ours
        are ``(n, ..., K)``. Moving the last axis is a no-op for ``(n, K)`` outputs.
        """
        if self.likelihood == Likelihood.REGRESSION:
            return self.model
        return _ClassDimSecond(self.model)

    def _loss_and_targets(self, x: Inputs, y: Tensor) -> tuple[Tensor, Tensor]:
        """``lossfunc`` of one batch (no graph) and ``y`` shaped like the outputs
        (regression) or like the outputs without their class axis (classification)."""
        with torch.no_grad():
            out = self.model(x)
        if out.ndim < 2:
            raise ValueError(
                f"{type(self).__name__}: Curvlinops needs model outputs of shape "
                f"(n, ..., K); got shape {tuple(out.shape)}."
            )
        f = out.reshape(-1, out.shape[-1])
        loss = self.lossfunc(f, _targets(y, f, self.likelihood))
        shape = out.shape if self.likelihood == Likelihood.REGRESSION else out.shape[:-1]
        return loss.detach(), y.reshape(shape)

    def _kfac_kwargs(self, mc_samples: int) -> dict[str, Any]:
        return {}

    # --------------------------------------------------------------------- kron
    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        """Loss and KFAC factors of one batch from :class:`curvlinops.KFACLinearOperator`.

        ``kwargs`` may hold ``kfac_approx`` (``"expand"``, the default, or
        ``"reduce"``) and, with ``stochastic=True``, ``mc_samples``; other keywords
        raise ``ValueError`` (see ``curvature_options``).
        """
        mc, extra = curvature_options(self, kwargs, extra=("kfac_approx",))
        if self._kfac_fisher_type is None:
            raise NotImplementedError(
                f"{type(self).__name__}: Curvlinops has no Kronecker-factored "
                "(KFAC) approximation of the Hessian; use hessian_structure='full', "
                "or CurvlinopsGGN / CurvlinopsEF for 'kron'."
            )
        if self.subnetwork_indices is not None:
            raise ValueError(
                f"{type(self).__name__}: a Kronecker-factored curvature cannot be "
                "restricted to subnetwork indices; use 'full' or 'diag'."
            )
        _check_kfac_modules(self)
        n = self._batch_size_fn(x)
        loss, targets = self._loss_and_targets(x, y)
        linop = KFACLinearOperator(
            self._model_func(), self.lossfunc, self.params, [(x, targets)],
            check_deterministic=False, fisher_type=self._kfac_fisher_type,
            kfac_approx=extra.get("kfac_approx", "expand"), num_data=n,
            batch_size_fn=self._batch_size_fn if isinstance(x, Mapping) else None,
            **self._kfac_kwargs(mc),
        )
        linop.compute_kronecker_factors()
        kfacs = _kron_factors(linop, self.params)
        # Curvlinops averages A over this batch (n); laplace-torch sums batches of a
        # data set of size N, so A takes n / N, and the curvature the loss factor.
        scale = self.factor**0.5
        kfacs = [
            [F[0] * scale, F[1] * (scale * n / N)] if len(F) == 2 else [F[0] * self.factor]
            for F in kfacs
        ]
        return self.factor * loss, Kron(kfacs)


class CurvlinopsGGN(CurvlinopsInterface, GGNInterface):
    """GGN backend using Curvlinops' KFAC; ``full``/``diag`` are the native ``Sₙ Jₙ`` path.

    Args:
        stochastic: Monte Carlo Fisher instead of the exact GGN: KFAC with sampled
            labels (Curvlinops ``fisher_type="mc"``), and ``full``/``diag`` from
            sampled output gradients ``gₙ`` (rows ``gₙᵀ Jₙ``) on the native Jacobians.
        num_samples: Monte Carlo samples per data point; a call's ``mc_samples``
            keyword overrides it (for ``kron`` too, as laplace-torch passes it on).
    """

    @property
    def _kfac_fisher_type(self) -> str:  # type: ignore[override]
        return FisherType.MC if self.stochastic else FisherType.TYPE2

    def _kfac_kwargs(self, mc_samples: int) -> dict[str, Any]:
        return {"mc_samples": mc_samples} if self.stochastic else {}


class CurvlinopsEF(CurvlinopsInterface, EFInterface):
    """Empirical Fisher backend using Curvlinops' KFAC (``fisher_type="empirical"``).

    ``full``/``diag`` come from native per-sample gradients.
    """

    _kfac_fisher_type = FisherType.EMPIRICAL


class CurvlinopsHessian(CurvlinopsInterface):
    """Exact Hessian of ``factor·lossfunc`` via :class:`curvlinops.HessianLinearOperator`.

    Only ``hessian_structure="full"``; may be indefinite (see the module docstring).
    """

    def full(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        curvature_options(self, kwargs)
        _check_hessian_layers(self)
        loss, targets = self._loss_and_targets(x, y)
        op = HessianLinearOperator(
            self.model, _FlatLoss(self.lossfunc, self.likelihood), self.params, [(x, targets)],
            check_deterministic=False, num_data=self._batch_size_fn(x),
            batch_size_fn=self._batch_size_fn if isinstance(x, Mapping) else None,
        )
        P = sum(p.numel() for p in self.params)
        ref = self.params[0]
        cols = (
            torch.arange(P, device=ref.device)
            if self.subnetwork_indices is None
            else self.subnetwork_indices.to(ref.device)
        )
        blocks = []
        for chunk in cols.split(HESSIAN_CHUNK):
            E = torch.zeros(P, len(chunk), device=ref.device, dtype=ref.dtype)
            E[chunk, torch.arange(len(chunk), device=ref.device)] = 1.0
            HE = op @ E
            blocks.append(HE if self.subnetwork_indices is None else HE[cols])
        H = torch.cat(blocks, dim=1)
        H = 0.5 * (H + H.T)  # symmetric up to round-off
        return self.factor * loss, self.factor * H.detach()

    def diag(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        curvature_options(self, kwargs)
        raise NotImplementedError(
            "CurvlinopsHessian: Curvlinops computes no exact Hessian diagonal (only "
            "stochastic estimates); use hessian_structure='full', AsdlHessian for "
            "'diag', or a GGN/EF backend."
        )


# ---------------------------------------------------------------------- helpers
class _ClassDimSecond(nn.Module):
    """Wrap a model so its ``(n, ..., K)`` logits come out as ``(n, K, ...)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any) -> Tensor:
        out = self.model(x)
        return out.movedim(-1, 1) if out.ndim > 2 else out


class _FlatLoss(nn.Module):
    """``lossfunc`` on outputs flattened to ``(n·m, K)`` with matching targets."""

    def __init__(self, lossfunc: nn.Module, likelihood: Likelihood) -> None:
        super().__init__()
        self.lossfunc = lossfunc
        self.likelihood = likelihood
        self.reduction = lossfunc.reduction

    def forward(self, f: Tensor, y: Tensor) -> Tensor:
        f = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.unsqueeze(-1)
        return self.lossfunc(f, _targets(y, f, self.likelihood))


def _check_hessian_layers(iface: CurvlinopsInterface) -> None:
    """Curvlinops' Hessian products are ``torch.func`` forward-over-reverse products, and
    those of ``nn.LayerNorm`` with an elementwise affine transform are wrong in the
    PyTorch releases this project runs on (2 % off an autograd double backward, and not
    symmetric): such a model is refused rather than given a wrong Hessian."""
    for name, module in iface.model.named_modules():
        if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            raise ValueError(
                f"{type(iface).__name__}: torch.func's second derivatives through "
                f"nn.LayerNorm with elementwise_affine=True (module {name!r}) are wrong "
                f"in torch {torch.__version__}; use AsdlHessian, or a GGN backend.")


def _check_kfac_modules(iface: CurvlinopsInterface) -> None:
    """Curvlinops' KFAC factors ``nn.Linear`` and ``nn.Conv2d`` layers only (zero
    padding, each parameter in one module)."""
    problem = unsupported_layer(iface.model, iface.params)
    if problem:
        raise ValueError(f"{type(iface).__name__}: Curvlinops' KFAC is wrong here: "
                         f"{problem}. Use 'full' or 'diag'.")
    wanted = {id(p) for p in iface.params}
    for name, module in iface.model.named_modules():
        owns = any(id(p) in wanted for p in module.parameters(recurse=False))
        if owns and not isinstance(module, KFACLinearOperator._SUPPORTED_MODULES):
            raise ValueError(
                f"{type(iface).__name__}: Curvlinops' KFAC supports nn.Linear and "
                f"nn.Conv2d only; module {name!r} ({type(module).__name__}) has "
                "trainable parameters. Use 'full' or 'diag', or freeze that module."
            )


def _kron_factors(linop: KFACLinearOperator, params: list[nn.Parameter]) -> list[list[Tensor]]:
    """``[B, A]`` per weight and ``[B]`` per bias, in the order of ``params``."""
    found: dict[int, list[Tensor]] = {}
    for mod_name, positions in linop._mapping.items():
        B = linop._gradient_covariances[mod_name]
        for p_name, pos in positions.items():
            if p_name == "weight":
                found[pos] = [B, linop._input_covariances[mod_name]]
            else:
                found[pos] = [B]
    return [found[i] for i in range(len(params))]
