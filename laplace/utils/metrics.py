"""Validation metrics and ``validate`` (laplace-torch's ``laplace.utils`` helpers).

``RunningNLLMetric`` follows the ``torchmetrics.Metric`` protocol (``update`` /
``compute`` / ``reset``) without depending on torchmetrics; ``validate`` accepts such
a metric object (a torchmetrics metric works too) or a plain callable loss.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laplace.utils import checks
from laplace.utils.data import inputs_to, split_batch
from laplace.utils.enums import LinkApprox, PredType

__all__ = ["Metric", "RunningNLLMetric", "get_nll", "validate"]


@runtime_checkable
class Metric(Protocol):
    """What ``validate`` needs from a running metric (torchmetrics' protocol)."""

    def update(self, *args: Any) -> None: ...

    def compute(self) -> Tensor: ...

    def reset(self) -> None: ...


class Predictive(Protocol):
    """What ``validate`` uses of a Laplace approximation (every ``BaseLaplace`` has it).

    A protocol rather than ``BaseLaplace`` itself: ``utils`` is the lowest layer and does
    not import ``laplace.posterior``.
    """

    model: nn.Module
    dict_key_x: str

    @property
    def _device(self) -> torch.device: ...

    def __call__(self, x: Any, **kwargs: Any) -> Tensor | tuple[Tensor, Tensor]: ...


def get_nll(out_dist: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log likelihood of integer ``targets`` under probabilities ``out_dist``.

    Args:
        out_dist: class probabilities ``(n, C)``.
        targets: class indices ``(n,)``.
    """
    return F.nll_loss(torch.log(out_dist), targets)


class RunningNLLMetric:
    """Mean negative log likelihood accumulated over batches.

    ``update(probs, targets)`` adds ``-Σ log probs[i, targets[i]]`` over the targets that
    are not ``ignore_index`` (as ``F.nll_loss(..., ignore_index=..., reduction="sum")``)
    and counts them; ``compute()`` returns the summed NLL divided by that count (``nan``
    before any valid target, like laplace-torch's ``0 / 0``); ``reset()`` clears both.
    Sums are kept in float64 whatever the dtype of ``probs``.

    Args:
        ignore_index: target value that is skipped (``-100``, as PyTorch's losses).
    """

    _sum_states = ("nll_sum", "n_valid_labels")  # summed over processes' shards

    def __init__(self, ignore_index: int = -100) -> None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer label, got {ignore_index!r}.")
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.nll_sum = torch.zeros((), dtype=torch.float64)
        self.n_valid_labels = torch.zeros((), dtype=torch.int64)

    def update(self, probs: Tensor, targets: Tensor) -> None:
        """Add a batch.

        Args:
            probs: class probabilities ``(..., C)``.
            targets: integer class indices of shape ``probs.shape[:-1]``.
        """
        if targets.numel() != probs[..., 0].numel():
            raise ValueError(
                f"RunningNLLMetric needs integer class labels of shape "
                f"{tuple(probs.shape[:-1])} for probabilities of shape {tuple(probs.shape)}, "
                f"got targets of shape {tuple(targets.shape)} (one-hot targets are not "
                "class labels)."
            )
        probs = probs.detach().reshape(-1, probs.shape[-1])
        targets = targets.detach().reshape(-1).to(probs.device)
        if targets.is_floating_point() and not bool((targets == targets.round()).all()):
            raise ValueError("RunningNLLMetric needs integer class targets; got fractional "
                             "values (soft labels), which would be truncated.")
        nll = F.nll_loss(
            torch.log(probs), targets.long(), ignore_index=self.ignore_index, reduction="sum"
        )
        device = probs.device
        self.nll_sum = self.nll_sum.to(device) + nll.to(torch.float64)
        self.n_valid_labels = self.n_valid_labels.to(device) + (
            targets != self.ignore_index
        ).sum()

    def compute(self) -> Tensor:
        if int(self.n_valid_labels) == 0:
            return torch.tensor(math.nan, dtype=torch.float64, device=self.nll_sum.device)
        return self.nll_sum / self.n_valid_labels


class MeanSquaredErrorMetric:
    """Running mean squared error per output (like torchmetrics'
    ``MeanSquaredError(num_outputs=C)``): ``compute()`` is ``(C,)``."""

    _sum_states = ("sse", "count")  # summed over processes' shards

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sse: Tensor | float = 0.0
        self.count = 0

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """``preds`` ``(n, C)`` against ``targets`` of ``n·C`` values."""
        preds = preds.reshape(preds.shape[0], -1)
        err = preds.double() - targets.reshape(preds.shape).double()
        self.sse = self.sse + err.square().sum(0)
        self.count += preds.shape[0]

    def compute(self) -> Tensor:
        return torch.as_tensor(self.sse, dtype=torch.float64) / max(self.count, 1)


def _is_metric(loss: Any) -> bool:
    return all(callable(getattr(loss, name, None)) for name in ("update", "compute", "reset"))


@torch.no_grad()
def validate(
    laplace: Predictive,
    val_loader: Any,
    loss: Metric | Callable[..., Tensor],
    pred_type: PredType | str = PredType.GLM,
    link_approx: LinkApprox | str = LinkApprox.PROBIT,
    n_samples: int = 100,
    dict_key_y: str = "labels",
) -> float:
    """Validation loss of the current posterior predictive over ``val_loader``.

    The predictive is called with ``fitting=True`` (as laplace-torch does), so a
    ``"reward_modeling"`` LA is validated like a classifier, on class probabilities.

    Args:
        laplace: a fitted Laplace approximation.
        val_loader: batches ``(X, y)`` or dict-like batches (targets under ``dict_key_y``;
            the whole batch is the model input).
        loss: either a metric object with ``update``/``compute``/``reset`` (e.g.
            ``RunningNLLMetric`` or a torchmetrics metric) — it is **reset first**, fed
            every batch, and ``compute().sum()`` is returned (the sum aggregates
            per-output metrics such as ``MeanSquaredError(num_outputs=C)``) — or a
            callable, applied once to the predictions and targets of the whole loader:
            ``loss(probs, y)`` for classification, ``loss(f_mu, f_var, y)`` for
            regression (``loss(f_mu, y)`` if its signature takes two). For regression a
            metric gets ``update(f_mu, f_var, y)``, or ``update(f_mu, y)`` if that raises
            ``TypeError``.
        pred_type, link_approx, n_samples: passed to ``laplace(X, ...)``.
        dict_key_y: key of the targets in dict-like batches.

    Returns:
        The loss as a Python float: the mean over the loader for ``RunningNLLMetric``
        or a mean-reduced callable such as ``get_nll``.
    """
    is_metric = _is_metric(loss)
    if not is_metric and not callable(loss):
        raise TypeError("loss must be a callable or a metric with update/compute/reset.")
    laplace.model.eval()
    if is_metric:
        loss.reset()
    means: list[Tensor] = []
    variances: list[Tensor] = []
    targets: list[Tensor] = []
    n_batches = 0
    for batch in val_loader:
        X, y = split_batch(batch, laplace.dict_key_x, dict_key_y)
        X, y = inputs_to(X, laplace._device), y.to(laplace._device)
        out = laplace(X, pred_type=pred_type, link_approx=link_approx, n_samples=n_samples,
                      fitting=True)
        checks.validation_targets(y, out[0] if isinstance(out, tuple) else out,
                                  isinstance(out, tuple), n_batches)
        if not isinstance(out, tuple) and not y.is_floating_point() \
                and y.ndim == out.ndim and y.shape[-1] == 1:
            y = y.reshape(out.shape[:-1])  # (n, 1) class labels, as fit() takes them
        n_batches += 1
        if isinstance(out, tuple):
            if is_metric:
                try:
                    loss.update(*out, y)
                except TypeError:  # the metric takes (prediction, target) only
                    loss.update(out[0], y)
            else:
                means.append(out[0])
                variances.append(out[1])
                targets.append(y)
        elif is_metric:
            loss.update(out, y)
        else:
            means.append(out)
            targets.append(y)
    if n_batches == 0:
        raise ValueError("The validation loader yielded no batches.")
    if is_metric:
        return float(torch.as_tensor(loss.compute()).sum().item())
    preds, y_all = torch.cat(means), torch.cat(targets)
    if not variances:
        return float(loss(preds, y_all).item())
    if _takes_three_arguments(loss):
        return float(loss(preds, torch.cat(variances), y_all).item())
    return float(loss(preds, y_all).item())


def _takes_three_arguments(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts ``(mean, var, target)`` (``True`` if not inspectable)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return any(p.kind == p.VAR_POSITIONAL for p in params) or len(required) >= 3
