"""Diagonal SWAG: parameter variances from the SGD trajectory (Maddox et al., 2019).

Used by ``LargestVarianceSWAGSubnetMask`` to score parameters for subnetwork Laplace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from laplace.utils import checks
from laplace.utils.data import inputs_to, split_batch


def _param_vector(model: nn.Module) -> Tensor:
    return parameters_to_vector(model.parameters()).detach()


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def fit_diagonal_swag_var(
    model: nn.Module,
    train_loader: Any,
    criterion: Callable[[Tensor, Tensor], Tensor],
    n_snapshots_total: int = 40,
    snapshot_freq: int = 1,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    min_var: float = 1e-30,
) -> Tensor:
    """Fit diagonal SWAG and return the variance of every model parameter.

    SGD runs on a deep copy of ``model`` (the model itself is left untouched). A
    snapshot of the parameter vector is taken after the first epoch and then every
    ``snapshot_freq`` epochs (epochs ``0, f, 2f, ...``, as in laplace-torch), until
    ``n_snapshots_total`` snapshots are collected. The result is the per-parameter
    variance of the snapshots, ``E[θ²] − E[θ]²``, clamped below at ``min_var``.

    Args:
        model: the (trained) network.
        train_loader: a ``DataLoader`` of ``(X, y)`` or dict-like batches (the
            latter keyed ``"labels"`` for the targets and passed whole to the model).
        criterion: loss ``criterion(model(X), y)``, e.g. ``nn.CrossEntropyLoss()``.
        n_snapshots_total: number of snapshots.
        snapshot_freq: epochs between snapshots.
        lr, momentum, weight_decay: SGD hyperparameters.
        min_var: lower bound of the returned variances.

    Returns:
        ``(n_params,)`` variances, in the order of
        ``parameters_to_vector(model.parameters())`` (frozen parameters, which SGD
        does not move, get ``min_var``).
    """
    checks.torch_module(model)
    if not callable(criterion):
        raise TypeError(f"criterion must be a callable loss such as nn.MSELoss(), got "
                        f"{criterion!r}.")
    _check_positive_int(n_snapshots_total, "n_snapshots_total")
    _check_positive_int(snapshot_freq, "snapshot_freq")
    if lr < 0:
        raise ValueError(f"lr must be non-negative, got {lr}.")
    if min_var < 0:
        raise ValueError(f"min_var must be non-negative, got {min_var}.")

    _model = deepcopy(model)
    _model.train()
    trainable = [p for p in _model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameters (requires_grad=True) for SWAG.")
    device = trainable[0].device
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)

    # Welford's running mean / sum of squared deviations, accumulated in float64 so
    # that small variances are not lost to cancellation in E[θ²] − E[θ]².
    theta = _param_vector(_model)
    dtype = theta.dtype
    mean = torch.zeros_like(theta, dtype=torch.float64)
    m2 = torch.zeros_like(mean)
    n_snapshots = 0

    # Snapshots are taken after epochs 0, f, ..., (n - 1) f; later epochs would not
    # contribute to any snapshot, so they are not run.
    n_epochs = snapshot_freq * (n_snapshots_total - 1) + 1
    for epoch in range(n_epochs):
        n_batches = 0
        for batch in train_loader:
            X, y = split_batch(batch, "input_ids", "labels")
            X = inputs_to(X, device)
            y = y.to(device)
            optimizer.zero_grad()
            out = _model(X)
            if isinstance(out, Mapping) and "logits" in out:  # Hugging Face outputs
                out = out["logits"]
            loss = criterion(out, y)
            loss.backward()
            optimizer.step()
            n_batches += 1
        if n_batches == 0:
            raise ValueError("The data loader yielded no batches: nothing to fit SWAG on.")

        if epoch % snapshot_freq == 0:
            theta = _param_vector(_model).to(torch.float64)
            n_snapshots += 1
            delta = theta - mean
            mean += delta / n_snapshots
            m2 += delta * (theta - mean)

    variances = (m2 / n_snapshots).to(dtype)
    return torch.clamp(variances, min=min_var)
