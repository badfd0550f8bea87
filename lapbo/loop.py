"""A Bayesian optimization loop with qLogEI and a choice of surrogate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.model import Model
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf
from botorch.utils.sampling import draw_sobol_samples
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

from lapbo.model import LaplaceBNN
from lapbo.problems import Problem

SURROGATES = ("laplace", "gp", "sobol")


@dataclass
class BORun:
    """History of one optimization run.

    Attributes:
        surrogate: ``"laplace"``, ``"gp"`` or ``"sobol"``.
        X, Y: all evaluated points ``(n, d)`` and values ``(n, 1)``.
        regret: simple regret after the initial design and after each iteration.
        fit_seconds, acq_seconds: CPU seconds per iteration.
    """

    surrogate: str
    X: Tensor
    Y: Tensor
    regret: list[float] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    acq_seconds: list[float] = field(default_factory=list)


def fit_surrogate(name: str, X: Tensor, Y: Tensor, bounds: Tensor,
                  previous: Model | None = None, **options: object) -> Model:
    """Fit ``"laplace"`` (``LaplaceBNN``, warm-started from ``previous``) or ``"gp"``."""
    normalize = Normalize(d=X.shape[-1], bounds=bounds)
    if name == "gp":
        model = SingleTaskGP(X, Y, input_transform=normalize, outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    if name == "laplace":
        warm = previous if isinstance(previous, LaplaceBNN) else None
        model = LaplaceBNN(X, Y, input_transform=normalize, warm_start=warm, **options)
        return model.fit()
    raise ValueError(f"Unknown surrogate {name!r}; choose one of {SURROGATES}.")


def propose(model: Model, Y: Tensor, bounds: Tensor, num_restarts: int = 4,
            raw_samples: int = 128) -> Tensor:
    """Maximise qLogEI (q=1) and return the candidate ``(1, d)``."""
    acqf = qLogExpectedImprovement(model, best_f=Y.max())
    candidate, _ = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=num_restarts,
                                 raw_samples=raw_samples)
    return candidate.detach()


def run_bo(
    problem: Problem, surrogate: str, n_iterations: int, seed: int = 0,
    n_init: int | None = None, on_iteration: Callable[[BORun], None] | None = None,
    **model_options: object,
) -> BORun:
    """Optimise ``problem`` from a Sobol design of ``2d + 2`` points (default).

    Args:
        on_iteration: called after the initial design and after every iteration.
        model_options: keyword options of ``LaplaceBNN``.
    """
    bounds = problem.bounds
    n_init = n_init or 2 * problem.dim + 2
    X = draw_sobol_samples(bounds, n=n_init, q=1, seed=seed).squeeze(1)
    Y = problem(X)
    run = BORun(surrogate, X, Y, regret=[problem.optimum - Y.max().item()])
    if on_iteration:
        on_iteration(run)
    generator = torch.Generator().manual_seed(seed + 1000)
    model = None
    for i in range(n_iterations):
        torch.manual_seed(seed * 1000 + i)
        t0 = time.process_time()
        if surrogate == "sobol":
            u = torch.rand(1, problem.dim, dtype=X.dtype, generator=generator)
            candidate = bounds[0] + u * (bounds[1] - bounds[0])
            t1 = t0
        else:
            model = fit_surrogate(surrogate, X, Y, bounds, model, **model_options)
            t1 = time.process_time()
            candidate = propose(model, Y, bounds)
        t2 = time.process_time()
        X = torch.cat([X, candidate])
        Y = torch.cat([Y, problem(candidate)])
        run.X, run.Y = X, Y
        run.regret.append(problem.optimum - Y.max().item())
        run.fit_seconds.append(t1 - t0)
        run.acq_seconds.append(t2 - t1)
        if on_iteration:
            on_iteration(run)
    return run
