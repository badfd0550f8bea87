"""Native Kronecker-factored curvature (KFAC) for ``nn.Linear`` and ``nn.Conv2d``.

For a layer with inputs ``a`` and outputs ``s`` the block of weight ``W`` is
approximated by ``kron(B, A)`` with ``B = Σ g gᵀ`` over backpropagated output
vectors ``g`` and ``A = Σ a aᵀ / N``; the bias block is ``B``. Convolutions treat
every output position as an extra data point of its inputs (the "expand" convention
of Curvlinops and ASDL): ``A`` averages the unfolded patches over positions as well.
Factors are returned per batch and add up over batches (laplace-torch's convention).

GGN: ``g`` are the columns of ``Sₙᵀ`` (``Λₙ = SₙᵀSₙ``) backpropagated to ``s``.
EF: ``g`` is the gradient of the per-sample loss w.r.t. ``s``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from laplace.utils.data import Inputs
from laplace.utils.matrix import Kron

if TYPE_CHECKING:
    from laplace.curvature.curvature import CurvatureInterface

SUPPORTED = (nn.Linear, nn.Conv2d)


def kfac_modules(iface: CurvatureInterface) -> list[tuple[nn.Module, list[str]]]:
    """Modules owning the trainable parameters, in parameter order.

    Raises:
        ValueError: a trainable parameter belongs to a module KFAC cannot factor.
    """
    wanted = {id(p) for p in iface.params}
    found: list[tuple[nn.Module, list[str]]] = []
    for name, module in iface.model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) in wanted]
        if not own:
            continue
        if not isinstance(module, SUPPORTED):
            raise ValueError(
                f"KFAC (hessian_structure='kron') supports nn.Linear and nn.Conv2d only; "
                f"module {name!r} of type {type(module).__name__} has trainable parameters. "
                "Use 'full' or 'diag', or freeze that module (requires_grad=False)."
            )
        found.append((module, [n for n, _ in own]))
    return found


def _unfold(module: nn.Conv2d, a: Tensor) -> Tensor:
    """Patches ``(n, in·kh·kw, positions)`` of a convolution's input."""
    if module.groups != 1:
        raise ValueError("KFAC does not support grouped convolutions (groups > 1).")
    if isinstance(module.padding, str):
        raise ValueError("KFAC needs numeric Conv2d padding, not 'same'/'valid'.")
    return nn.functional.unfold(
        a, module.kernel_size, dilation=module.dilation, padding=module.padding,
        stride=module.stride,
    )


def _as_rows(module: nn.Module, t: Tensor, is_input: bool) -> tuple[Tensor, int]:
    """Inputs or output gradients as rows ``(n·positions, features)`` and positions."""
    if isinstance(module, nn.Conv2d):
        if is_input:
            t = _unfold(module, t)  # (n, in·kh·kw, positions)
        else:
            t = t.flatten(start_dim=2)  # (n, out, positions)
        positions = t.shape[-1]
        return t.transpose(1, 2).reshape(-1, t.shape[1]), positions
    positions = t[0].numel() // t.shape[-1]
    return t.reshape(-1, t.shape[-1]), positions


def kfac(
    iface: CurvatureInterface, x: Inputs, y: Tensor, N: int, fisher: str
) -> tuple[Tensor, Kron]:
    """Loss and KFAC factors of one batch (see the module docstring)."""
    from laplace.curvature.curvature import _targets, output_hessian_sqrt

    modules = kfac_modules(iface)
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
    f = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.unsqueeze(-1)
    targets = _targets(y, f, iface.likelihood)
    loss = iface.lossfunc(f, targets)
    outs = [outputs[id(m)] for m, _ in modules]
    Bs = [0.0] * len(modules)

    if fisher == "ggn":
        S = output_hessian_sqrt(f.detach(), iface.likelihood, iface.factor)
        for c in range(f.shape[-1]):
            grads = torch.autograd.grad((f * S[:, c, :]).sum(), outs, retain_graph=True)
            for i, (m, _) in enumerate(modules):
                g, _ = _as_rows(m, grads[i], is_input=False)
                Bs[i] = Bs[i] + g.T @ g
    else:
        grads = torch.autograd.grad(loss, outs)
        for i, (m, _) in enumerate(modules):
            g, _ = _as_rows(m, grads[i], is_input=False)
            Bs[i] = Bs[i] + iface.factor * (g.T @ g)

    kfacs: list[list[Tensor]] = []
    for i, (m, names) in enumerate(modules):
        a, positions = _as_rows(m, inputs[id(m)], is_input=True)
        for name in names:
            if name == "weight":
                A = a.T @ a / (N * positions)
                kfacs.append([Bs[i], A])
            else:
                kfacs.append([Bs[i]])
    return iface.factor * loss.detach(), Kron(kfacs)
