"""Layer-wise curvature from forward hooks on ``nn.Linear`` and ``nn.Conv2d`` layers.

One forward pass records each layer's input ``a`` and output ``s``; backpropagating
output vectors gives the per-sample gradients ``g`` w.r.t. ``s``:

* GGN: the columns of ``Sₙᵀ`` (``Λₙ = SₙᵀSₙ``), one backward pass per output;
* EF: the gradient of the per-sample loss, one backward pass.

From ``(a, g)`` two curvatures follow without per-sample Jacobians:

* **KFAC** (``kfac``): the weight block ``kron(B, A)`` with ``B = Σ g gᵀ`` and
  ``A = Σ a aᵀ / N``; the bias block is ``B``. Convolutions treat every output position
  as an extra data point (the "expand" convention of Curvlinops and ASDL): ``A``
  averages the unfolded patches over positions too. Factors are returned per batch and
  add up over batches (laplace-torch's convention).
* **the exact diagonal** (``diagonal``): per sample, the weight gradient is
  ``Σ_positions g aᵀ``, so its square needs only ``(n, out, in)`` tensors per output —
  for ``nn.Linear`` directly ``(g²)ᵀ(a²)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor, nn

from laplace.curvature.layers import nonzero_padding, shared_parameters
from laplace.curvature.outputs import (
    _targets,
    features_and_outputs,
    output_hessian_sqrt_row,
    sampled_output_grads,
)
from laplace.utils.data import Inputs
from laplace.utils.enums import Likelihood
from laplace.utils.errors import UnsupportedLayerError
from laplace.utils.matrix import Kron


class HookedInterface(Protocol):
    """What this module uses of a ``CurvatureInterface`` (which calls it).

    A protocol rather than ``CurvatureInterface`` itself, so that ``curvature.py``
    imports this module and not the reverse.
    """

    model: nn.Module
    params: list[Tensor]
    likelihood: Likelihood
    factor: float
    last_layer: bool
    lossfunc: nn.Module

SUPPORTED = (nn.Linear, nn.Conv2d)


def kfac_modules(
    iface: HookedInterface, strict: bool = True
) -> list[tuple[nn.Module, list[str]]] | None:
    """Modules owning the trainable parameters, in parameter order.

    Raises:
        ValueError: a trainable parameter belongs to another kind of module (with
            ``strict``; otherwise ``None`` is returned).
    """
    wanted = {id(p) for p in iface.params}
    shared = shared_parameters(iface.model, iface.params)
    if shared:
        if not strict:
            return None
        raise ValueError(
            f"KFAC (hessian_structure='kron') needs each parameter in one module; "
            f"{'; '.join(shared)} are shared (tied weights). Use 'full' or 'diag'.")
    found: list[tuple[nn.Module, list[str]]] = []
    for name, module in iface.model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) in wanted]
        if not own:
            continue
        conv_unsupported = isinstance(module, nn.Conv2d) and (
            module.groups != 1 or isinstance(module.padding, str) or nonzero_padding(module)
        )
        if not isinstance(module, SUPPORTED) or conv_unsupported:
            if not strict:
                return None
            raise UnsupportedLayerError(
                f"KFAC (hessian_structure='kron') supports nn.Linear and nn.Conv2d only "
                f"(numeric zero padding, groups=1); module {name!r} of type "
                f"{type(module).__name__} has trainable parameters. Use 'full' or 'diag', "
                "or freeze that module (requires_grad=False)."
            )
        found.append((module, [n for n, _ in own]))
    return found


def _unfold(module: nn.Conv2d, a: Tensor) -> Tensor:
    """Patches ``(n, in·kh·kw, positions)`` of a convolution's input."""
    return nn.functional.unfold(
        a, module.kernel_size, dilation=module.dilation, padding=module.padding,
        stride=module.stride,
    )


def _as_rows(module: nn.Module, t: Tensor, is_input: bool) -> tuple[Tensor, int]:
    """Inputs or output gradients as rows ``(n·positions, features)`` and positions."""
    t = _per_sample(module, t, is_input)  # (n, positions, features)
    return t.reshape(-1, t.shape[-1]), t.shape[1]


