"""Learned input warping (BoTorch's ``Warp``) for random-feature networks, by the evidence.

BoTorch's ``Warp`` input transform maps chosen inputs through the Kumaraswamy CDF
``1 − (1 − x^{c₁})^{c₀}``, whose concentrations a GP learns with its hyperparameters
(MAP under the transform's priors). ``LaplaceBNN`` learns them for its random-feature
networks (the default families), alternating ``WARP_CYCLES`` times between

1. ``ℓ``, ``δ`` and ``σ`` by the network's evidence at the warped inputs, with their
   hyperpriors (``lengthscales.fit_random_feature_network``), and
2. the concentrations of every ``Warp`` of the input transform jointly with ``ℓ``
   (``fit_warp``): the same evidence (``feature_evidence.random_feature_evidence``, whose
   Gram matrix has a closed-form gradient in the inputs, chained by autograd through the
   transform) plus the log densities of the transform's concentration priors,

then fits ``ℓ``, ``δ`` and ``σ`` once more. Fitting ``ℓ`` with the warp matters: a warp
that straightens the function goes with longer length scales than the unwarped fit's,
and the warp alone, at those short length scales, stays near the identity.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from botorch.exceptions.warnings import InputDataWarning
from botorch.models.transforms.input import InputTransform, Warp
from torch import Tensor, nn

from lapbo import validation
from lapbo.feature_evidence import random_feature_evidence
from lapbo.lengthscales import (
    EXACT_FIT_ROWS,
    FIT_FEATURES,
    LENGTHSCALE_BOUNDS,
    _minimize,
    _per_output_noise,
)
from lapbo.networks import random_feature_layer

#: Alternations of the length-scale fit and the warp fit (then a last length-scale fit).
WARP_CYCLES = 2
#: Bounds of each concentration ``c₀``, ``c₁`` (1: no warping).
CONCENTRATION_BOUNDS = (1e-3, 1e3)
#: L-BFGS iterations of one warp fit.
MAX_ITER = 100


def learnable_warps(transform: InputTransform | None) -> list[Warp]:
    """The ``Warp`` parts of ``transform`` whose concentrations require gradients."""
    if transform is None:
        return []
    return [part for part in validation.transform_parts(transform)
            if isinstance(part, Warp) and part.concentration0.requires_grad]


def copy_concentrations(source: InputTransform | None, target: InputTransform | None) -> None:
    """Warm start: ``target``'s learnable warps take ``source``'s concentrations where the
    two have warps of the same shapes (the bounds of their normalisation stay those of
    ``target``'s data)."""
    new, old = learnable_warps(target), learnable_warps(source)
    if len(new) != len(old):
        return
    with torch.no_grad():
        for a, b in zip(new, old):
            for name in ("concentration0", "concentration1"):
                p, q = getattr(a, name), getattr(b, name)
                if p.shape == q.shape:
                    p.copy_(q.to(p))


class _Preprocess(nn.Module):
    """``transform.preprocess_transform`` as a module's forward (for ``functional_call``)."""

    def __init__(self, transform: InputTransform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, X: Tensor) -> Tensor:
        return self.transform.preprocess_transform(X)


def fit_with_warps(model: Any, X: Tensor, Y: Tensor, Yvar: Tensor | None
                   ) -> tuple[Tensor, Tensor, Tensor | None]:
    """``WARP_CYCLES`` alternations of ``model``'s random-feature fit (``ℓ``, ``δ``, ``σ``)
    and ``fit_warp`` on a ``LaplaceBNN`` whose input transform has learnable warps;
    returns its training data ``(X, Y, Yvar)`` at the fitted warp, for the last fit."""
    for _ in range(WARP_CYCLES):
        model._fit_random_feature_network(X, Y, Yvar)
        fit_warp(model.input_transform, model._train_X.to(model.sigma_noise.device), Y, Yvar,
                 random_feature_layer(model.net), model.prior_precision, model.sigma_noise,
                 model._prior_mean_list())
        X, Y, Yvar = model._training_data()
    return X, Y, Yvar


def fit_warp(transform: InputTransform, train_X: Tensor, Y: Tensor, Yvar: Tensor | None,
             layer: nn.Module, prior_precision: Tensor, sigma: Tensor,
             prior_mean: list[Tensor] | None = None, max_iter: int = MAX_ITER) -> float:
    """Set the concentrations of ``transform``'s learnable warps and the length scales of
    ``layer`` to the maximum of the network's evidence (at ``δ``, ``σ``) plus the
    concentration priors' log densities (in place).

    Args:
        transform: the model's input transform (with at least one learnable ``Warp``).
        train_X: ``(n, d)`` untransformed training inputs.
        Y: ``(n, K)`` outcome-transformed targets; Yvar: ``(n, K)`` known noise or ``None``.
        layer: the network's ``networks.ScaledRandomFeatures`` (length scales, kernel,
            trend).
        prior_precision: ``δ`` (one entry, or weights and bias); sigma: ``σ`` (0-d).
        prior_mean: ``[W₀ (K, N), b₀ (K,)]`` of the output layer (default zero).

    Returns:
        The objective (negative log evidence plus priors) at the optimum.
    """
    warps = learnable_warps(transform)
    wrapper = _Preprocess(transform)
    names = {id(p): name for name, p in wrapper.named_parameters()}
    params = [p for w in warps for p in (w.concentration0, w.concentration1)]
    keys = [names[id(p)] for p in params]
    sizes = [p.numel() for p in params]
    dtype = torch.float64
    X = train_X.to(dtype)
    Y, Yvar = Y.to(dtype), None if Yvar is None else Yvar.to(dtype)
    log_ls = layer.lengthscale.detach().to(dtype).log()
    delta = prior_precision.detach().reshape(-1).to(dtype)
    noise = (sigma.detach().to(dtype).square().expand(len(X)) if Yvar is None
             else Yvar.clamp_min(1e-12))
    W0, b0 = ((None, Y.new_zeros(Y.shape[-1])) if prior_mean is None
              else (prior_mean[0].detach().to(dtype), prior_mean[1].detach().to(dtype)))
    priors = [getattr(w, f"concentration{i}_prior", None) for w in warps for i in (0, 1)]

    k = sum(sizes)
    # above EXACT_FIT_ROWS, the first FIT_FEATURES features, as the length-scale fit
    omega = layer.frequencies(FIT_FEATURES if len(X) > EXACT_FIT_ROWS else None).to(dtype)

    def objective(u: Tensor) -> Tensor:  # u = (log c (k,), log ℓ (d,))
        v = torch.clamp(u, *log_bounds)
        c, log_ls = v[:k].exp().split(sizes), v[k:]
        values = {key: ci.reshape(p.shape) for key, ci, p in zip(keys, c, params)}
        Xw = torch.func.functional_call(wrapper, values, (X,)).to(dtype)
        trend = layer.trend_features(Xw) if layer.has_trend else None
        r = Y - b0
        if W0 is not None and bool(W0.any()):
            r = r - layer.features(Xw, log_ls.exp()) @ W0.mT
        value = sum(random_feature_evidence(Xw, omega, trend, r_k, log_ls, delta, v_k)
                    for r_k, v_k in _per_output_noise(r, noise))
        for prior, ci in zip(priors, c):
            if prior is not None:
                value = value + prior.log_prob(ci).sum()
        return -value

    start = torch.cat([torch.cat([p.detach().reshape(-1).to(X) for p in params]).clamp(
        *CONCENTRATION_BOUNDS).log(), log_ls.clamp(*map(math.log, LENGTHSCALE_BOUNDS))])
    log_bounds = tuple(torch.cat([log_ls.new_full((k,), math.log(c)),
                                  torch.full_like(log_ls, math.log(b))])
                       for c, b in zip(CONCENTRATION_BOUNDS, LENGTHSCALE_BOUNDS))
    u, value = _minimize(objective, start, log_bounds, max_iter)
    with torch.no_grad():
        v = torch.clamp(u, *log_bounds)
        for p, c in zip(params, v[:k].exp().split(sizes)):
            p.copy_(c.reshape(p.shape).to(p))
        layer.lengthscale.copy_(v[k:].exp().to(layer.lengthscale))
    return value


def check_warp_support(transform: Any, candidates: list[dict[str, Any]], net: Any) -> None:
    """A learnable ``Warp`` is fitted for random-feature networks only: every candidate
    (or the model's own network, without candidates) must be ``net="random_features"``.
    Warns (``InputDataWarning``) for a warp without ``bounds``, which BoTorch normalises by
    the training inputs' range: a query beyond it is clamped to its edge, where the
    Kumaraswamy CDF can be steepest."""
    warps = learnable_warps(transform)
    if not warps:
        return
    if any(getattr(w._normalize, "learn_bounds", False) for w in warps):
        warnings.warn(
            "input_transform Warp has no bounds: BoTorch normalises its inputs by the range "
            "of train_X, and queries beyond that range are clamped to its edge. Pass "
            "Warp(..., bounds=<the search space's bounds>).", InputDataWarning, stacklevel=3)
    nets = [options.get("net", net) for options in candidates] if candidates else [net]
    for i, value in enumerate(nets):
        if value != "random_features":
            where = f"candidates[{i}] has net={value!r}" if candidates else f"net={value!r}"
            raise ValueError(
                "input_transform has a Warp with learnable concentrations, which LaplaceBNN "
                "fits by the evidence of random-feature networks (its default family); "
                f"{where}: use net='random_features' (or the default family), or fix the "
                "warp (requires_grad_(False)).")
