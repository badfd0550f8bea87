"""Argument checks of ``LaplaceBNN``: each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def check_finite(name: str, value: Tensor | None) -> None:
    """``value`` has no NaN or infinite entry (``None`` passes)."""
    if value is None:
        return
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s).")


def check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    """``value`` is a finite number > 0 (an ``int`` with ``integer``)."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be a positive integer, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, not {value!r}.") from None
    if not math.isfinite(number) or number <= 0:
        kind = "integer" if integer else "finite number"
        raise ValueError(f"{name} must be a positive {kind}, not {value!r}.")


def check_non_negative(name: str, value: Tensor | float | None) -> None:
    """``value`` (a noise variance, or a tensor of them) is finite and ≥ 0."""
    if value is None or isinstance(value, bool):
        return
    tensor = torch.as_tensor(value)
    check_finite(name, tensor)
    if bool((tensor < 0).any()):
        raise ValueError(f"{name} must be non-negative (noise variances); got a minimum of "
                         f"{float(tensor.min()):.3g}.")


def check_training_data(train_X: Tensor, train_Y: Tensor, train_Yvar: Tensor | None) -> None:
    """``train_X`` ``(n, d)``, ``train_Y`` ``(n, m)`` and ``train_Yvar`` ``(n, m)``: finite,
    matching ``n``, non-negative variances, at least one point."""
    if train_X.ndim != 2:
        raise ValueError(f"train_X must be (n, d); got shape {tuple(train_X.shape)}.")
    if train_Y.ndim != 2:
        raise ValueError(f"train_Y must be (n, m); got shape {tuple(train_Y.shape)}.")
    if train_X.shape[0] != train_Y.shape[0]:
        raise ValueError(f"train_X has {train_X.shape[0]} points but train_Y has "
                         f"{train_Y.shape[0]}.")
    if train_X.shape[0] == 0:
        raise ValueError("train_X is empty: LaplaceBNN needs at least one training point.")
    if train_Yvar is not None and train_Yvar.shape != train_Y.shape:
        raise ValueError(f"train_Yvar has shape {tuple(train_Yvar.shape)}; train_Y has "
                         f"{tuple(train_Y.shape)}.")
    check_finite("train_X", train_X)
    check_finite("train_Y", train_Y)
    check_non_negative("train_Yvar", train_Yvar)


def check_query(name: str, X: Tensor, d: int) -> None:
    """A query ``(*b, q, d)``: at least one point, ``d`` features, finite."""
    if X.ndim < 2 or X.shape[-1] != d:
        raise ValueError(f"{name} must have shape (*batch, q, {d}); got {tuple(X.shape)}.")
    if X.shape[-2] == 0:
        raise ValueError(f"{name} has no points (q = 0): shape {tuple(X.shape)}.")
    check_finite(name, X)
