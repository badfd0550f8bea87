"""Query points shared by every element of a batch, which ``posterior`` computes once.

BoTorch's noisy acquisition functions (``qLogNoisyExpectedImprovement``,
``qLogNoisyExpectedHypervolumeImprovement``, ``qLogNParEGO``) ask a model that is not a
GPyTorch model for the joint posterior at ``[X_baseline; X]`` in every evaluation: each
of the ``b`` batch elements (restarts, raw samples) repeats the ``n_b`` baseline points,
the same in every call of the optimisation. A linearized network's rows cost ``O(P·n)``
each (``J Bᵀ`` of the sample-space covariance), so a call paid ``b·(n_b + q)`` rows where
``n_b + b·q`` are new: with 63 baseline points, ``q = 4`` and four restarts, four times
the rows and most of the acquisition's CPU (a GP caches its baseline the same way,
through BoTorch's cached root decomposition).

``shared_points`` finds those points, and the pending points that BoTorch appends last:
leading and trailing points the same in every batch element (or those of the previous
call, ``SharedPointsCache``) that carry no gradient. Points that carry
one are never shared, so ``posterior`` stays differentiable in every point it is given:
BoTorch's baseline is a buffer, while a batch of optimisation variables that happen to
coincide (restarts from one initial condition) does carry gradients.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from laplace import SharedRows

#: Golden-ratio weights of the gradient probe: generic (no cancellation by symmetry) and
#: deterministic (the global random state, which BoTorch's samplers use, is not touched).
_PROBE_STEP = 0.6180339887498949


class SharedPointsCache(NamedTuple):
    """The shared points of the last query of ``q`` points: ``lead`` leading and ``trail``
    trailing ones, transformed ``(lead + trail, d)``, for the Gaussian and the outputs they
    were computed with, and their ``SharedRows``."""

    q: int
    lead: int
    trail: int
    points: Tensor
    gaussian: Any
    outputs: tuple[int, ...]
    rows: SharedRows


def shared_points(X_tf: Tensor, cache: SharedPointsCache | None, gaussian: Any,
                  outputs: tuple[int, ...]) -> tuple[int, int]:
    """``(lead, trail)``: how many leading and trailing points of ``X_tf`` ``(*b, q, d)``
    ``posterior`` may compute once — those of ``cache`` where every batch element has
    them, else the leading and trailing runs of points equal in all ``b > 1`` elements
    (BoTorch's baseline comes first, pending points last) — leaving at least one point
    and none that carries a gradient. ``(0, 0)``: none."""
    q = X_tf.shape[-2]
    if q < 2 or _functorch_wrapped(X_tf):
        return 0, 0
    lead, trail = _cached_counts(X_tf, cache, gaussian, outputs)
    if not (lead or trail) and X_tf.shape[:-2].numel() > 1:
        first = X_tf[(0,) * (X_tf.ndim - 2)]
        equal = (X_tf == first).all(-1).reshape(-1, q).all(0).int()  # (q,) same everywhere
        lead = min(int(equal.cumprod(0).sum()), q - 1)
        trail = min(int(equal.flip(0).cumprod(0).sum()), q - 1 - lead)
    lead = lead if lead and carries_no_gradient(X_tf[..., :lead, :]) else 0
    trail = trail if trail and carries_no_gradient(X_tf[..., q - trail:, :]) else 0
    return lead, trail


def _cached_counts(X_tf: Tensor, cache: SharedPointsCache | None, gaussian: Any,
                   outputs: tuple[int, ...]) -> tuple[int, int]:
    if (cache is None or cache.gaussian is not gaussian or cache.outputs != outputs
            or cache.q != X_tf.shape[-2]):
        return 0, 0
    points = cache.points
    if points.device != X_tf.device or points.dtype != X_tf.dtype:
        return 0, 0
    rows = torch.cat([X_tf[..., :cache.lead, :], X_tf[..., cache.q - cache.trail:, :]], dim=-2)
    return (cache.lead, cache.trail) if bool((rows == points).all()) else (0, 0)


def carries_no_gradient(X: Tensor) -> bool:
    """Whether ``X`` depends on no tensor that requires gradients (with gradients on): a
    backward of a generic weighting of ``X`` reaches each of its graph's leaves with zero."""
    if not (torch.is_grad_enabled() and X.requires_grad):
        return True
    leaves = _graph_leaves(X.grad_fn)
    if X.grad_fn is None or not leaves:  # X itself is the leaf, or a graph without leaves
        return False
    weights = torch.arange(X.numel(), dtype=X.dtype, device=X.device).mul(_PROBE_STEP)
    weights = (1.0 + weights.frac()).reshape(X.shape)
    grads = torch.autograd.grad(X, leaves, grad_outputs=weights, retain_graph=True,
                                allow_unused=True)
    return all(g is None or not bool(g.any()) for g in grads)


def _graph_leaves(fn: Any) -> list[Tensor]:
    """The tensors that require gradients at the leaves of the autograd graph ``fn``."""
    leaves, seen, stack = [], set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad
            leaves.append(node.variable)
        else:
            stack.extend(child for child, _ in node.next_functions)
    return leaves


def _functorch_wrapped(X: Tensor) -> bool:
    """Under ``torch.func`` transforms gradients are not in ``requires_grad``: no sharing."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(X))
