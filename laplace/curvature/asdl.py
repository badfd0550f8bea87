"""ASDL adapters: ``AsdlGGN``, ``AsdlEF``, ``AsdlHessian`` (``asdfghjkl`` package, module ``asdl``).

What ASDL computes here:

* ``AsdlGGN`` / ``AsdlEF``: ASDL's Fisher routines (``get_fisher_maker``) with
  ``fisher_exact`` (``fisher_mc`` with ``stochastic=True``) or ``fisher_emp``, for the
  shapes ``full``, ``diag`` and ``kron``. ``AsdlEF`` also takes its per-sample
  gradients (``gradients``, hence ``sqrt_rows``) from ASDL's ``batch_grads`` operation.
* ``AsdlHessian``: ASDL's ``HessianMaker`` for ``full`` and ``diag`` (the diagonal of
  its layer-wise Hessian blocks). ASDL has no Kronecker-factored Hessian: ``kron``
  raises ``NotImplementedError``.

Jacobians for prediction, and the square-root rows of the exact GGN that
``FullLaplace`` uses, are the native ``torch.func`` ones (faster than ASDL's
per-output loops).

Conventions: ASDL's Gaussian loss is ``½‖f − y‖²``, which is exactly
``factor · MSELoss(sum)``; its GGN is therefore the curvature of ``factor·lossfunc``
as it stands, while EF and Hessian (taken of ``lossfunc``) are scaled by ``factor``.
Kronecker factors follow the native convention (``A = Σ a aᵀ / (N·positions)``,
KFAC-"expand" for ``nn.Conv2d``, bias block ``[B]``), up to the split of the scalar
``factor`` (``√factor`` on each factor of a weight): only ``kron(B, A)`` is meaningful.

Limits (checked, ``ValueError`` naming the module): ASDL supports ``nn.Linear``,
``nn.Conv2d`` (no dilation), ``nn.BatchNorm1d/2d``, ``nn.LayerNorm`` and
``nn.Embedding`` as parameter-owning modules (``kron``: ``nn.Linear`` and
``nn.Conv2d`` only) and needs ``(n, K)`` outputs. Unlike laplace-torch 0.3, the EF on
the last layer works (its gradients are restricted to the last layer's parameters).

The Hessian can be indefinite: ``AsdlHessian`` returns it unchanged, and the posterior
precision classes raise ``laplace.precision.NotPositiveDefiniteError`` whenever
``H/σ² + prior`` is not positive definite (no silently NaN marginal likelihood).
ASDL computes the Hessian one row at a time (``P`` double-backward passes per batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
from laplace.curvature.outputs import last_layer_alone
from laplace.utils.data import Inputs
from laplace.utils.enums import Likelihood
from laplace.utils.matrix import Kron

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # deprecation warnings of ASDL's own imports
    import asdl
    from asdl import (
        FISHER_EMP,
        FISHER_EXACT,
        FISHER_MC,
        LOSS_CROSS_ENTROPY,
        LOSS_MSE,
        OP_BATCH_GRADS,
        SHAPE_DIAG,
        SHAPE_FULL,
        SHAPE_KRON,
        FisherConfig,
        HessianConfig,
        HessianMaker,
        get_fisher_maker,
    )

#: ``FisherConfig`` keywords a call may pass (laplace-torch's ``asdl_fisher_kwargs``).
ASDL_KEYWORDS = ("var", "seed", "ignore_index")

#: Parameter-owning modules ASDL has operations for.
ASDL_MODULES = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Embedding)


class AsdlInterface(CurvatureInterface):
    """Curvature through ASDL (see the module docstring).

    Args:
        model, likelihood, last_layer, subnetwork_indices, dict_key_x, dict_key_y:
            as for :class:`~laplace.curvature.curvature.CurvatureInterface`.
    """

    #: ASDL's Fisher type (``None`` for the Hessian backend).
    _fisher_type: str | None = None
    #: Scale turning ASDL's result into the curvature of ``factor·lossfunc``.
    _uses_lossfunc = True

    @property
    def loss_type(self) -> str:
        """ASDL's name of the loss: ``"mse"`` (regression) or ``"cross_entropy"``."""
        return LOSS_MSE if self.likelihood == Likelihood.REGRESSION else LOSS_CROSS_ENTROPY

    # --------------------------------------------------------------- the graph
    def _network(self, x: Inputs) -> tuple[nn.Module, Any]:
        """The module ASDL runs on and its input: the last layer alone on detached
        features when ``last_layer=True`` and the output is that layer's output."""
        if self.last_layer and (alone := last_layer_alone(self.model, x)) is not None:
            return alone
        return self.model, x

    def _layout(self, net: nn.Module, kron: bool = False) -> tuple[list[nn.Parameter], list]:
        """ASDL's parameter order on ``net`` and the modules to ignore.

        Raises:
            ValueError: a parameter of ``self.params`` lives in a module ASDL lacks.
        """
        wanted = {id(p) for p in self.params}
        problem = unsupported_layer(net, [p for p in self.params if p.requires_grad])
        if problem:
            raise ValueError(f"{type(self).__name__}: ASDL's layer-wise curvature is wrong "
                             f"here: {problem}; use TorchFuncGGN or TorchFuncEF.")
        order: list[nn.Parameter] = []
        ignore: list[nn.Module] = []
        supported = (nn.Linear, nn.Conv2d) if kron else ASDL_MODULES
        for name, module in net.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not any(id(p) in wanted for p in own):
                if isinstance(module, ASDL_MODULES):
                    ignore.append(module)
                continue
            if not isinstance(module, supported):
                what = "Kronecker factors" if kron else "curvature"
                raise ValueError(
                    f"{type(self).__name__}: ASDL computes no {what} for module {name!r} "
                    f"({type(module).__name__}), which has trainable parameters; supported: "
                    f"{', '.join(c.__name__ for c in supported)}."
                )
            if isinstance(module, nn.Conv2d) and (
                    module.dilation != (1, 1) or module.groups != 1
                    or isinstance(module.padding, str)):
                raise ValueError(
                    f"{type(self).__name__}: ASDL does not support dilated, grouped or "
                    f"'same'/'valid'-padded convolutions (module {name!r}); use "
                    "TorchFuncGGN or CurvlinopsGGN.")
            if isinstance(module, nn.Embedding):
                raise ValueError(
                    f"{type(self).__name__}: ASDL's curvature of nn.Embedding (module "
                    f"{name!r}) is wrong when a token repeats within a sample; use "
                    "TorchFuncGGN, CurvlinopsGGN or BackPackEF.")
            for attr in ("weight", "bias"):
                p = getattr(module, attr, None)
                if p is not None and p.requires_grad:
                    order.append(p)
        return order, ignore

    def _outputs(self, net: nn.Module, inp: Any, y: Tensor) -> tuple[Tensor, Tensor]:
        """Model outputs ``(n, K)`` (no graph) and targets shaped for ``lossfunc``."""
        with torch.no_grad():
            f = net(inp)
        if f.ndim != 2:
            raise ValueError(
                f"{type(self).__name__}: ASDL needs model outputs of shape (n, K); "
                f"got {tuple(f.shape)}."
            )
        return f, _targets(y, f, self.likelihood)

    def _scale(self, mc_samples: int = 1) -> float:
        """ASDL's GGN is that of ``½‖f−y‖²`` = ``factor·MSELoss(sum)``; the EF and the
        Hessian are of ``lossfunc`` and take ``factor``."""
        return self.factor if self._uses_lossfunc else 1.0

    def _fisher(
        self, x: Inputs, y: Tensor, shape: str, kwargs: dict[str, Any]
    ) -> tuple[Tensor, nn.Module, list[nn.Parameter], dict[int, int], float]:
        """Run ASDL's Fisher maker for ``shape`` on one batch.

        Args:
            kwargs: the call's keywords (``N``, ``mc_samples`` and ``FisherConfig``'s
                ``var``, ``seed``, ``ignore_index``; see ``curvature_options``).

        Returns:
            ``factor·lossfunc``, the network (its modules carry ``fisher``), ASDL's
            parameter order, the extra input positions of each ``nn.Linear``, and the
            scale turning ASDL's matrices into the curvature of ``factor·lossfunc``.
        """
        mc, extra = curvature_options(self, kwargs, extra=ASDL_KEYWORDS)
        net, inp = self._network(x)
        order, ignore = self._layout(net, kron=shape == SHAPE_KRON)
        f, targets = self._outputs(net, inp, y)
        loss_type = self.loss_type
        config = FisherConfig(
            fisher_type=self._fisher_type, fisher_shapes=[shape], loss_type=loss_type,
            n_mc_samples=mc, data_size=1, ignore_modules=ignore, **extra,
        )
        maker = get_fisher_maker(net, config)
        dummy_y = maker.setup_model_call(net, inp)
        lossfn = nn.functional.mse_loss if loss_type == LOSS_MSE else nn.functional.cross_entropy
        maker.setup_loss_call(lossfn, dummy_y, targets)
        with _asdl_call(net), _linear_positions(net) as positions:
            maker.forward_and_backward()
        loss = self.factor * self.lossfunc(f, targets)
        return loss.detach(), net, order, positions, self._scale(mc)

    def _index(self, order: list[nn.Parameter]) -> Tensor:
        """Positions of ``self.params`` (then of the subnetwork) in ASDL's order."""
        offsets, start = {}, 0
        for p in order:
            offsets[id(p)] = (start, p.numel())
            start += p.numel()
        idx = torch.cat([
            torch.arange(offsets[id(p)][0], sum(offsets[id(p)])) for p in self.params
        ])
        if self.subnetwork_indices is not None:
            idx = idx[self.subnetwork_indices.cpu()]
        return idx

    # ---------------------------------------------------------------- structures
    def _sequence_fallback(self, method: str, net: nn.Module, order: list[nn.Parameter],
                           positions: dict[int, int]) -> bool:
        """Whether ASDL's ``method`` curvature is wrong here: an ``nn.Linear`` whose
        parameters are wanted saw inputs ``(n, T, d)`` with ``T > 1``. ASDL's diagonal
        (GGN and EF) and full EF then sum per-position squares ``Σₜ gₜ²`` and drop the
        cross-position terms of ``(Σₜ gₜ)²`` (up to 75% off with four positions; its full
        GGN and the Kronecker factors, scaled by the positions, are right). The caller then
        computes the curvature by the native route of the same type (exact), with a
        warning."""
        wanted = {id(p) for p in order}
        seq = [m for m in net.modules() if isinstance(m, nn.Linear) and positions.get(id(m), 1) > 1
               and any(id(p) in wanted for p in m.parameters(recurse=False))]
        if seq:
            _cleanup(net)
            warnings.warn(
                f"{type(self).__name__}: ASDL's {method} curvature of an nn.Linear that sees a "
                "sequence (inputs (n, T, d)) drops the cross-position terms; it is computed by "
                "the native torch.func route instead (exact).", UserWarning, stacklevel=3)
        return bool(seq)

    def _native(self, method: str, x: Inputs, y: Tensor, N: int | None,
                kwargs: dict[str, Any]) -> Any:
        """The native (``torch.func``) ``method`` of this backend's curvature type."""
        kept = {k: v for k, v in kwargs.items() if k not in ASDL_KEYWORDS}
        return getattr(super(), method)(x, y, N=N, **kept)

    def full(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        loss, net, order, positions, scale = self._fisher(x, y, SHAPE_FULL, kwargs)
        if self._fisher_type == FISHER_EMP and self._sequence_fallback(
                "full", net, order, positions):
            return self._native("full", x, y, N, kwargs)
        F = net.fisher.data
        _cleanup(net)
        idx = self._index(order).to(F.device)
        return loss, scale * F[idx][:, idx].detach()

    def diag(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        loss, net, order, positions, scale = self._fisher(x, y, SHAPE_DIAG, kwargs)
        if self._sequence_fallback("diagonal", net, order, positions):
            return self._native("diag", x, y, N, kwargs)
        values = {}
        for module in net.modules():
            fisher = getattr(module, "fisher", None)
            if fisher is None or fisher.diag is None:
                continue
            for attr in ("weight", "bias"):
                d = getattr(fisher.diag, attr, None)
                if d is not None:
                    values[id(getattr(module, attr))] = d
        _cleanup(net)
        diag = torch.cat([values[id(p)].flatten() for p in self.params])
        if self.subnetwork_indices is not None:
            diag = diag[self.subnetwork_indices]
        return loss, scale * diag.detach()

    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        if self.subnetwork_indices is not None:
            raise ValueError(
                f"{type(self).__name__}: a Kronecker-factored curvature cannot be "
                "restricted to subnetwork indices; use 'full' or 'diag'."
            )
        loss, net, _, positions, s = self._fisher(x, y, SHAPE_KRON, kwargs)
        found: dict[int, list[Tensor]] = {}
        for module in net.modules():
            fisher = getattr(module, "fisher", None)
            if fisher is None or fisher.kron is None:
                continue
            A, B = fisher.kron.A, fisher.kron.B
            w, b = getattr(module, "weight", None), getattr(module, "bias", None)
            if w is not None and w.requires_grad:
                # asdfghjkl 0.1a4 appends the bias to the inputs; 0.1a5 does not.
                A_w = A[:-1, :-1] if A.shape[0] == w[0].numel() + 1 else A
                A_w = A_w / (N * positions.get(id(module), 1))
                found[id(w)] = [B.detach() * s**0.5, A_w.detach() * s**0.5]
            if b is not None and b.requires_grad:
                found[id(b)] = [B.detach() * s]  # the exact bias block Σ g gᵀ
        _cleanup(net)
        return loss, Kron([found[id(p)] for p in self.params])


@contextmanager
def _linear_positions(net: nn.Module) -> Iterator[dict[int, int]]:
    """Record, per ``nn.Linear`` of ``net`` (by ``id``), how many positions per sample its
    input has in the forward passes run inside (``T`` for ``(n, T, d)``, else 1)."""
    positions: dict[int, int] = {}

    def record(m: nn.Module, args: tuple[Tensor, ...]) -> None:
        a = args[0]
        positions[id(m)] = a[0].numel() // a.shape[-1] if a.ndim > 2 else 1

    handles = [m.register_forward_pre_hook(record) for m in net.modules()
               if isinstance(m, nn.Linear)]
    try:
        yield positions
    finally:
        for h in handles:
            h.remove()


class AsdlGGN(AsdlInterface, GGNInterface):
    """Generalized Gauss-Newton from ASDL's ``fisher_exact`` (``fisher_mc`` if stochastic).

    Args:
        stochastic: Monte Carlo Fisher with ``num_samples`` sampled labels per point.
            ``sqrt_rows`` is then unavailable (``None``), so ``FullLaplace`` calls ``full``.
        num_samples: Monte Carlo samples (``stochastic=True`` only); a call's
            ``mc_samples`` (or ASDL's ``n_mc_samples``) keyword overrides it.
    """

    _uses_lossfunc = False

    @property
    def _fisher_type(self) -> str:  # type: ignore[override]
        return FISHER_MC if self.stochastic else FISHER_EXACT

    def _scale(self, mc_samples: int = 1) -> float:
        # ASDL's fisher_mc backpropagates loss / mc_samples per sample and squares it:
        # its estimate is the Fisher / mc_samples.
        return float(mc_samples) if self.stochastic else 1.0

    @property
    def sqrt_rows(self):  # type: ignore[override]
        """Native exact-GGN rows; ``None`` for the Monte Carlo Fisher (no ASDL rows)."""
        return None if self.stochastic else super().sqrt_rows


class _KeywordSubnetwork(AsdlInterface):
    """``(model, likelihood, last_layer, dict_key_x, dict_key_y)`` positionally, as
    laplace-torch's ``AsdlEF`` and ``AsdlHessian`` (which have no subnetwork);
    ``subnetwork_indices`` by keyword (as the subnetwork LAs pass it)."""

    def __init__(self, model: nn.Module, likelihood: str, last_layer: bool = False,
                 dict_key_x: str = "input_ids", dict_key_y: str = "labels", *,
                 subnetwork_indices: Tensor | None = None) -> None:
        super().__init__(model, likelihood, last_layer, subnetwork_indices, dict_key_x,
                         dict_key_y)


class AsdlEF(_KeywordSubnetwork, EFInterface):
    """Empirical Fisher from ASDL's ``fisher_emp`` and per-sample ``batch_grads``."""

    _fisher_type = FISHER_EMP

    def gradients(self, x: Inputs, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample gradients of ``lossfunc`` from ASDL's ``batch_grads`` operation."""
        net, inp = self._network(x)
        order, ignore = self._layout(net)
        with _asdl_call(net), asdl.extend(net, OP_BATCH_GRADS, ignore_modules=ignore) as cxt, \
                _linear_positions(net) as positions:
            f = net(inp)
            if f.ndim != 2:
                raise ValueError(
                    f"{type(self).__name__}: ASDL needs model outputs of shape (n, K); "
                    f"got {tuple(f.shape)}."
                )
            loss = self.lossfunc(f, _targets(y, f, self.likelihood))
            torch.autograd.grad(loss, order)
            grads = {}
            for module in net.modules():
                bg = cxt.batch_grads(module)
                if bg is None:
                    continue
                for attr, g in bg.items():
                    grads[id(getattr(module, attr))] = g
        if self._sequence_fallback("per-sample gradient", net, order, positions):
            return super().gradients(x, y)
        Gs = torch.cat([grads[id(p)].flatten(start_dim=1) for p in self.params], dim=1)
        if self.subnetwork_indices is not None:
            Gs = Gs[:, self.subnetwork_indices]
        return Gs.detach(), loss.detach()


class AsdlHessian(_KeywordSubnetwork):
    """Exact Hessian of ``factor·lossfunc`` from ASDL's ``HessianMaker`` (``full``,
    ``diag``); may be indefinite (see the module docstring)."""

    def _hessian(
        self, x: Inputs, y: Tensor, shape: str
    ) -> tuple[Tensor, nn.Module, list[nn.Parameter]]:
        """Run ASDL's ``HessianMaker`` for ``shape``; returns ``factor·lossfunc``, the
        network (carrying ``hessian``) and the parameter order of the full Hessian."""
        net, inp = self._network(x)
        wanted = {id(p) for p in self.params}
        order = [p for p in net.parameters() if id(p) in wanted]
        if shape == SHAPE_DIAG:
            for name, module in net.named_modules():
                for pname, p in module.named_parameters(recurse=False):
                    if id(p) in wanted and pname not in ("weight", "bias"):
                        raise ValueError(
                            f"{type(self).__name__}: ASDL's Hessian diagonal covers only "
                            f"'weight' and 'bias' parameters; {name}.{pname} is neither."
                        )
        others = [p for p in net.parameters() if p.requires_grad and id(p) not in wanted]
        f, targets = self._outputs(net, inp, y)
        maker = HessianMaker(net, HessianConfig(hessian_shapes=[shape]))
        dummy_y = maker.setup_model_call(net, inp)
        maker.setup_loss_call(self.lossfunc, dummy_y, targets)
        try:  # ASDL differentiates w.r.t. every trainable parameter: freeze the others
            for p in others:
                p.requires_grad_(False)
            with _asdl_call(net):
                maker.forward_and_backward()
        finally:
            for p in others:
                p.requires_grad_(True)
        loss = self.factor * self.lossfunc(f, targets)
        return loss.detach(), net, order

    def full(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        curvature_options(self, kwargs)
        loss, net, order = self._hessian(x, y, SHAPE_FULL)
        H = net.hessian.data
        _cleanup(net, "hessian")
        idx = self._index(order).to(H.device)
        return loss, self.factor * H[idx][:, idx].detach()

    def diag(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Diagonal of the Hessian (ASDL's ``diag`` shape: layer-wise blocks' diagonals)."""
        curvature_options(self, kwargs)
        loss, net, order = self._hessian(x, y, SHAPE_DIAG)
        values = {}
        for module in net.modules():
            hess = getattr(module, "hessian", None)
            if hess is None or getattr(hess, "diag", None) is None:
                continue
            for attr in ("weight", "bias"):
                d = getattr(hess.diag, attr, None)
                if d is not None:
                    values[id(getattr(module, attr))] = d
        _cleanup(net, "hessian")
        diag = torch.cat([values[id(p)].flatten() for p in self.params])
        if self.subnetwork_indices is not None:
            diag = diag[self.subnetwork_indices]
        return loss, self.factor * diag.detach()

    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        curvature_options(self, kwargs)
        raise NotImplementedError(
            f"{type(self).__name__}: ASDL has no Kronecker-factored Hessian; use "
            "hessian_structure='full' or 'diag', or a GGN/EF backend for 'kron'."
        )


# ---------------------------------------------------------------------- helpers
def _cleanup(net: nn.Module, attr: str = "fisher") -> None:
    """Remove the matrices ASDL attached to the modules."""
    for module in net.modules():
        if hasattr(module, attr):
            delattr(module, attr)


@contextmanager
def _asdl_call(net: nn.Module) -> Iterator[None]:
    """Run ASDL's hooks quietly and leave ``.grad`` of ``net``'s parameters untouched.

    ASDL registers (deprecated) non-full module backward hooks; for the layers it
    supports they see the gradient w.r.t. the layer output, which is all it uses.
    """
    params = list(net.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    _reset_hook_kind(net)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-full backward hook")
            with torch.enable_grad():
                yield
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        _reset_hook_kind(net)


def _reset_hook_kind(net: nn.Module) -> None:
    """Let modules without backward hooks take either kind of hook again.

    PyTorch remembers whether a module ever had a (non-)full backward hook, even after
    the hook is removed; ASDL's non-full hooks would otherwise lock BackPACK's full
    hooks out of the module for good (and vice versa).
    """
    for module in net.modules():
        if not module._backward_hooks:
            module._is_full_backward_hook = None
