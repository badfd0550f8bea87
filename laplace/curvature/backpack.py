"""BackPACK adapters: ``BackPackGGN`` and ``BackPackEF``.

What BackPACK computes here (one backward pass with an extension each):

* ``BackPackGGN``: ``diag`` from ``DiagGGNExact`` (``DiagGGNMC`` with
  ``stochastic=True``), ``kron`` from ``KFLR`` (``KFAC``), and ``full``/``sqrt_rows``
  from the GGN square root ``SqrtGGNExact`` (``SqrtGGNMC``): rows ``R`` with
  ``RᵀR`` the batch GGN, used by ``FullLaplace`` directly.
* ``BackPackEF``: per-sample gradients from ``BatchGrad`` (``gradients``, hence the EF
  ``full``/``sqrt_rows``) and ``diag`` from ``SumGradSquared``. BackPACK has no
  Kronecker-factored empirical Fisher: ``kron`` raises ``NotImplementedError``.

Jacobians for prediction are the native ``torch.func`` ones (faster than one
``BatchGrad`` pass per output).

Requirements, checked before BackPACK runs (``ValueError`` naming the module otherwise):

* second-order quantities (every GGN structure) need a chain of layers that all have
  a BackPACK extension (no ``LayerNorm``/``GroupNorm``, no ``BatchNorm`` for ``kron``,
  no custom layers), and ``(n, K)`` outputs: an ``nn.Sequential`` (nested ``Sequential``
  allowed), or a custom container whose ``forward`` calls its layers one after the
  other with nothing in between (checked on each batch: the model's output must equal
  its layers applied in registration order; a residual connection or a functional
  operation between layers is refused, as BackPACK would backpropagate through it
  wrongly; the exact ``full``/``sqrt_rows`` of such a model are the native route's, with
  a warning, as laplace-torch's Jacobian-based full GGN takes any container).
  First-order quantities (EF) accept any container, but every module that owns
  trainable parameters must be supported by ``BatchGrad``.
* tensor inputs: dict-like (Hugging Face) batches are not supported by BackPACK.
* With ``last_layer=True`` and a model whose output is the last ``nn.Linear``'s output,
  BackPACK runs on that layer alone, fed with the (detached) features.

BackPACK's hooks are installed only for the duration of one call and removed
afterwards, so the model is left as it was (laplace-torch extends it permanently).

Kronecker factors (``kron``), per weight ``[B, A]`` and per bias ``[B]``, with the
block ``kron(B, A)``:

* ``nn.Linear``: the native convention, ``A = Σₙ aₙaₙᵀ / N`` and ``B = Σ`` over the
  backpropagated GGN square-root columns ``s`` of ``s sᵀ``.
* ``nn.Conv2d``: BackPACK's own convention, reproduced as laplace-torch 0.3 reports it
  (it differs from the KFAC-"expand" factors of the native backend, Curvlinops and
  ASDL): ``A = Σₙ Σₜ aₙₜaₙₜᵀ / N`` sums the unfolded input patches over the ``T``
  output positions ``t`` instead of averaging them (``T`` times the native ``A``),
  and ``B = Σ_s (Σₜ sₜ)(Σₜ sₜ)ᵀ`` sums the backpropagated square root over positions
  *before* the outer product (it equals the bias block, the exact GGN of the bias),
  where "expand" sums the outer products ``Σₜ sₜsₜᵀ``. The two agree only when
  ``T = 1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from backpack import backpack, hook_run_extensions, hook_store_io, memory_cleanup
from backpack.extensions import (
    KFAC,
    KFLR,
    BatchGrad,
    DiagGGNExact,
    DiagGGNMC,
    SqrtGGNExact,
    SqrtGGNMC,
    SumGradSquared,
)
from backpack.extensions.backprop_extension import BackpropExtension
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
from laplace.utils.feature_extractor import FeatureExtractor
from laplace.utils.matrix import Kron


class BackPackInterface(CurvatureInterface):
    """Curvature through BackPACK extensions (see the module docstring).

    Args:
        model, likelihood, last_layer, subnetwork_indices, dict_key_x, dict_key_y:
            as for :class:`~laplace.curvature.curvature.CurvatureInterface`.
    """

    # --------------------------------------------------------------- the graph
    def _check_tensor_inputs(self, x: Inputs) -> None:
        """``ValueError`` for a dict-like batch, which BackPACK cannot take."""
        if isinstance(x, Mapping):
            raise ValueError(
                f"{type(self).__name__}: BackPACK does not support dict-like inputs; "
                "use a TorchFunc or Curvlinops backend."
            )

    def _network(self, x: Inputs) -> tuple[nn.Module, Tensor]:
        """The module BackPACK runs on and its input.

        The last layer alone on detached features when ``last_layer=True`` and the
        model's output is that layer's output; the whole model otherwise, on the
        detached inputs.
        """
        self._check_tensor_inputs(x)
        if self.last_layer and (alone := last_layer_alone(self.model, x)) is not None:
            return alone
        # Curvature carries no graph to the inputs. Inputs that require grad (the
        # BoTorch case, enable_backprop=True) would make BackPACK's full backward hook
        # on the first layer wait for an input gradient that is never computed.
        x = x.detach()
        if isinstance(self.model, FeatureExtractor) and self.model.feature_reduction is None:
            return self.model.model, x  # the wrapped network (LLLaplace's wrapper)
        return self.model, x

    def _run(
        self, x: Inputs, y: Tensor, extension: BackpropExtension, second_order: bool
    ) -> tuple[Tensor, list[Any]]:
        """One backward pass of ``lossfunc`` under ``extension``.

        Returns:
            the loss ``lossfunc`` (detached) and, per parameter of ``self.params``,
            the quantity BackPACK saved on it.
        """
        net, inp = self._network(x)
        wanted = {id(p): p for p in self.params}
        leaves = _check_network(self, net, extension, second_order, wanted)
        if second_order and _sequential_leaves(net) is None:  # custom containers inside
            _check_chain(self, net, leaves, inp, extension)
        lossfunc = type(self.lossfunc)(reduction="sum")
        if second_order:
            leaves.append(lossfunc)
        field = extension.savefield
        with _hooked(leaves), torch.enable_grad(), warnings.catch_warnings():
            # Expected: the first layer's input needs no gradient.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            f = net(inp)
            if second_order:
                if f.ndim != 2:
                    raise ValueError(
                        f"{type(self).__name__}: BackPACK's second-order extensions need "
                        f"model outputs of shape (n, K); got {tuple(f.shape)}."
                    )
                loss = lossfunc(f, _targets(y, f, self.likelihood))
            else:
                flat = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.unsqueeze(-1)
                loss = lossfunc(flat, _targets(y, flat, self.likelihood))
            params = [p for p in net.parameters() if p.requires_grad]
            try:
                with backpack(extension):
                    grads = torch.autograd.grad(loss, params)
                del grads
                values = []
                for p in self.params:
                    if not hasattr(p, field):
                        raise ValueError(
                            f"{type(self).__name__}: BackPACK's {type(extension).__name__} "
                            f"computed nothing for a parameter of shape {tuple(p.shape)}; "
                            "it belongs to a module BackPACK cannot differentiate."
                        )
                    values.append(getattr(p, field))
            finally:
                for p in net.parameters():
                    if hasattr(p, field):
                        delattr(p, field)
        return loss.detach(), values

    # --------------------------------------------------------------- selection
    def _select_vector(self, v: Tensor) -> Tensor:
        return v if self.subnetwork_indices is None else v[self.subnetwork_indices]

    def _no_subnetwork_kron(self) -> None:
        if self.subnetwork_indices is not None:
            raise ValueError(
                f"{type(self).__name__}: a Kronecker-factored curvature cannot be "
                "restricted to subnetwork indices; use 'full' or 'diag'."
            )


class BackPackGGN(BackPackInterface, GGNInterface):
    """Generalized Gauss-Newton from BackPACK (``DiagGGN*``, ``KFLR``/``KFAC``, ``SqrtGGN*``).

    Args:
        stochastic: Monte Carlo estimates with ``num_samples`` sampled labels per data
            point (BackPACK's ``DiagGGNMC``, ``KFAC`` and ``SqrtGGNMC``) instead of the
            exact GGN.
        num_samples: Monte Carlo samples (``stochastic=True`` only); a call's
            ``mc_samples`` keyword overrides it (laplace-torch ignores it here).
    """

    def sqrt_rows(
        self, x: Inputs, y: Tensor, mc_samples: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rows ``R`` ``(K·n, P)`` of BackPACK's GGN square root, ``RᵀR`` = batch GGN
        (``(mc_samples·n, P)`` sampled rows with ``stochastic=True``)."""
        mc = mc_samples or self.num_samples
        ext = SqrtGGNMC(mc_samples=mc) if self.stochastic else SqrtGGNExact()
        try:
            loss, sqrts = self._run(x, y, ext, second_order=True)
        except NotAChainError as error:
            # laplace-torch's full GGN comes from per-output Jacobians, so it takes any
            # container: so do the exact rows here, by the native route (same GGN).
            if self.stochastic:
                raise
            warnings.warn(f"{error.args[0].split(' Use ')[0]} The exact GGN rows are "
                          "computed by the native torch.func route.", UserWarning,
                          stacklevel=2)
            return GGNInterface.sqrt_rows(self, x, y)
        except RuntimeError as error:
            # BackPACK's square root through nn.AvgPool2d builds float32 tensors: a float64
            # model fails inside it. The exact rows are the native route's.
            if self.stochastic or "scalar type" not in str(error):
                raise
            warnings.warn(f"BackPackGGN: BackPACK's GGN square root failed here ({error}); "
                          "the exact GGN rows are computed by the native torch.func route.",
                          UserWarning, stacklevel=2)
            return GGNInterface.sqrt_rows(self, x, y)
        rows = torch.cat([s.flatten(start_dim=2) for s in sqrts], dim=2)  # (K, n, P)
        rows = rows.reshape(-1, rows.shape[-1]) * self.factor**0.5
        if self.subnetwork_indices is not None:
            rows = rows[:, self.subnetwork_indices]
        return rows.detach(), self.factor * loss

    def full(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        mc, _ = curvature_options(self, kwargs)
        rows, loss = self.sqrt_rows(x, y, mc)
        return loss, rows.T @ rows

    def diag(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        mc, _ = curvature_options(self, kwargs)
        ext = DiagGGNMC(mc_samples=mc) if self.stochastic else DiagGGNExact()
        loss, diags = self._run(x, y, ext, second_order=True)
        dggn = torch.cat([d.flatten() for d in diags])
        return self.factor * loss, self.factor * self._select_vector(dggn).detach()

    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        """KFLR (``KFAC`` if stochastic) factors; ``nn.Conv2d`` in BackPACK's convention."""
        mc, _ = curvature_options(self, kwargs)
        self._no_subnetwork_kron()
        ext = KFAC(mc_samples=mc) if self.stochastic else KFLR()
        loss, factors = self._run(x, y, ext, second_order=True)
        n = len(y)
        scale = self.factor**0.5
        kfacs = []
        for F in factors:
            if len(F) == 2:
                # BackPACK averages A over the batch; batches of a data set of size N add up.
                kfacs.append([F[0].detach() * scale, F[1].detach() * (scale * n / N)])
            else:
                kfacs.append([F[0].detach() * self.factor])
        return self.factor * loss, Kron(kfacs)


class BackPackEF(BackPackInterface, EFInterface):
    """Empirical Fisher from BackPACK's ``BatchGrad`` and ``SumGradSquared``."""

    def gradients(self, x: Inputs, y: Tensor) -> tuple[Tensor, Tensor]:
        loss, grads = self._run(x, y, BatchGrad(), second_order=False)
        Gs = torch.cat([g.flatten(start_dim=1) for g in grads], dim=1)
        if self.subnetwork_indices is not None:
            Gs = Gs[:, self.subnetwork_indices]
        return Gs.detach(), loss

    def diag(
        self, x: Inputs, y: Tensor, N: int | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        curvature_options(self, kwargs)
        loss, sgs = self._run(x, y, SumGradSquared(), second_order=False)
        diag = torch.cat([s.flatten() for s in sgs])
        return self.factor * loss, self.factor * self._select_vector(diag).detach()

    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        curvature_options(self, kwargs)
        self._check_tensor_inputs(x)  # the input error first, as laplace-torch
        raise NotImplementedError(
            "BackPackEF: BackPACK has no Kronecker-factored empirical Fisher; use "
            "CurvlinopsEF, AsdlEF or TorchFuncEF for 'kron', or 'full'/'diag' with BackPackEF."
        )


# ---------------------------------------------------------------------- helpers
def _module_extensions(extension: BackpropExtension) -> dict[type, Any]:
    return extension._BackpropExtension__module_extensions  # type: ignore[attr-defined]


def _sequential_leaves(net: nn.Module) -> list[nn.Module] | None:
    """The layers of a (nested) ``nn.Sequential`` in order, ``None`` for other containers."""
    if not isinstance(net, nn.Sequential):
        return None if list(net.children()) else [net]
    leaves: list[nn.Module] = []
    for child in net.children():
        sub = _sequential_leaves(child)
        if sub is None:
            return None
        leaves.extend(sub)
    return leaves


def _check_network(
    iface: BackPackInterface, net: nn.Module, extension: BackpropExtension,
    second_order: bool, wanted: dict[int, nn.Parameter],
) -> list[nn.Module]:
    """Modules to hook, after checking BackPACK can run ``extension`` on ``net``."""
    name = type(iface).__name__
    ext_name = type(extension).__name__
    supported = _module_extensions(extension)
    problem = unsupported_layer(net, list(wanted.values()))
    if problem is None and second_order:
        problem = next((f"module {m_name!r} has padding={m.padding!r}, which BackPACK's "
                        "unfolding cannot take" for m_name, m in net.named_modules()
                        if isinstance(m, nn.Conv2d) and isinstance(m.padding, str)), None)
    if problem:
        raise ValueError(f"{name}: BackPACK's layer-wise curvature is wrong or unavailable "
                         f"here: {problem}; use TorchFuncGGN or TorchFuncEF.")
    if second_order:
        leaves = _sequential_leaves(net)
        if leaves is None:  # a custom container: its layers, to be checked as a chain
            leaves = [m for m in net.modules() if not list(m.children())]
        for module in leaves:
            if type(module) not in supported:
                raise ValueError(
                    f"{name}: BackPACK's {ext_name} has no extension for "
                    f"{type(module).__name__} layers; use TorchFuncGGN, CurvlinopsGGN "
                    "or AsdlGGN for this model."
                )
        return leaves
    leaves = []
    for mod_name, module in net.named_modules():
        if any(id(p) in wanted for p in module.parameters(recurse=False)):
            if type(module) not in supported:
                raise ValueError(
                    f"{name}: BackPACK's {ext_name} has no extension for module "
                    f"{mod_name!r} ({type(module).__name__}), which has trainable "
                    "parameters; use TorchFuncEF, CurvlinopsEF or AsdlEF."
                )
            leaves.append(module)
    return leaves


class NotAChainError(ValueError):
    """The model is not a chain of layers, which BackPACK's second order needs."""


def _check_chain(iface: BackPackInterface, net: nn.Module, leaves: list[nn.Module],
                 x: Tensor, extension: BackpropExtension) -> None:
    """Refuse a custom container whose output is not its layers applied one after the
    other (BackPACK's second-order backpropagation assumes that chain)."""
    with torch.no_grad():
        out, chain = net(x), x
        for module in leaves:
            chain = module(chain)
    if chain.shape != out.shape or not torch.allclose(chain, out, rtol=1e-5, atol=1e-6):
        raise NotAChainError(
            f"{type(iface).__name__}: BackPACK's second-order extension "
            f"{type(extension).__name__} needs a chain of layers: an nn.Sequential, or a "
            f"module whose forward calls its layers one after the other with nothing in "
            f"between; the output of {type(net).__name__} is not its layers applied in "
            "order (a residual connection, a functional operation or a reused layer). "
            "Use TorchFuncGGN, CurvlinopsGGN or AsdlGGN."
        )


@contextmanager
def _hooked(modules: list[nn.Module]) -> Iterator[None]:
    """Install BackPACK's IO and backward hooks on ``modules`` for one call only."""
    handles = []
    _reset_hook_kind(modules)
    try:
        for module in modules:
            if getattr(module, "_backpack_extend", False):
                continue  # extended by the user already: its hooks are in place
            handles.append(module.register_forward_hook(hook_store_io))
            handles.append(module.register_full_backward_hook(hook_run_extensions))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in modules:
            memory_cleanup(module)
        _reset_hook_kind(modules)


def _reset_hook_kind(modules: list[nn.Module]) -> None:
    """Let modules without backward hooks take either kind of hook again.

    PyTorch remembers whether a module ever had a (non-)full backward hook, even after
    the hook is removed; ASDL's non-full hooks would otherwise lock BackPACK's full
    hooks out of the module for good (and vice versa).
    """
    for module in modules:
        if not module._backward_hooks:
            module._is_full_backward_hook = None

from laplace.utils.reexports import reexports  # noqa: E402

__getattr__ = reexports(__name__, ("Likelihood",))
