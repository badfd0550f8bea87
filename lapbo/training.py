"""MAP training, Laplace fitting and marginal-likelihood refits for ``LaplaceBNN``.

The objective trained here is the negative log joint of the Laplace model,

    L(θ) = ½ Σₙₖ (fₖ(xₙ; θ) − yₙₖ)² / σₙₖ²  +  ½ δ ‖θ‖²,

so weight decay and the prior precision ``δ`` of the Laplace posterior are the same
number, and the observation noise ``σ²`` weights the data term exactly as it weights the
curvature ``H/σ²``. The weights are trained full-batch with L-BFGS (BO data sets are
small; Adam is an option). Online marginal likelihood (Immer et al., 2021): every
``marglik_every`` epochs a Laplace posterior is fitted at the current weights and
``(log δ, log σ)`` take a few Adam steps on its log marginal likelihood; the training
loss then uses the new values. A final refit after the last epoch sets the values the
posterior is built with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.baselaplace import ParametricLaplace

if TYPE_CHECKING:
    from lapbo.model import LaplaceBNN

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
}


def default_network(
    d: int, m: int, width: int = 50, depth: int = 2, activation: str = "tanh",
    dtype: torch.dtype = torch.float64, device: torch.device | None = None,
) -> nn.Sequential:
    """MLP ``d → width (× depth hidden layers) → m`` with a bounded activation by default.

    Bounded activations keep the linearized variance from growing without bound towards
    the corners of the box (design note 6).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}.")
    layers: list[nn.Module] = []
    fan_in = d
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), _ACTIVATIONS[activation]()]
        fan_in = width
    layers.append(nn.Linear(fan_in, m))
    return nn.Sequential(*layers).to(dtype=dtype, device=device)


