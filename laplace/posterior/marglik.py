"""The marginal-likelihood optimiser: ``log δ`` (and ``log σ``) by Adam or L-BFGS.

One routine serves ``optimize_prior_precision(method="marglik")`` (Adam on ``log δ``,
laplace-torch's defaults: the last iterate is kept) and
``optimize_marginal_likelihood`` (Adam or L-BFGS on ``log δ`` and optionally ``log σ``,
with bounds and log-normal hyperpriors; the best point visited is kept). The objective
is any differentiable ``lml(δ, σ)``, so the routine knows nothing of Laplace objects.

Hyperpriors are log-normal densities up to a constant,
``log LogNormal(x; loc, scale) = −log x − ½((log x − loc)/scale)²``, on each ``δ_g`` and
on the noise variance ``σ²`` (not on ``σ``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from laplace.utils import checks

METHODS = ("adam", "lbfgs")
Objective = Callable[[Tensor, "Tensor | None"], Tensor]


def log_normal_density(x: Tensor, loc: float | Sequence[float] | Tensor, scale: float
                       ) -> Tensor:
    """``Σ log LogNormal(xᵢ; locᵢ, scale)`` up to a constant for positive ``x`` ``(...)``;
    ``loc`` is one number or one per entry of ``x`` (broadcast against it)."""
    log_x = x.log()
    if not isinstance(loc, (int, float)):
        loc = torch.as_tensor(loc, dtype=x.dtype, device=x.device)
    return -(log_x + 0.5 * ((log_x - loc) / scale) ** 2).sum()


def check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    return method


def check_bounds(bounds: Any, name: str) -> tuple[float, float] | None:
    """``None`` or ``(low, high)`` with ``0 < low <= high < inf``, as log-bounds."""
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"{name} must be None or a pair (low, high), got {bounds!r}.")
    low = checks.positive_float(bounds[0], name)
    high = checks.positive_float(bounds[1], name)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {bounds!r}.")
    return math.log(low), math.log(high)


def check_hyperprior(hyperprior: Any, name: str) -> tuple[float, float] | None:
    """``None`` or ``(loc, scale)`` of a log-normal: finite ``loc``, positive ``scale``."""
    if hyperprior is None:
        return None
    if not isinstance(hyperprior, (tuple, list)) or len(hyperprior) != 2:
        raise ValueError(f"{name} must be None or a pair (loc, scale), got {hyperprior!r}.")
    loc = float(hyperprior[0])
    if not math.isfinite(loc):
        raise ValueError(f"{name} must have a finite loc, got {hyperprior!r}.")
    return loc, checks.positive_float(hyperprior[1], name)


def maximize(
    lml: Objective, prior_precision: Tensor, sigma_noise: Tensor | None = None, *,
    method: str = "adam", n_steps: int = 100, lr: float = 0.1,
    prior_bounds: tuple[float, float] | None = None,
    sigma_bounds: tuple[float, float] | None = None,
    prior_hyperprior: tuple[float | Sequence[float], float] | None = None,
    noise_hyperprior: tuple[float, float] | None = None,
    keep_best: bool = False, progress_bar: bool = False,
    tolerance_grad: float = 1e-9, tolerance_change: float = 1e-12,
) -> tuple[Tensor, Tensor | None]:
    """Maximise ``lml(δ, σ)`` (plus hyperpriors) over ``log δ`` and, if given, ``log σ``.

    Args:
        lml: the objective; called with ``δ`` of ``prior_precision``'s shape and ``σ``
            (0-d) or ``None`` when ``sigma_noise`` is ``None`` (``σ`` not tuned).
        prior_precision: the start ``δ`` ``(G,)``; ``sigma_noise``: start ``σ`` or ``None``.
        method: ``"adam"`` (``n_steps`` steps of rate ``lr``) or ``"lbfgs"`` (at most
            ``n_steps`` iterations, strong-Wolfe line search; the best point visited is
            returned).
        prior_bounds, sigma_bounds: log-bounds ``(log low, log high)`` (see
            ``check_bounds``); the arguments are clamped, so the gradient vanishes beyond.
        prior_hyperprior, noise_hyperprior: ``(loc, scale)`` log-normals on ``δ`` / ``σ²``
            (``prior_hyperprior``'s ``loc``: one number, or one per entry of ``δ``).
        keep_best: Adam returns the best iterate instead of the last (L-BFGS always does).
        tolerance_grad, tolerance_change: L-BFGS stopping tolerances (positive; on the
            gradient and on the change of the objective / parameters, as in
            ``torch.optim.LBFGS``).
    Returns:
        The final ``δ`` ``(G,)`` and ``σ`` (0-d, or ``None``), detached.
    """
    tolerances = (checks.positive_float(tolerance_grad, "tolerance_grad"),
                  checks.positive_float(tolerance_change, "tolerance_change"))
    log_prior = prior_precision.detach().log().clone()
    log_sigma = None if sigma_noise is None else sigma_noise.detach().reshape(()).log().clone()
    with torch.no_grad():
        _clamp_(log_prior, prior_bounds)
        _clamp_(log_sigma, sigma_bounds)
    params = [p.requires_grad_(True) for p in (log_prior, log_sigma) if p is not None]

    def diverged(prior: Tensor, sigma: Tensor | None) -> ValueError:
        return ValueError(
            f"Marginal-likelihood optimisation diverged ({method}, {n_steps} steps, lr={lr}): "
            f"the prior precision became {prior.detach().flatten()[:4].tolist()}"
            + ("" if sigma is None else f" and the noise {float(sigma.detach()):.4g}")
            + "; lower lr or start from a positive, finite prior precision.")

    def finite(prior: Tensor, sigma: Tensor | None) -> bool:
        return bool(torch.isfinite(prior).all()) and (sigma is None
                                                      or bool(torch.isfinite(sigma)))

    def objective() -> Tensor:
        prior = _clamped(log_prior, prior_bounds).exp()
        sigma = None if log_sigma is None else _clamped(log_sigma, sigma_bounds).exp()
        if not finite(prior, sigma):
            raise diverged(prior, sigma)
        value = lml(prior, sigma)
        if prior_hyperprior is not None:
            value = value + log_normal_density(prior, *prior_hyperprior)
        if noise_hyperprior is not None and sigma is not None:
            value = value + log_normal_density(sigma.square(), *noise_hyperprior)
        return value

    best = _Best(params)
    if method == "lbfgs":
        _run_lbfgs(objective, params, n_steps, best, tolerances)
        keep_best = True
    else:
        _run_adam(objective, params, n_steps, lr, best if keep_best else None, progress_bar,
                  (prior_bounds, sigma_bounds))
    final = best.point if keep_best and best.value > -math.inf else [p.detach() for p in params]
    prior = _clamped(final[0], prior_bounds).exp()
    sigma = None if log_sigma is None else _clamped(final[1], sigma_bounds).exp()
    if not finite(prior, sigma):
        raise diverged(prior, sigma)
    return prior, sigma


class _Best:
    """The best objective value seen and its (clamped-before-use) log parameters."""

    def __init__(self, params: list[Tensor]) -> None:
        self.value = -math.inf
        self.point = [p.detach().clone() for p in params]

    def update(self, value: Tensor, params: list[Tensor]) -> None:
        v = float(value.detach())
        if math.isfinite(v) and v > self.value:
            self.value, self.point = v, [p.detach().clone() for p in params]


def _clamped(log_value: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    return log_value if bounds is None else log_value.clamp(*bounds)


def _clamp_(log_value: Tensor | None, bounds: tuple[float, float] | None) -> None:
    if log_value is not None and bounds is not None:
        log_value.clamp_(*bounds)


def _run_adam(objective: Callable[[], Tensor], params: list[Tensor], n_steps: int, lr: float,
              best: _Best | None, progress_bar: bool, bounds: tuple) -> None:
    optimizer = torch.optim.Adam(params, lr=lr)
    steps = tqdm(range(n_steps), desc="marginal likelihood", disable=not progress_bar)
    for _ in steps:
        optimizer.zero_grad()
        value = objective()
        if best is not None:
            if not torch.isfinite(value):
                break
            best.update(value, params)
        (-value).backward()
        optimizer.step()
        with torch.no_grad():
            for p, b in zip(params, bounds):
                _clamp_(p, b)
        if progress_bar:
            steps.set_postfix(neg_log_marglik=f"{-value.item():.4g}")
    if best is not None:  # the last step is evaluated too
        with torch.no_grad():
            best.update(objective(), params)


def _run_lbfgs(objective: Callable[[], Tensor], params: list[Tensor], n_steps: int,
               best: _Best, tolerances: tuple[float, float]) -> None:
    if n_steps <= 0:
        return
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=n_steps,
                                  line_search_fn="strong_wolfe", tolerance_grad=tolerances[0],
                                  tolerance_change=tolerances[1])

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = objective()
        if not torch.isfinite(value):  # steers the line search back
            return torch.tensor(math.inf, dtype=value.dtype)
        best.update(value, params)
        (-value).backward()
        return -value.detach()

    optimizer.step(closure)