def _per_sample(module: nn.Module, t: Tensor, is_input: bool) -> Tensor:
    """Inputs or output gradients as ``(n, positions, features)``."""
    if isinstance(module, nn.Conv2d):
        t = _unfold(module, t) if is_input else t.flatten(start_dim=2)
        return t.transpose(1, 2)
    return t.reshape(t.shape[0], -1, t.shape[-1])


class _Recording:
    """Inputs and outputs of the hooked layers during one forward pass."""

    def __init__(self, iface: HookedInterface, x: Inputs, y: Tensor,
                 modules: list[tuple[nn.Module, list[str]]]) -> None:
        self.iface, self.modules = iface, modules
        inputs: dict[int, Tensor] = {}
        outputs: dict[int, Tensor] = {}

        def hook(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            inputs[id(m)] = inp[0].detach()
            outputs[id(m)] = out

        handles = [m.register_forward_hook(hook) for m, _ in modules]
        try:
            with torch.enable_grad():
                f = iface.model(x)
        finally:
            for h in handles:
                h.remove()
        #: outputs ``(n, ..., K)``: several data points per sample
        self.per_position = f.ndim > 2
        self.f = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.unsqueeze(-1)
        self.loss = iface.lossfunc(self.f, _targets(y, self.f, iface.likelihood))
        self.inputs = [inputs[id(m)] for m, _ in modules]
        self.outputs = [outputs[id(m)] for m, _ in modules]

    def output_gradients(self, fisher: str, mc_samples: int = 1) -> Iterator[tuple[Tensor, ...]]:
        """Per-sample gradients w.r.t. each layer output, scaled so that their outer
        products sum to the curvature (one tuple per backpropagated vector).

        ``fisher``: ``"ggn"`` (rows of the exact output-Hessian square root), ``"mc"``
        (``mc_samples`` sampled output gradients: the Monte Carlo GGN) or ``"ef"``.
        """
        iface = self.iface
        f = self.f.detach()
        if fisher == "ggn":
            rows = (output_hessian_sqrt_row(f, iface.likelihood, iface.factor, c)
                    for c in range(f.shape[-1]))
        elif fisher == "mc":
            G = sampled_output_grads(f, iface.likelihood, mc_samples)
            rows = iter(G * (iface.factor / mc_samples) ** 0.5)
        else:
            grads = torch.autograd.grad(self.loss, self.outputs)
            yield tuple(g * iface.factor**0.5 for g in grads)
            return
        for row in rows:
            yield torch.autograd.grad((self.f * row).sum(), self.outputs, retain_graph=True)


def kfac(
    iface: HookedInterface, x: Inputs, y: Tensor, N: int, fisher: str, mc_samples: int = 1
) -> tuple[Tensor, Kron]:
    """Loss and KFAC factors of one batch (see the module docstring); ``fisher`` and
    ``mc_samples`` as for ``_Recording.output_gradients``."""
    if iface.last_layer and getattr(iface.model, "feature_reduction", None) is not None:
        return _reduced_last_layer_kfac(iface, x, y, N, fisher)
    rec = _Recording(iface, x, y, kfac_modules(iface))
    Bs: list[Tensor | float] = [0.0] * len(rec.modules)
    if fisher == "ggn" and _is_output_layer(rec):
        Bs[0] = _summed_output_hessian(rec)  # no backward pass per output needed
    else:
        for grads in rec.output_gradients(fisher, mc_samples):
            for i, (m, _) in enumerate(rec.modules):
                g, _ = _as_rows(m, grads[i], is_input=False)
                Bs[i] = Bs[i] + g.T @ g
    kfacs: list[list[Tensor]] = []
    for i, (m, names) in enumerate(rec.modules):
        a, positions = _as_rows(m, rec.inputs[i], is_input=True)
        for name in names:
            kfacs.append([Bs[i], a.T @ a / (N * positions)] if name == "weight" else [Bs[i]])
    return iface.factor * rec.loss.detach(), Kron(kfacs)


def _reduced_last_layer_kfac(
    iface: HookedInterface, x: Inputs, y: Tensor, N: int, fisher: str
) -> tuple[Tensor, Kron]:
    """KFAC of a last layer on pooled features ``φ`` ``(n, D)`` (``feature_reduction``):
    ``[B, φᵀφ / N]`` with ``B`` from the model's own outputs ``f`` ``(n, K)``: ``Σ Λₙ``
    (GGN) or ``Σ gₙgₙᵀ`` of the loss gradients w.r.t. ``f`` (EF); the bias block is ``B``."""
    with torch.no_grad():
        phi, f = features_and_outputs(iface.model, x)
    phi, f = phi.reshape(-1, phi.shape[-1]), f.reshape(-1, f.shape[-1])
    f = f.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = iface.lossfunc(f, _targets(y, f, iface.likelihood))
        if fisher == "ggn":
            B = _output_hessian_sum(iface, f.detach())
        else:
            g = torch.autograd.grad(loss, f)[0] * iface.factor**0.5
            B = g.T @ g
    kfacs = [[B, phi.T @ phi / N]]
    if iface.params[-1].ndim == 1:
        kfacs.append([B])
    return iface.factor * loss.detach(), Kron(kfacs)


def _is_output_layer(rec: _Recording) -> bool:
    """One hooked layer whose output *is* the model output (last-layer Laplace)."""
    out = rec.outputs[0]
    return (len(rec.modules) == 1 and out.numel() == rec.f.numel()
            and torch.equal(out.detach().reshape(rec.f.shape), rec.f.detach()))


def _summed_output_hessian(rec: _Recording) -> Tensor:
    """``Σₙ Λₙ`` ``(K, K)``: the ``B`` factor of the output layer under the GGN."""
    return _output_hessian_sum(rec.iface, rec.f.detach())


def _output_hessian_sum(iface: HookedInterface, f: Tensor) -> Tensor:
    """``Σₙ Λₙ`` ``(K, K)`` of ``factor · lossfunc`` at outputs ``f`` ``(n, K)``."""
    if iface.likelihood == Likelihood.REGRESSION:
        return 2 * iface.factor * len(f) * torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
    p = torch.softmax(f, dim=-1)
    return iface.factor * (torch.diag(p.sum(0)) - p.T @ p)


def diagonal(
    iface: HookedInterface, x: Inputs, y: Tensor, fisher: str, mc_samples: int = 1
) -> tuple[Tensor, Tensor] | None:
    """Loss and the exact curvature diagonal ``(P,)`` of one batch, or ``None`` when a
    trainable parameter lives outside ``nn.Linear``/``nn.Conv2d`` layers (or in a layer
    ``kfac_modules`` refuses), or when a GGN's model output is ``(n, ..., K)``: every
    output position is then a data point, and one backward pass per output row would
    sum the gradients of a sample's positions before squaring them (the EF's per-sample
    gradient is that sum, so it stays here)."""
    modules = kfac_modules(iface, strict=False)
    if modules is None:
        return None
    rec = _Recording(iface, x, y, modules)
    if rec.per_position and fisher != "ef":
        return None
    acts = [_per_sample(m, a, is_input=True) for (m, _), a in zip(modules, rec.inputs)]
    diag: list[list[Tensor]] = [[0.0] * len(names) for _, names in modules]
    for grads in rec.output_gradients(fisher, mc_samples):
        for i, (m, names) in enumerate(modules):
            g = _per_sample(m, grads[i], is_input=False)  # (n, positions, out)
            for j, name in enumerate(names):
                if name == "bias":
                    d = g.sum(1).square().sum(0)
                elif g.shape[1] == 1:
                    d = g[:, 0].square().T @ acts[i][:, 0].square()
                else:
                    d = torch.einsum("npo,npi->noi", g, acts[i]).square().sum(0)
                diag[i][j] = diag[i][j] + d
    flat = [d.reshape(-1) for (m, names), ds in zip(modules, diag) for d in ds]
    return iface.factor * rec.loss.detach(), torch.cat(flat)
