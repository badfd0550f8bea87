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
from lapbo.validation import check_integer

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


#: ``LaplaceBNN`` options that ``fit_surrogate`` sets itself.
MANAGED_OPTIONS = ("input_transform", "warm_start")
#: Largest seed: ``run_bo`` seeds round ``i`` with ``1000·seed + i``, and torch's CPU
#: generator keeps 32 bits of a seed, so larger (or negative) seeds would repeat others.
MAX_SEED = 2**32 // 1000 - 1


def fit_surrogate(name: str, X: Tensor, Y: Tensor, bounds: Tensor,
                  previous: Model | None = None, **options: object) -> Model:
    """Fit ``"laplace"`` (``LaplaceBNN``, warm-started from ``previous``, with keyword
    ``options``) or ``"gp"`` (``SingleTaskGP``, no options)."""
    _check_surrogate(name, options)
    _check_bounds(bounds)
    normalize = Normalize(d=X.shape[-1], bounds=bounds)
    if name == "gp":
        model = SingleTaskGP(X, Y, input_transform=normalize, outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    if name == "laplace":
        warm = previous if isinstance(previous, LaplaceBNN) else None
        model = LaplaceBNN(X, Y, input_transform=normalize, warm_start=warm, **options)
        return model.fit()
    raise ValueError(f"fit_surrogate fits 'laplace' or 'gp', not {name!r}.")


def propose(model: Model, Y: Tensor, bounds: Tensor, num_restarts: int = 4,
            raw_samples: int = 128) -> Tensor:
    """Maximise qLogEI (q=1) and return the candidate ``(1, d)``."""
    for arg, value in (("num_restarts", num_restarts), ("raw_samples", raw_samples)):
        check_integer(arg, value, minimum=1)
    if not isinstance(Y, Tensor) or Y.numel() == 0 or not bool(torch.isfinite(Y).all()):
        raise ValueError("Y must be a non-empty tensor of finite observed values (its "
                         "maximum is the incumbent of qLogEI).")
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
    _check_surrogate(surrogate, model_options)
    check_integer("n_iterations", n_iterations, minimum=0)
    check_integer("seed", seed, minimum=0, maximum=MAX_SEED)
    if n_init is not None:
        check_integer("n_init", n_init, minimum=1)
    bounds = problem.bounds
    n_init = n_init if n_init is not None else 2 * problem.dim + 2
    # the "sobol" baseline continues the scrambled sequence of the initial design
    sobol = draw_sobol_samples(bounds, n=n_init + (n_iterations if surrogate == "sobol" else 0),
                               q=1, seed=seed).squeeze(1)
    X = sobol[:n_init]
    Y = problem(X)
    run = BORun(surrogate, X, Y, regret=[problem.optimum - Y.max().item()])
    if on_iteration:
        on_iteration(run)
    model = None
    for i in range(n_iterations):
        torch.manual_seed(seed * 1000 + i)
        t0 = time.process_time()
        if surrogate == "sobol":
            candidate = sobol[n_init + i: n_init + i + 1]
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


def _check_surrogate(name: str, options: dict[str, object]) -> None:
    """A known surrogate; ``LaplaceBNN`` options only for ``"laplace"`` and never the
    ones the loop sets itself."""
    if name not in SURROGATES:
        raise ValueError(f"Unknown surrogate {name!r}; choose one of {SURROGATES}.")
    if options and name != "laplace":
        raise ValueError(f"Model options {sorted(options)} apply to surrogate='laplace' "
                         f"(LaplaceBNN) only, not to {name!r}.")
    managed = sorted(set(options) & set(MANAGED_OPTIONS))
    if managed:
        raise ValueError(f"{managed} are set by the loop (from bounds and the previous "
                         "round's model): do not pass them as model options.")


def _check_bounds(bounds: Tensor) -> None:
    if not isinstance(bounds, Tensor) or bounds.ndim != 2 or bounds.shape[0] != 2:
        raise ValueError("bounds must be a (2, d) tensor of lower and upper bounds.")
    if not bool((bounds[0] < bounds[1]).all()):
        raise ValueError("bounds must have lower < upper in every input "
                         f"(got lower {bounds[0].tolist()}, upper {bounds[1].tolist()}).")
