"""Prior-precision tuning: marginal likelihood (Adam, through ``marglik.maximize``) and
validation grid search."""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from laplace.posterior.marglik import maximize
from laplace.utils import distributed as distributed_fit
from laplace.utils.enums import Likelihood, PriorStructure
from laplace.utils.errors import NotPositiveDefiniteError
from laplace.utils.metrics import MeanSquaredErrorMetric, Predictive, RunningNLLMetric, validate


class Tunable(Predictive, Protocol):
    """What the tuners use of a Laplace approximation (every ``BaseLaplace`` has it).

    A protocol rather than ``BaseLaplace`` itself, so that ``posterior.base`` imports this
    module and not the reverse.
    """

    likelihood: Likelihood
    dict_key_y: str
    prior_precision: Tensor | float

    def _init_prior(self, init: float | Tensor, structure: PriorStructure) -> Tensor: ...

    def _prepare_for_tuning(self) -> None: ...

    def log_marginal_likelihood(
        self, prior_precision: Tensor | None = None, sigma_noise: Tensor | None = None
    ) -> Tensor: ...


def marglik(
    la: Tunable, n_steps: int, lr: float, init: float | Tensor,
    structure: PriorStructure, progress_bar: bool = False, verbose: bool = False,
) -> None:
    """Maximise the log marginal likelihood over ``log δ`` with Adam (laplace-torch's
    route: ``n_steps`` steps of rate ``lr``, the last iterate is kept)."""
    init_tensor = torch.as_tensor(init.detach() if isinstance(init, Tensor) else init,
                                  dtype=torch.float64)
    if not bool(torch.isfinite(init_tensor).all()) or not bool((init_tensor > 0).all()):
        raise ValueError(f"init_prior_prec must be positive and finite (its log is optimised), "
                         f"not {init_tensor.flatten()[:4].tolist()}.")
    la.prior_precision = la._init_prior(init, structure)
    la._prepare_for_tuning()

    def lml(prior: Tensor, sigma: Tensor | None) -> Tensor:
        return la.log_marginal_likelihood(prior_precision=prior)

    prior, _ = maximize(lml, la.prior_precision, method="adam", n_steps=n_steps, lr=lr,
                        progress_bar=distributed_fit.show_progress(progress_bar))
    la.prior_precision = prior
    if verbose:
        print(f"Optimized prior precision is {la.prior_precision}.")  # laplace-torch's line


def default_metric(la: Tunable) -> Any:
    """A fresh validation metric: mean NLL (classification) or summed per-output MSE."""
    if la.likelihood == Likelihood.REGRESSION:
        return MeanSquaredErrorMetric()
    return RunningNLLMetric()


def gridsearch(
    la: Tunable, pred_type: str, val_loader: Any, loss: Any, log_min: float,
    log_max: float, grid_size: int, link_approx: str, n_samples: int,
    progress_bar: bool = False, verbose: bool = False, base: float = 10.0,
) -> tuple[Tensor, Tensor]:
    """Pick the prior precision on ``logspace(log_min, log_max, grid_size, base)``
    minimising the validation loss, evaluated afresh at every grid point (laplace-torch
    carries one running metric across grid points, so its choice depends on the grid
    order).

    After a distributed fit, ``val_loader`` is this process's shard of the validation
    data and the loss is that of all shards (``distributed.validate_sharded``).

    A grid point whose posterior is not positive definite scores ``inf`` (as in
    laplace-torch), and so does a NaN loss; any other error is raised at once.

    Returns:
        The grid ``(grid_size,)`` and the validation loss at each point.

    Raises:
        ValueError: ``val_loader`` is missing, or every grid point failed (the error
            names the cause instead of silently picking the smallest value).
    """
    if val_loader is None:
        raise ValueError("gridsearch needs a val_loader.")
    grid = torch.logspace(log_min, log_max, grid_size, base=base, dtype=torch.float64)
    results, causes = [], []
    show = distributed_fit.show_progress(progress_bar)
    for prior_prec in tqdm(grid, desc="grid search", disable=not show):
        la.prior_precision = float(prior_prec)
        try:
            result = _validate(la, val_loader, loss or default_metric(la), pred_type,
                               link_approx, n_samples)
        except (NotPositiveDefiniteError, torch.linalg.LinAlgError) as err:
            result = float("inf")
            causes.append(str(err))
        if result != result:  # NaN
            result = float("inf")
            causes.append("the validation loss was NaN")
        results.append(result)
    losses = torch.tensor(results, dtype=torch.float64)
    if not bool(torch.isfinite(losses).any()):
        cause = causes[-1] if causes else "the validation loss was infinite"
        raise ValueError(
            f"gridsearch: every one of the {grid_size} grid points failed ({cause}); "
            "check val_loader (NaN targets or predictions) and the grid bounds."
        )
    finite = losses[torch.isfinite(losses)]
    if grid_size > 1 and len(finite) == grid_size \
            and float(finite.max() - finite.min()) <= 1e-12 * max(1.0, float(finite.abs().max())):
        warnings.warn(
            f"gridsearch: the validation loss is {float(finite[0]):.6g} at every grid point, "
            "so it does not depend on the prior precision (e.g. the mean squared error of a "
            "regression GLM predictive, whose mean is the MAP output); the first grid value "
            f"{float(grid[0]):.3g} is kept. Use a loss of the predictive distribution, e.g. a "
            "callable loss(f_mu, f_var, y) giving the Gaussian negative log likelihood.",
            UserWarning, stacklevel=3)
    la.prior_precision = float(grid[int(losses.argmin())])
    if verbose:
        print(f"Optimized prior precision is {la.prior_precision}.")  # laplace-torch's line
    return grid, losses


def _validate(la: Tunable, val_loader: Any, loss: Any, pred_type: str, link_approx: str,
              n_samples: int) -> float:
    """The validation loss: over this loader, or over every process's shard of it when
    ``la`` was fitted across processes."""
    kwargs = {"laplace": la, "val_loader": val_loader, "pred_type": pred_type,
              "link_approx": link_approx, "n_samples": n_samples, "dict_key_y": la.dict_key_y}
    if not getattr(la, "_distributed", False):
        return validate(loss=loss, **kwargs)
    return distributed_fit.validate_sharded(validate, loss, la._device, **kwargs)
