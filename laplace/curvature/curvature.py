"""Curvature interfaces: Jacobians, gradients and GGN / empirical Fisher curvature.

The interfaces compute everything natively with ``torch.func`` (per-sample Jacobians
and gradients with ``vmap``), so they are complete backends on their own; the
BackPACK, Curvlinops and ASDL adapters override what their library does better.

Conventions (shared by every backend, as in laplace-torch):

* ``factor`` is 0.5 for regression (``lossfunc`` is ``MSELoss(reduction="sum")``) and
  1 for classification (``CrossEntropyLoss(reduction="sum")``); the returned loss is
  ``factor * lossfunc``, and curvature is that of ``factor * lossfunc``.
* Outputs of shape ``(n, ..., K)`` count each leading position as a data point of the
  loss; Jacobians are ``(n, K, P)`` for plain ``(n, K)`` outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jacrev

from laplace.curvature import functional as F
from laplace.curvature.kfac import diagonal, kfac
from laplace.curvature.outputs import (
    _targets,
    features_and_outputs,
    find_last_layer,
    model_last_layer,
    output_hessian_diag,
    output_hessian_sqrt,
    output_hessian_sqrt_row,
    sampled_output_grads,
)
from laplace.curvature.samplewise import per_sample
from laplace.utils import checks
from laplace.utils.data import Inputs
from laplace.utils.enums import Likelihood, parse_option
from laplace.utils.matrix import Kron

__all__ = [
    "CurvatureInterface",
    "EFInterface",
    "GGNInterface",
    "_targets",
    "curvature_options",
    "features_and_outputs",
    "find_last_layer",
    "model_last_layer",
    "output_hessian_diag",
    "output_hessian_sqrt",
    "output_hessian_sqrt_row",
    "sampled_output_grads",
]


class CurvatureInterface:
    """Jacobians and gradients of ``model`` w.r.t. its trainable parameters.

    Args:
        model: the network; only parameters with ``requires_grad=True`` are used.
        likelihood: ``"regression"``, ``"classification"`` or ``"reward_modeling"``
            (curvature of the classification loss).
        last_layer: differentiate only the last ``nn.Linear`` layer's parameters.
        subnetwork_indices: ``(S,)`` indices into the parameter vector to keep.
        dict_key_x, dict_key_y: keys of dict-like batches.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        last_layer: bool = False,
        subnetwork_indices: Tensor | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
    ) -> None:
        self.likelihood = parse_option(Likelihood, likelihood, "likelihood")
        checks.torch_module(model)
        self.model = model
        self.last_layer = checks.flag(last_layer, "last_layer")
        self.subnetwork_indices = subnetwork_indices
        self.dict_key_x = checks.dict_key(dict_key_x, "dict_key_x")
        self.dict_key_y = checks.dict_key(dict_key_y, "dict_key_y")
        if self.likelihood == Likelihood.REGRESSION:
            self.lossfunc: nn.Module = nn.MSELoss(reduction="sum")
            self.factor = 0.5
        else:
            self.lossfunc = nn.CrossEntropyLoss(reduction="sum")
            self.factor = 1.0

    # ----------------------------------------------------------------- parameters
    @property
    def named_params(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs that curvature is taken w.r.t."""
        if self.last_layer:
            if getattr(self.model, "last_layer", None) is not None:
                prefix, layer = self.model.last_layer_param_prefix, self.model.last_layer
            else:
                name, layer = find_last_layer(self.model)
                prefix = f"{name}." if name else ""
            return [(prefix + n, p) for n, p in layer.named_parameters()]
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_params]

    def _params_dict(self, enable_backprop: bool = False) -> dict[str, Tensor]:
        """Parameters to differentiate: for a subnetwork only the tensors it touches."""
        named = self.named_params
        if self.subnetwork_indices is not None:
            keep = set(self._subnet_plan()[0])
            named = [(n, p) for n, p in named if n in keep]
        return F.detach_params(dict(named), enable_backprop)

    def _subnet_plan(self) -> tuple[list[str], Tensor]:
        """Names of the tensors holding subnetwork entries, and the entries' positions
        within the concatenation of just those tensors, in the order of
        ``subnetwork_indices`` (which need not be sorted: the posterior's entries follow
        the user's order, as in laplace-torch and the other backends)."""
        idx = self.subnetwork_indices.to(torch.long)
        names, local, grouped, offset, kept = [], [], [], 0, 0
        for name, p in self.named_params:
            inside = idx[(idx >= offset) & (idx < offset + p.numel())]
            if inside.numel():
                names.append(name)
                local.append(inside - offset + kept)
                grouped.append(inside)
                kept += p.numel()
            offset += p.numel()
        if sum(t.numel() for t in local) != idx.numel():
            raise ValueError(
                f"subnetwork_indices must lie in [0, {offset}) (the trainable parameters)."
            )
        grouped_idx = torch.cat(grouped)  # idx regrouped by parameter tensor
        order = torch.argsort(grouped_idx)
        back = order[torch.searchsorted(grouped_idx[order], idx)]  # grouped[back] == idx
        return names, torch.cat(local)[back]

    def _select(self, M: Tensor) -> Tensor:
        """Keep the subnetwork columns of a ``(..., P_touched)`` tensor."""
        if self.subnetwork_indices is None:
            return M
        return M[..., self._subnet_plan()[1].to(M.device)]

    # ------------------------------------------------------------------ jacobians
    def selected_output_jacobians(self, x: Inputs, outputs: Tensor,
                                  enable_backprop: bool = False) -> tuple[Tensor, Tensor]:
        """The Jacobians of selected outputs per input (laplace-torch's method).

        Args:
            x: inputs ``(n, ...)``.
            outputs: output indices per input, ``(n,)`` or ``(n, s)``.
        Returns:
            ``Js`` ``(n, s, P)`` (``s = 1`` for ``(n,)`` indices) and the outputs ``f``
            ``(n, K)``.
        """
        Js, f = self.jacobians(x, enable_backprop=enable_backprop)
        if not isinstance(outputs, Tensor) or outputs.dtype.is_floating_point:
            raise ValueError("outputs must be an integer tensor of output indices.")
        index = outputs[:, None] if outputs.ndim == 1 else outputs
        if index.ndim != 2 or index.shape[0] != Js.shape[0]:
            raise ValueError(f"outputs of shape {tuple(outputs.shape)} must be (n,) or (n, s) "
                             f"for {Js.shape[0]} inputs.")
        if bool((index < 0).any()) or bool((index >= Js.shape[1]).any()):
            raise ValueError(f"outputs must lie in [0, {Js.shape[1] - 1}].")
        index = index.to(Js.device, torch.long)
        return torch.gather(Js, 1, index[..., None].expand(-1, -1, Js.shape[-1])), f

    def jacobians(self, x: Inputs, enable_backprop: bool = False) -> tuple[Tensor, Tensor]:
        """Per-sample Jacobians of the outputs w.r.t. the parameters.

        Args:
            x: inputs ``(n, ...)`` or a dict-like batch.
            enable_backprop: keep the graph to ``x`` and the parameters.

        Returns:
            ``Js`` of shape ``(n·m, K, P)`` and outputs ``f`` of shape ``(n·m, K)``,
            where ``m`` counts extra output positions (1 for ``(n, K)`` outputs).
        """
        if self.last_layer:
            return self.last_layer_jacobians(x, enable_backprop)
        params = self._params_dict(enable_backprop)
        names = list(params)

        def fn(p: dict[str, Tensor], xi: Any) -> tuple[Tensor, Tensor]:
            out = F.single_output(self.model, p, xi)
            return out, out

        jac_fn = per_sample(jacrev(fn, has_aux=True), (None, F.vmap_in_dims(x)), self.model)
        jac, f = jac_fn(params, F.as_vmappable(x))
        Js = F.concat_jacobian(jac, names, lead=3)  # (n, m, K, P)
        Js = Js.reshape(-1, *Js.shape[2:])
        f = f.reshape(-1, f.shape[-1])
        if not enable_backprop:
            Js, f = Js.detach(), f.detach()
        return self._select(Js), f

    def last_layer_jacobians(
        self, x: Inputs, enable_backprop: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Jacobians ``φ(x)ᵀ ⊗ I`` w.r.t. the last ``nn.Linear`` layer.

        Returns:
            ``Js`` ``(n, K, K·D [+K])`` in the layer's ``(weight, bias)`` order and ``f``.
        """
        phi, f = features_and_outputs(self.model, x)
        if not enable_backprop:
            phi, f = phi.detach(), f.detach()
        layer = model_last_layer(self.model)
        phi, f = phi.reshape(-1, phi.shape[-1]), f.reshape(-1, f.shape[-1])
        n, K = f.shape
        eye = torch.eye(K, device=f.device, dtype=f.dtype)
        Js = torch.einsum("kl,nd->nkld", eye, phi).reshape(n, K, -1)
        if layer.bias is not None:
            Js = torch.cat([Js, eye.expand(n, K, K)], dim=2)
        return Js, f

    # ------------------------------------------------------------------ gradients
    def gradients(self, x: Inputs, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample gradients of ``lossfunc`` (without ``factor``).

        Returns:
            ``Gs`` ``(n, P)`` and the summed loss ``lossfunc(f, y)`` (a scalar).
        """
        params = self._params_dict()
        names = list(params)

        def loss_single(p: dict[str, Tensor], xi: Any, yi: Tensor) -> tuple[Tensor, Tensor]:
            out = F.single_output(self.model, p, xi)
            loss = self.lossfunc(out, self._target_like(yi, out))
            return loss, loss

        grad_fn = per_sample(grad(loss_single, has_aux=True), (None, F.vmap_in_dims(x), 0),
                             self.model)
        g, losses = grad_fn(params, F.as_vmappable(x), y)
        Gs = F.concat_jacobian(g, names, lead=1)
        return self._select(Gs).detach(), losses.sum().detach()

    def _target_like(self, y: Tensor, out: Tensor) -> Tensor:
        """One sample's target shaped for ``lossfunc`` against ``out`` ``(m, K)``."""
        if self.likelihood == Likelihood.REGRESSION:
            return y.reshape(out.shape)
        return y.reshape(-1)

    # ------------------------------------------------------------------ curvature
    def full(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Loss and dense curvature ``(P, P)`` of one batch.

        Args:
            x, y: the batch (inputs ``(n, ...)`` or a dict-like batch, targets ``(n, ...)``).
            N: size of the data set (optional; a dense curvature does not need it).
            kwargs: ``mc_samples`` for a stochastic curvature (see
                :func:`curvature_options`); unknown keywords raise ``ValueError``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no full curvature.")

    def diag(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Loss and diagonal curvature ``(P,)`` of one batch (arguments as ``full``)."""
        raise NotImplementedError(f"{type(self).__name__} has no diagonal curvature.")

    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        """Loss and Kronecker-factored curvature of one batch of a data set of size N
        (the input factors carry ``1/N``); keywords as for ``full``."""
        raise NotImplementedError(f"{type(self).__name__} has no Kronecker curvature.")

    def functorch_jacobians(
        self, x: Inputs, enable_backprop: bool = False
    ) -> tuple[Tensor, Tensor]:
        """laplace-torch's name for :meth:`jacobians` (``torch.func`` Jacobians):
        ``Js`` ``(n, K, P)`` and outputs ``f`` ``(n, K)``."""
        return self.jacobians(x, enable_backprop=enable_backprop)


class GGNInterface(CurvatureInterface):
    """Generalized Gauss-Newton ``Σₙ Jₙᵀ Λₙ Jₙ`` with the exact output Hessian ``Λₙ``."""

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        last_layer: bool = False,
        subnetwork_indices: Tensor | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        stochastic: bool = False,
        num_samples: int = 1,
    ) -> None:
        """``stochastic``: a Monte Carlo GGN (``num_samples`` label draws per point, or
        ``mc_samples`` per call)."""
        super().__init__(model, likelihood, last_layer, subnetwork_indices, dict_key_x,
                         dict_key_y)
        self.num_samples = checks.positive_int(num_samples, "num_samples")
        self.stochastic = checks.flag(stochastic, "stochastic")

    def _sqrt_ggn_rows(
        self, x: Inputs, y: Tensor, mc_samples: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``Sₙ Jₙ`` with ``Λₙ = SₙᵀSₙ`` as ``(n·m, K, P)``, and the loss of the batch.

        With ``stochastic=True`` the rows are ``gₙᵀ Jₙ`` for ``mc_samples`` sampled
        output gradients ``gₙ`` (``(n·m, mc_samples, P)``): a Monte Carlo GGN.
        """
        Js, f = self.jacobians(x)
        loss = self.factor * self.lossfunc(f, _targets(y, f, self.likelihood))
        if self.stochastic:
            mc = mc_samples or self.num_samples
            G = sampled_output_grads(f, self.likelihood, mc) * (self.factor / mc) ** 0.5
            return torch.einsum("snk,nkp->nsp", G, Js), loss.detach()
        S = output_hessian_sqrt(f, self.likelihood, self.factor)
        return torch.einsum("nlk,nkp->nlp", S, Js), loss.detach()

    def full(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        mc, _ = curvature_options(self, kwargs)
        SJ, loss = self._sqrt_ggn_rows(x, y, mc)
        rows = SJ.reshape(-1, SJ.shape[-1])
        return loss, rows.T @ rows

    def diag(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        mc, _ = curvature_options(self, kwargs)
        if self.last_layer and self.subnetwork_indices is None and not self.stochastic:
            return self._last_layer_diag(x, y)
        if self.subnetwork_indices is None:
            result = diagonal(self, x, y, fisher=self._fisher_kind, mc_samples=mc)
            if result is not None:
                return result
        SJ, loss = self._sqrt_ggn_rows(x, y, mc)
        return loss, SJ.square().sum(dim=(0, 1))

    @property
    def _fisher_kind(self) -> str:
        """``"mc"`` (sampled output gradients) or ``"ggn"`` (exact output Hessian)."""
        return "mc" if self.stochastic else "ggn"

    def _last_layer_diag(self, x: Inputs, y: Tensor) -> tuple[Tensor, Tensor]:
        """``Σₙ Λₙ[k,k] φₙ²`` without building the Jacobians ``I ⊗ φᵀ``."""
        phi, f = features_and_outputs(self.model, x)
        phi, f = phi.detach().reshape(-1, phi.shape[-1]), f.detach().reshape(-1, f.shape[-1])
        lam = output_hessian_diag(f, self.likelihood, self.factor)  # (n, K)
        loss = self.factor * self.lossfunc(f, _targets(y, f, self.likelihood))
        diag = [(lam.T @ phi.square()).flatten()]
        if self.params[-1].ndim == 1:
            diag.append(lam.sum(0))
        return loss.detach(), torch.cat(diag)

    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        mc, _ = curvature_options(self, kwargs)
        return kfac(self, x, y, N, fisher=self._fisher_kind, mc_samples=mc)

    def sqrt_rows(self, x: Inputs, y: Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``R`` with ``RᵀR`` the batch curvature ``(rows, P)``, and the loss."""
        SJ, loss = self._sqrt_ggn_rows(x, y)
        return SJ.reshape(-1, SJ.shape[-1]), loss


class EFInterface(CurvatureInterface):
    """Empirical Fisher ``factor · Σₙ gₙ gₙᵀ`` of per-sample loss gradients."""

    def full(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        curvature_options(self, kwargs)
        Gs, loss = self.gradients(x, y)
        return self.factor * loss, self.factor * (Gs.T @ Gs)

    def diag(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        curvature_options(self, kwargs)
        if self.subnetwork_indices is None and not self.last_layer:
            result = diagonal(self, x, y, fisher="ef")
            if result is not None:
                return result
        Gs, loss = self.gradients(x, y)
        return self.factor * loss, self.factor * Gs.square().sum(0)

    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        curvature_options(self, kwargs)
        return kfac(self, x, y, N, fisher="ef")

    def sqrt_rows(self, x: Inputs, y: Tensor) -> tuple[Tensor, Tensor]:
        Gs, loss = self.gradients(x, y)
        return Gs * self.factor**0.5, self.factor * loss


def curvature_options(
    iface: CurvatureInterface, kwargs: dict[str, Any], extra: tuple[str, ...] = ()
) -> tuple[int, dict[str, Any]]:
    """Check the keywords of a ``full``/``diag``/``kron`` call.

    Accepted everywhere: ``N`` (the data-set size; only ``kron`` uses it) and
    ``mc_samples`` (alias ``n_mc_samples``, ASDL's name), the Monte Carlo samples of
    this call, which a stochastic curvature (``stochastic=True``) uses instead of the
    backend's ``num_samples``. ``extra`` names the backend-specific keywords of the
    call (ASDL's ``var``, ``seed``, ``ignore_index``; Curvlinops' ``kfac_approx``).

    Returns:
        The number of Monte Carlo samples and the backend-specific keywords given.

    Raises:
        ValueError: an unknown keyword, ``mc_samples`` for a deterministic curvature,
            or ``mc_samples`` that is not a positive integer.
    """
    name = type(iface).__name__
    unknown = sorted(set(kwargs) - {"N", "mc_samples", "n_mc_samples", *extra})
    if unknown:
        accepted = ", ".join(["N", "mc_samples (stochastic=True)", *extra])
        raise ValueError(f"{name}: unknown curvature keyword(s) {unknown}; accepted: {accepted}.")
    given = [kwargs[k] for k in ("mc_samples", "n_mc_samples") if k in kwargs]
    if given and not getattr(iface, "stochastic", False):
        raise ValueError(
            f"{name}: mc_samples applies to a stochastic (Monte Carlo) curvature only; "
            "create the backend with stochastic=True (backend_kwargs={'stochastic': True})."
        )
    if len(given) == 2 and given[0] != given[1]:
        raise ValueError(f"{name}: mc_samples={given[0]} and n_mc_samples={given[1]} differ.")
    mc = given[0] if given else getattr(iface, "num_samples", 1)
    if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
        raise ValueError(f"{name}: mc_samples must be a positive integer, got {mc!r}.")
    return mc, {k: kwargs[k] for k in extra if k in kwargs}