def network_jacobians(net: nn.Module, X: Tensor) -> tuple[Tensor, Tensor]:
    """Per-point Jacobians w.r.t. all weights, differentiable w.r.t. ``X``.

    Args:
        net: maps ``(n, d)`` to ``(n, K)``.
        X: ``(n, d)``.

    Returns:
        ``Js`` ``(n, K, P)`` (parameters in ``net.parameters()`` order, as ``la.mean``)
        and outputs ``f`` ``(n, K)``.
    """
    params = {k: v.detach() for k, v in net.named_parameters()}

    def fn(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(net, p, (x.unsqueeze(0),)).reshape(-1)
        return out, out

    jac, f = vmap(jacrev(fn, has_aux=True), in_dims=(None, 0))(params, X)
    Js = torch.cat([jac[k].flatten(start_dim=2) for k in params], dim=2)
    return Js, f


@dataclass
class TrainingOptions:
    """Optimisation settings of ``LaplaceBNN.fit`` (see the module docstring).

    Attributes:
        n_epochs: full-batch optimiser iterations of MAP training from scratch.
        n_epochs_warm_start: iterations when starting from a previous model's weights.
        lr: Adam learning rate of the weights (L-BFGS uses a line search).
        optimizer: ``"lbfgs"`` (full-batch L-BFGS, strong Wolfe) or ``"adam"``.
        marglik_every: epochs between online marginal-likelihood refits (0: none).
        marglik_steps: Adam steps on ``(log δ, log σ)`` per online refit.
        final_marglik_steps: Adam steps of the refit after training.
        marglik_lr: Adam learning rate of the hyperparameters.
        tune_noise: refit ``σ`` (off when the noise is given as ``train_Yvar``).
        min_noise_std, max_noise_std: bounds of ``σ`` in standardized units.
        min_prior_precision, max_prior_precision: bounds of ``δ``.
    """

    n_epochs: int = 300
    n_epochs_warm_start: int = 100
    lr: float = 1e-2
    optimizer: str = "lbfgs"
    marglik_every: int = 50
    marglik_steps: int = 20
    final_marglik_steps: int = 100
    marglik_lr: float = 0.1
    tune_noise: bool = True
    min_noise_std: float = 1e-3
    max_noise_std: float = 10.0
    min_prior_precision: float = 1e-6
    max_prior_precision: float = 1e6


def make_loader(X: Tensor, Y: Tensor) -> DataLoader:
    """One full batch of ``X`` ``(n, d)``, ``Y`` ``(n, K)``."""
    return DataLoader(TensorDataset(X, Y), batch_size=max(len(X), 1))


def fit_laplace(
    net: nn.Module, X: Tensor, Y: Tensor, sigma_noise: Tensor, prior_precision: Tensor,
    subset_of_weights: str = "all", hessian_structure: str = "full", backend: Any = None,
) -> ParametricLaplace:
    """Laplace posterior of ``net`` at its current weights on ``(X (n, d), Y (n, K))``.

    ``sigma_noise`` and ``prior_precision`` are scalar tensors.
    """
    net.eval()
    la = Laplace(
        net, "regression", subset_of_weights=subset_of_weights,
        hessian_structure=hessian_structure, sigma_noise=sigma_noise.detach().clone(),
        prior_precision=prior_precision.detach().reshape(1).clone(), backend=backend,
    )
    la.fit(make_loader(X, Y))
    return la


def refit_hyperparameters(
    la: ParametricLaplace, sigma_noise: Tensor, prior_precision: Tensor, n_steps: int,
    options: TrainingOptions, tune_noise: bool,
) -> tuple[Tensor, Tensor]:
    """Maximise ``la.log_marginal_likelihood`` over ``log δ`` (and ``log σ``) with Adam.

    Returns the new ``(σ, δ)`` as detached scalar tensors, which are also stored on ``la``.
    """
    la._prepare_for_tuning()
    log_prior = prior_precision.detach().reshape(()).log().clone().requires_grad_(True)
    log_sigma = sigma_noise.detach().reshape(()).log().clone().requires_grad_(tune_noise)
    params = [log_prior, log_sigma] if tune_noise else [log_prior]
    optimizer = torch.optim.Adam(params, lr=options.marglik_lr)
    bounds_prior = (math.log(options.min_prior_precision), math.log(options.max_prior_precision))
    bounds_sigma = (math.log(options.min_noise_std), math.log(options.max_noise_std))
    best = (-math.inf, log_sigma.detach().clone(), log_prior.detach().clone())
    for _ in range(n_steps):
        optimizer.zero_grad()
        lml = la.log_marginal_likelihood(
            prior_precision=log_prior.exp().reshape(1), sigma_noise=log_sigma.exp()
        )
        if not torch.isfinite(lml):
            break
        if float(lml.detach()) > best[0]:
            best = (float(lml.detach()), log_sigma.detach().clone(), log_prior.detach().clone())
        (-lml).backward()
        optimizer.step()
        with torch.no_grad():
            log_prior.clamp_(*bounds_prior)
            log_sigma.clamp_(*bounds_sigma)
    with torch.no_grad():  # the last step is evaluated too
        lml = la.log_marginal_likelihood(log_prior.exp().reshape(1), log_sigma.exp())
        if torch.isfinite(lml) and float(lml) > best[0]:
            best = (float(lml), log_sigma.clone(), log_prior.clone())
    sigma, prior = best[1].exp(), best[2].exp()
    la.sigma_noise = sigma
    la.prior_precision = prior.reshape(1)
    return sigma, prior


def _map_loss(net: nn.Module, X: Tensor, Y: Tensor, noise_var: Tensor,
              prior_precision: Tensor) -> Tensor:
    """``(½ Σ (f − y)²/noise_var + ½ δ‖θ‖²) / n``."""
    data = 0.5 * ((net(X) - Y).square() / noise_var).sum()
    prior = 0.5 * prior_precision * sum(p.square().sum() for p in net.parameters())
    return (data + prior) / max(X.shape[0], 1)


def train_map(
    net: nn.Module, X: Tensor, Y: Tensor, noise_var: Tensor, prior_precision: Tensor,
    n_epochs: int, lr: float, optimizer: str = "lbfgs",
) -> None:
    """Minimise ``½ Σ (f − y)²/noise_var + ½ δ‖θ‖²`` over the full batch, in place.

    Args:
        net: the network (trained in place).
        X: ``(n, d)`` inputs; ``Y``: ``(n, K)`` targets.
        noise_var: ``σ²`` broadcastable to ``(n, K)``.
        prior_precision: ``δ`` (scalar tensor).
        n_epochs: L-BFGS iterations or Adam steps.
        lr: the Adam learning rate (L-BFGS uses a strong-Wolfe line search).
        optimizer: ``"lbfgs"`` (default; falls back to Adam if it produces non-finite
            weights) or ``"adam"``.
    """
    if n_epochs <= 0:
        return
    net.train()
    if optimizer == "lbfgs":
        snapshot = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.LBFGS(
            net.parameters(), lr=1.0, max_iter=n_epochs, history_size=50,
            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12,
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = _map_loss(net, X, Y, noise_var, prior_precision)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            ok = all(bool(torch.isfinite(p).all()) for p in net.parameters())
            ok = ok and bool(torch.isfinite(_map_loss(net, X, Y, noise_var, prior_precision)))
        if ok:
            net.eval()
            return
        with torch.no_grad():
            for p, s in zip(net.parameters(), snapshot):
                p.copy_(s)
    elif optimizer != "adam":
        raise ValueError(f"Unknown optimizer {optimizer!r}; use 'lbfgs' or 'adam'.")
    adam = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(n_epochs):
        adam.zero_grad()
        _map_loss(net, X, Y, noise_var, prior_precision).backward()
        adam.step()
    net.eval()


def fit_network_and_laplace(
    net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None, sigma_noise: Tensor,
    prior_precision: Tensor, n_epochs: int, options: TrainingOptions,
    subset_of_weights: str = "all", hessian_structure: str = "full", backend: Any = None,
) -> tuple[ParametricLaplace, Tensor, Tensor]:
    """MAP training with online marginal-likelihood refits, then the final Laplace fit.

    Args:
        X: ``(n, d)`` transformed inputs; ``Y``: ``(n, K)`` standardized targets.
        Yvar: ``(n, K)`` known noise variances (then ``σ`` is fixed to their RMS for the
            Laplace object and only ``δ`` is refit), or ``None``.

    Returns:
        The fitted Laplace object and the final ``(σ, δ)``.
    """
    tune_noise = options.tune_noise and Yvar is None
    if Yvar is not None:
        sigma_noise = Yvar.mean().clamp_min(options.min_noise_std**2).sqrt()
    sigma, prior = sigma_noise.detach().clone(), prior_precision.detach().clone()
    lik_var = Yvar.clamp_min(1e-12) if Yvar is not None else None
    la_kwargs = {"subset_of_weights": subset_of_weights, "hessian_structure": hessian_structure,
                 "backend": backend}
    every = options.marglik_every if options.marglik_every > 0 else n_epochs + 1
    done = 0
    while done < n_epochs:
        steps = min(every, n_epochs - done)
        noise_var = lik_var if lik_var is not None else sigma.square()
        train_map(net, X, Y, noise_var, prior, steps, options.lr, options.optimizer)
        done += steps
        if done < n_epochs and options.marglik_steps > 0:
            la = fit_laplace(net, X, Y, sigma, prior, **la_kwargs)
            sigma, prior = refit_hyperparameters(
                la, sigma, prior, options.marglik_steps, options, tune_noise
            )
    la = fit_laplace(net, X, Y, sigma, prior, **la_kwargs)
    if options.final_marglik_steps > 0:
        sigma, prior = refit_hyperparameters(
            la, sigma, prior, options.final_marglik_steps, options, tune_noise
        )
    return la, sigma, prior


def fit_laplace_bnn(model: LaplaceBNN, **kwargs: Any) -> LaplaceBNN:
    """Fit a ``LaplaceBNN`` in place (MAP, Laplace, hyperparameters); the Ax fit handler.

    Keyword arguments are ignored (accepted so that ``fit_botorch_model``-style
    dispatchers can pass their options).
    """
    return model.fit()
