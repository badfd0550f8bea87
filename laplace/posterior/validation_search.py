"""Hyperparameters by the validation NLL of the predictive over a user grid
(laplace-torch 0.3's ``ELLA.optimize_hyperparameters``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from laplace.utils.data import split_batch
from laplace.utils.enums import Likelihood
from laplace.utils.errors import NotPositiveDefiniteError
from laplace.utils.functional_utils import classification_targets, regression_targets


def predictive_nll(la: Any, val_loader: Any) -> float:
    """Mean negative log likelihood per validation example: Gaussian with the
    observation noise ``f_var + σ²`` (summed over the outputs) for regression, the probit
    class probabilities otherwise.

    Raises:
        ValueError: ``val_loader`` yields no examples.
    """
    total, count = 0.0, 0
    for batch in val_loader:
        X, y = split_batch(batch, la.dict_key_x, la.dict_key_y)
        if la.likelihood == Likelihood.REGRESSION:
            f_mu, f_var = la.predictive_moments(X)
            y = regression_targets(y.to(f_mu), f_mu)
            var = f_var.diagonal(dim1=-2, dim2=-1) + la.sigma_noise.square()
            nll = 0.5 * ((y - f_mu).square() / var + var.log() + math.log(2 * math.pi))
        else:
            probs = la(X, link_approx="probit")
            labels = classification_targets(y).to(probs.device)
            nll = -probs.gather(-1, labels[:, None]).clamp_min(1e-300).log()
        total += float(nll.sum())
        count += int(y.shape[0])
    if count == 0:
        raise ValueError("val_loader yields no validation examples.")
    return total / count


def _set(la: Any, candidate: Any) -> None:
    """A grid point: a prior precision, or a ``(prior_precision, sigma_noise)`` pair."""
    if isinstance(candidate, (tuple, list)):
        if len(candidate) != 2:
            raise ValueError(f"A grid point is a prior precision or a (prior_precision, "
                             f"sigma_noise) pair, not {candidate!r}.")
        la.prior_precision, la.sigma_noise = candidate
    else:
        la.prior_precision = candidate


def search(la: Any, val_loader: Any, grid: Iterable[Any]) -> list[dict[str, float]]:
    """Set ``la``'s hyperparameters to the grid point of lowest ``predictive_nll``.

    A point whose posterior is not positive definite, or whose NLL is not finite, scores
    ``inf``. Returns one record per grid point (``prior_precision``, ``sigma_noise``,
    ``val_nll``).

    Raises:
        ValueError: an empty grid, or no finite score (the hyperparameters are then
            restored to what they were).
    """
    if val_loader is None:
        raise ValueError("optimize_hyperparameters needs a val_loader.")
    initial = (la.prior_precision.detach().clone(), la.sigma_noise.detach().clone())
    history: list[dict[str, float]] = []
    best, best_score = None, math.inf
    for candidate in grid:
        _set(la, candidate)
        try:
            score = predictive_nll(la, val_loader)
        except (NotPositiveDefiniteError, torch.linalg.LinAlgError):
            score = math.inf
        history.append({"prior_precision": _scalar(la.prior_precision),
                        "sigma_noise": _scalar(la.sigma_noise), "val_nll": score})
        if math.isfinite(score) and score < best_score:
            best, best_score = candidate, score
    if best is None:
        la.prior_precision, la.sigma_noise = initial
        raise ValueError("The hyperparameter grid is empty." if not history else
                         "No grid point gave a finite validation NLL.")
    _set(la, best)
    return history


def _scalar(value: Tensor) -> float:
    return float(value.detach().reshape(-1)[0]) if value.numel() else math.nan
