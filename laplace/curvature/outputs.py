"""Output-space helpers shared by every curvature backend and by ``kfac``.

The loss's Hessian with respect to the network outputs (``Λₙ = SₙᵀSₙ``: its square
root, diagonal and single rows), sampled output gradients for the Monte Carlo GGN,
targets shaped like the outputs, and the last layer's features. They sit below
``curvature.py`` so that the layer-hook code in ``kfac.py`` can use them without
importing the interfaces that call it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from laplace.utils.data import Inputs
from laplace.utils.enums import Likelihood


def sampled_output_grads(f: Tensor, likelihood: Likelihood, mc_samples: int) -> Tensor:
    """Gradients ``∂ lossfunc(f, ỹ) / ∂f`` for labels ``ỹ`` drawn from the model:
    ``(mc_samples, n, K)``, with ``E[g gᵀ]`` the output Hessian of ``lossfunc``."""
    f = f.detach()
    if likelihood == Likelihood.REGRESSION:
        # MSELoss(sum): g = 2(f − ỹ), ỹ ~ N(f, ½ I), so E[g gᵀ] = 2 I.
        return 2**0.5 * torch.randn((mc_samples, *f.shape), dtype=f.dtype, device=f.device)
    p = torch.softmax(f, dim=-1)
    labels = torch.multinomial(p, mc_samples, replacement=True).T  # (s, n)
    onehot = nn.functional.one_hot(labels, f.shape[-1]).to(f.dtype)
    return p.unsqueeze(0) - onehot


def _targets(y: Tensor, f: Tensor, likelihood: Likelihood) -> Tensor:
    """Targets matching flattened outputs ``f`` ``(n·m, K)``; ``ValueError`` naming both
    shapes when they cannot (a backend called directly with other targets)."""
    expected = f.numel() if likelihood == Likelihood.REGRESSION else f.shape[0]
    if y.numel() != expected:
        what = "outputs" if likelihood == Likelihood.REGRESSION else "rows of logits"
        raise ValueError(f"targets of shape {tuple(y.shape)} do not match the model's "
                         f"{what} {tuple(f.shape)}.")
    if likelihood == Likelihood.REGRESSION:
        return y.reshape(f.shape)
    return y.reshape(-1)


def output_hessian_sqrt(f: Tensor, likelihood: Likelihood, factor: float) -> Tensor:
    """``Sₙ`` ``(n, K, K)`` with ``SₙᵀSₙ`` the Hessian of ``factor·loss`` w.r.t. ``fₙ``.

    Regression: ``factor·2·I = I``. Classification: ``diag(p) − ppᵀ = SᵀS`` with
    ``S = diag(√p) − √p pᵀ``.
    """
    n, K = f.shape
    if likelihood == Likelihood.REGRESSION:
        scale = (2 * factor) ** 0.5
        eye = torch.eye(K, device=f.device, dtype=f.dtype) * scale
        return eye.expand(n, K, K)
    p = torch.softmax(f, dim=-1)
    sp = p.sqrt()
    return torch.diag_embed(sp) - sp.unsqueeze(-1) * p.unsqueeze(-2)


def output_hessian_diag(f: Tensor, likelihood: Likelihood, factor: float) -> Tensor:
    """Diagonal of the output Hessian ``Λₙ``: ``(n, K)`` (``p(1 − p)`` or ``2·factor``)."""
    if likelihood == Likelihood.REGRESSION:
        return torch.full_like(f, 2 * factor)
    p = torch.softmax(f, dim=-1)
    return factor * p * (1 - p)


def output_hessian_sqrt_row(f: Tensor, likelihood: Likelihood, factor: float, c: int) -> Tensor:
    """Row ``c`` of ``Sₙ`` for every point, ``(n, K)``, without forming ``(n, K, K)``."""
    if likelihood == Likelihood.REGRESSION:
        row = torch.zeros_like(f)
        row[:, c] = (2 * factor) ** 0.5
        return row
    p = torch.softmax(f, dim=-1)
    row = -p * p[:, c : c + 1].sqrt()
    row[:, c] += p[:, c].sqrt()
    return row * factor**0.5


def find_last_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the last ``nn.Linear`` in ``model.modules()`` order."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ValueError("Last-layer Laplace needs a model with an nn.Linear output layer.")
    return last


def model_last_layer(model: nn.Module) -> nn.Linear:
    """A ``FeatureExtractor``'s last layer (found by execution order), else the last
    ``nn.Linear`` in registration order."""
    layer = getattr(model, "last_layer", None)
    return layer if isinstance(layer, nn.Linear) else find_last_layer(model)[1]


def features_and_outputs(model: nn.Module, x: Inputs) -> tuple[Tensor, Tensor]:
    """Inputs of the last ``nn.Linear`` (features ``φ``) and the model outputs."""
    if hasattr(model, "forward_with_features"):
        f, phi = model.forward_with_features(x)
        return phi, f
    _, layer = find_last_layer(model)
    store: dict[str, Tensor] = {}
    handle = layer.register_forward_hook(lambda m, inp, out: store.__setitem__("phi", inp[0]))
    try:
        f = model(x)
    finally:
        handle.remove()
    return store["phi"], f


def last_layer_alone(model: nn.Module, x: Inputs) -> tuple[nn.Linear, Tensor] | None:
    """The last ``nn.Linear`` and its detached input features ``(n, F)``, for backends
    that run on that layer alone; ``None`` when the model's output is not that layer's
    output (a head after it), so the whole model must run."""
    with torch.no_grad():
        phi, f = features_and_outputs(model, x)
        layer = model_last_layer(model)
        out = layer(phi)
    if out.shape == f.shape and torch.equal(out, f):
        return layer, phi.detach()
    return None
