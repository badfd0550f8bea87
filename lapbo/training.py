"""MAP training, Laplace fitting and marginal-likelihood refits for ``LaplaceBNN``.

The objective trained here is the negative log joint of the Laplace model,

    L(θ) = ½ Σₙₖ (fₖ(xₙ; θ) − yₙₖ)² / σₙₖ²  +  ½ δ ‖θ‖²,

so weight decay and the prior precision ``δ`` of the Laplace posterior are the same
number, and the observation noise ``σ²`` weights the data term exactly as it weights the
curvature ``H/σ²``. The prior may be centred on ``θ₀`` (``‖θ − θ₀‖²``; ``LaplaceBNN``
uses the initial weights). The weights are trained full-batch with L-BFGS (BO data sets
are small; Adam is an option). Online marginal likelihood (Immer et al., 2021): every
``marglik_every`` epochs a Laplace posterior is fitted at the current weights and
``(log δ, log σ)`` take a few Adam steps on its log marginal likelihood (plus an optional
log-normal hyperprior on ``σ²``); the training loss then uses the new values. A final
refit after the last epoch sets the values the posterior is built with. For the full
GGN with the native backend the refits never build a Laplace object: the evidence
comes from the ``n × n`` Gram matrix of the Jacobians (``laplace.SampleSpaceEvidence``),
and every refit runs ``laplace.maximize_marginal_likelihood``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from botorch.exceptions.errors import UnsupportedError
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lapbo.lbfgs import lbfgs
from lapbo.networks import last_layer_name, rows_independent
from laplace import (
    Laplace,
    SampleSpaceEvidence,
    log_normal_density,
    maximize_marginal_likelihood,
)
from laplace.baselaplace import ParametricLaplace
from laplace.curvature import network_jacobians

if TYPE_CHECKING:
    from lapbo.model import LaplaceBNN

def expand_prior(prior: Tensor, sizes: Sequence[int]) -> Tensor:
    """Per-weight precisions ``(P,)`` from a per-tensor prior ``(G,)``, or ``prior``
    unchanged (a scalar tensor) when it has one entry; ``sizes``: ``G`` tensor sizes."""
    if prior.numel() == 1:
        return prior.reshape(())
    if prior.numel() != len(sizes):
        raise ValueError(f"{prior.numel()} prior precisions for {len(sizes)} weight tensors.")
    counts = torch.tensor(list(sizes), device=prior.device)
    return torch.repeat_interleave(prior.reshape(-1), counts)


def posterior_parameter_names(net: nn.Module, subset_of_weights: str) -> list[str] | None:
    """Parameter names the Laplace posterior covers (``None``: all of them)."""
    if subset_of_weights == "all":
        return None
    prefix = last_layer_name(net) + "."
    return [n for n, p in net.named_parameters() if n.startswith(prefix) and p.requires_grad]


@dataclass(frozen=True)
class TrainingOptions:
    """Optimisation settings of ``LaplaceBNN.fit`` (see the module docstring). Frozen:
    they are set, and checked, through ``LaplaceBNN``'s keyword arguments (an assignment
    such as ``model.options.n_epochs = -3`` raises ``FrozenInstanceError`` instead of
    bypassing the checks); ``dataclasses.replace`` makes a changed copy.

    Attributes:
        n_epochs: full-batch optimiser iterations of MAP training from scratch.
        n_epochs_warm_start: iterations when starting from a previous model's weights.
        lr: Adam learning rate of the weights (L-BFGS uses a line search).
        optimizer: ``"lbfgs"`` (full-batch L-BFGS, strong Wolfe) or ``"adam"``.
        marglik_every: epochs between online marginal-likelihood refits (0: none).
        marglik_steps: Adam steps on ``(log δ, log σ)`` per online refit.
        final_marglik_steps: Adam steps of the refit after training.
        marglik_lr: Adam learning rate of the hyperparameters (``marglik_optimizer="adam"``).
        marglik_optimizer: ``"lbfgs"`` (default) or ``"adam"`` for the refits.
        tune_noise: refit ``σ`` (off when the noise is given as ``train_Yvar``).
        min_noise_std, max_noise_std: bounds of ``σ`` in standardized units.
        min_prior_precision, max_prior_precision: bounds of ``δ``.
        noise_prior: ``(loc, scale)`` of a log-normal hyperprior on ``σ²`` added to the
            marginal likelihood when ``σ`` is refit, ``("gamma", α, β)`` a Gamma
            hyperprior (random-feature networks only), or ``None``: none.
        lengthscale_prior: the hyperprior on each length scale of a random-feature
            network: ``None`` (BoTorch's dimension-scaled log-normal,
            ``networks.lengthscale_hyperprior``), ``("lognormal", loc, scale)`` or
            ``("gamma", α, β)`` (shape and rate, as ``gpytorch.priors.GammaPrior``).
        outputscale_prior: ``("gamma", α, β)`` on the prior variance ``1/δ`` of a
            random-feature network's feature weights (the kernel's output scale, the
            first ``δ`` with ``prior_structure="layerwise"``) in place of the
            log-normal hyperprior on that ``δ``, or ``None``.
        prior_precision_prior: scale ``s`` of a log-normal hyperprior on ``δ`` centred on
            ``δ_ref = mean_i ‖rᵢ‖²``, the mean squared norm of the Jacobian rows at the
            training points, i.e. the precision at which the prior function variance
            ``‖r‖²/δ`` at the data is 1 (the outcome variance in standardized units).
            With one or two observations the evidence alone sends ``δ`` to its upper
            bound (an observed standardized 0 is best explained by no signal at all)
            and the posterior variance collapses everywhere; the hyperprior keeps it at
            the outcome scale. ``None``: none. Full GGN only (it needs the rows).
        prior_precision_reference: the centre ``δ_ref`` of that hyperprior in place of
            the default (``None``): e.g. ``1.0`` for a random-feature network gives its
            kernel part the prior variance 1, where the default ``E‖[ψ(x), 1]‖² = 2``
            splits a prior function variance of 1 evenly between the kernel and the
            constant. With one ``δ`` per weight tensor (``prior_structure="layerwise"``),
            a tuple of one centre per tensor: ``(1.0, 0.01)`` for a random-feature
            network's ``(W, b)`` gives the kernel the prior variance 1 and the constant a
            broad prior (variance 100), as ``SingleTaskGP``'s output scale 1 and constant
            mean fitted without a prior.
    """

    n_epochs: int = 1000
    n_epochs_warm_start: int = 100
    lr: float = 1e-2
    optimizer: str = "lbfgs"
    marglik_every: int = 50
    marglik_steps: int = 20
    final_marglik_steps: int = 100
    marglik_lr: float = 0.1
    marglik_optimizer: str = "lbfgs"
    tune_noise: bool = True
    min_noise_std: float = 1e-3
    max_noise_std: float = 10.0
    min_prior_precision: float = 1e-6
    max_prior_precision: float = 1e6
    noise_prior: tuple[Any, ...] | None = None
    lengthscale_prior: tuple[Any, ...] | None = None
    outputscale_prior: tuple[Any, ...] | None = None
    prior_precision_prior: float | None = None
    prior_precision_reference: float | tuple[float, ...] | None = None
    keep_best: bool = False


def floor_known_noise(Yvar: Tensor, min_noise_std: float) -> Tensor:
    """Known noise variances ``(n, m)`` in standardized units raised to
    ``min_noise_std²``, the floor of a fitted ``σ`` (``LaplaceBNN`` warns once, at
    construction: ``validation.warn_small_known_noise``). GPyTorch raises a fixed noise
    below ``settings.min_fixed_noise`` (10⁻⁶ in double) likewise. Below it, the Gram
    matrix of a few hundred rows of a smooth network is singular to double precision:
    with ``train_Yvar = 0`` a random-feature fit of 600 rows failed its Cholesky
    factorisation."""
    return Yvar.clamp_min(min_noise_std**2)


def make_loader(X: Tensor, Y: Tensor) -> DataLoader:
    """One full batch of ``X`` ``(n, d)``, ``Y`` ``(n, K)``."""
    return DataLoader(TensorDataset(X, Y), batch_size=max(len(X), 1))


def fit_laplace(
    net: nn.Module, X: Tensor, Y: Tensor, sigma_noise: Tensor, prior_precision: Tensor,
    subset_of_weights: str = "all", hessian_structure: str = "full", backend: Any = None,
    prior_mean: list[Tensor] | None = None,
) -> ParametricLaplace:
    """Laplace posterior of ``net`` at its current weights on ``(X (n, d), Y (n, K))``.

    ``sigma_noise`` and ``prior_precision`` are scalar tensors; ``prior_mean`` one tensor
    per parameter of ``net`` (default zero).
    """
    net.eval()
    extra = {}
    if subset_of_weights == "last_layer":
        extra["last_layer_name"] = last_layer_name(net)
    if prior_mean is not None:
        names = posterior_parameter_names(net, subset_of_weights)
        keys = [k for k, _ in net.named_parameters()]
        sel = [m for k, m in zip(keys, prior_mean) if names is None or k in names]
        extra["prior_mean"] = torch.cat([m.detach().reshape(-1) for m in sel])
    la = Laplace(
        net, "regression", subset_of_weights=subset_of_weights,
        hessian_structure=hessian_structure, sigma_noise=sigma_noise.detach().clone(),
        prior_precision=prior_precision.detach().reshape(-1).clone(), backend=backend,
        **extra,
    )
    la.fit(make_loader(X, Y))
    return la


def refit_hyperparameters(
    la: ParametricLaplace, sigma_noise: Tensor, prior_precision: Tensor, n_steps: int,
    options: TrainingOptions, tune_noise: bool,
) -> tuple[Tensor, Tensor]:
    """Maximise ``la.log_marginal_likelihood`` over ``log δ`` (and ``log σ``) with
    ``la.optimize_marginal_likelihood`` (bounds and noise hyperprior of ``options``).

    Returns the new ``(σ, δ)`` as detached scalar tensors, which are also stored on ``la``.
    """
    la.sigma_noise = sigma_noise.detach()
    la.prior_precision = prior_precision.detach().reshape(1)
    la.optimize_marginal_likelihood(
        method=options.marglik_optimizer, n_steps=n_steps, lr=options.marglik_lr,
        tune_sigma_noise=tune_noise,
        prior_precision_bounds=(options.min_prior_precision, options.max_prior_precision),
        sigma_noise_bounds=(options.min_noise_std, options.max_noise_std),
        sigma_noise_hyperprior=options.noise_prior if tune_noise else None,
    )
    return la.sigma_noise.detach().reshape(()), la.prior_precision.detach().reshape(())


Objective = Callable[[Tensor, Tensor], Tensor]


def maximize_marglik(
    lml: Objective, sigma_noise: Tensor, prior_precision: Tensor, n_steps: int,
    options: TrainingOptions, tune_noise: bool, reference_precision: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Maximise ``lml(δ, σ)`` over ``(log δ, log σ)`` within the bounds of ``options``,
    with ``laplace.maximize_marginal_likelihood`` (the library's one optimiser).

    ``options.marglik_optimizer``: ``"lbfgs"`` (at most ``n_steps`` iterations) or
    ``"adam"`` (``n_steps`` steps of rate ``options.marglik_lr``); the best point visited is
    kept. Hyperpriors: ``options.noise_prior`` on ``σ²`` (when ``σ`` is refit) and, given
    ``reference_precision``, ``hyperpriors(options, reference_precision)[0]`` on ``δ``.
    ``δ`` is a scalar tensor or one precision per weight tensor ``(G,)``.
    Returns the best ``(σ, δ)`` (detached tensors of the input shapes).
    """
    if options.marglik_optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"Unknown marglik_optimizer {options.marglik_optimizer!r}.")
    sigma0 = sigma_noise.detach().reshape(())

    def objective(prior: Tensor, sigma: Tensor | None) -> Tensor:
        return lml(prior.reshape(prior_precision.shape), sigma0 if sigma is None else sigma)

    prior_hp, noise_hp = hyperpriors(options, reference_precision, tune_noise)
    prior, sigma = maximize_marginal_likelihood(
        objective, prior_precision.detach().reshape(-1), sigma0 if tune_noise else None,
        method=options.marglik_optimizer, n_steps=n_steps, lr=options.marglik_lr,
        prior_bounds=(math.log(options.min_prior_precision),
                      math.log(options.max_prior_precision)),
        sigma_bounds=(math.log(options.min_noise_std), math.log(options.max_noise_std)),
        prior_hyperprior=prior_hp, noise_hyperprior=noise_hp, keep_best=True,
        tolerance_grad=1e-7, tolerance_change=1e-10,
    )
    sigma = sigma0.clamp(options.min_noise_std, options.max_noise_std) if sigma is None \
        else sigma
    return sigma, prior.reshape(prior_precision.shape)


def hyperpriors(
    options: TrainingOptions, reference_precision: float | None, tune_noise: bool
) -> tuple[tuple[float | tuple[float, ...], float] | None, tuple[float, float] | None]:
    """``(loc, scale)`` of the log-normal hyperpriors on ``δ`` and ``σ²`` (or ``None``).

    On ``δ``: centred on ``log δ_ref`` (``options.prior_precision_reference`` when set,
    else ``reference_precision``, see ``TrainingOptions``; a tuple gives one centre per
    entry of ``δ``) with scale
    ``options.prior_precision_prior``; on ``σ²``: ``options.noise_prior`` when ``σ`` is
    refit.
    """
    if options.prior_precision_reference is not None and reference_precision is not None:
        reference_precision = options.prior_precision_reference
    scale = options.prior_precision_prior
    prior_hp = None
    if scale is not None and reference_precision is not None:
        low = options.min_prior_precision
        loc = math.log(max(reference_precision, low)) \
            if isinstance(reference_precision, (int, float)) \
            else tuple(math.log(max(r, low)) for r in reference_precision)
        prior_hp = (loc, scale)
    noise = options.noise_prior if tune_noise and gamma_prior(options.noise_prior) is None \
        else None
    return prior_hp, noise


def gamma_prior(spec: tuple[Any, ...] | None) -> tuple[float, float] | None:
    """``(α, β)`` of a ``("gamma", α, β)`` hyperprior option, else ``None``."""
    if spec is None or len(spec) != 3 or spec[0] != "gamma":
        return None
    return float(spec[1]), float(spec[2])


def check_log_normal_hyperpriors(options: TrainingOptions) -> None:
    """Gamma hyperpriors and ``lengthscale_prior``/``outputscale_prior`` are fitted in
    closed form for random-feature networks only: name them for any other network."""
    for name in ("lengthscale_prior", "outputscale_prior", "noise_prior"):
        spec = getattr(options, name)
        if spec is not None and (name != "noise_prior" or gamma_prior(spec) is not None):
            raise UnsupportedError(f"{name}={spec!r} applies to net='random_features' "
                                   "only; this network's refits take a log-normal "
                                   "noise_prior.")


def network_evidence(
    net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None, names: list[str] | None,
    prior_mean: list[Tensor] | None = None, linearized: bool = False,
    layerwise: bool = False,
) -> SampleSpaceEvidence:
    """``laplace.SampleSpaceEvidence`` of ``net`` at its current weights on ``X (n, d)``,
    ``Y (n, K)`` (known noise ``Yvar (n, K)`` or ``None``), with the prior ``N(θ₀, I/δ)``
    (``θ₀ = prior_mean``, one tensor per parameter; ``layerwise``: one ``δ`` per weight
    tensor of the posterior; ``names``: the posterior's weights, ``None`` for all)."""
    with torch.no_grad():
        Js, f = network_jacobians(net, X, names, independent_samples=rows_independent(net))
    rows = Js.reshape(-1, Js.shape[-1])
    params = dict(net.named_parameters())
    keys = list(params) if names is None else names
    means = dict(zip(params, prior_mean)) if prior_mean is not None else {}
    diffs = [(params[k].detach() - means.get(k, 0.0)).reshape(-1) for k in keys]
    noise = None if Yvar is None else Yvar.reshape(-1).clamp_min(1e-12)
    groups = [len(v) for v in diffs] if layerwise else None
    return SampleSpaceEvidence(rows, (f - Y).reshape(-1), torch.cat(diffs), noise,
                               groups=groups, linearized=linearized)


def _map_loss(net: nn.Module, X: Tensor, Y: Tensor, noise_var: Tensor,
              prior_precision: Tensor, prior_mean: list[Tensor] | None = None) -> Tensor:
    """``(½ Σ (f − y)²/noise_var + ½ Σ δ_g‖θ_g − θ₀_g‖²) / n`` over the parameter tensors
    ``θ_g`` (``θ₀ = prior_mean``, default 0; ``prior_precision``: scalar or one per tensor)."""
    data = 0.5 * ((net(X) - Y).square() / noise_var).sum()
    params = list(net.parameters())
    means = prior_mean if prior_mean is not None else [0.0] * len(params)
    sq = torch.stack([(p - m).square().sum() for p, m in zip(params, means)])
    return (data + 0.5 * (prior_precision.reshape(-1) * sq).sum()) / max(X.shape[0], 1)


def _map_loss_backward(
    net: nn.Module, params: list[Tensor], X: Tensor, Y: Tensor, noise_var: Tensor,
    prior_precision: Tensor, prior_mean: list[Tensor] | None = None,
) -> Tensor:
    """``_map_loss`` (detached, 0-d), its gradient accumulated into ``p.grad``.

    Autograd differentiates the data term only; the prior term's gradient
    ``δ_g (θ_g − θ₀_g)/n`` is added in closed form with fused ``_foreach`` kernels, which
    spares two small graph nodes per weight tensor in every L-BFGS evaluation (the
    gradients equal autograd's)."""
    n = max(X.shape[0], 1)
    data = 0.5 * ((net(X) - Y).square() / noise_var).sum() / n
    data.backward()
    with torch.no_grad():
        diffs = torch._foreach_sub(params, prior_mean) if prior_mean is not None else \
            [p.detach() for p in params]
        deltas = prior_precision.reshape(-1).expand(len(params)) / n
        sq = torch.stack(torch._foreach_norm(diffs)).square()
        prior = 0.5 * (deltas * sq).sum()
        trained = [i for i, p in enumerate(params) if p.requires_grad]
        for i in trained:
            if params[i].grad is None:  # a weight the data term does not reach
                params[i].grad = torch.zeros_like(params[i])
        scales = deltas.tolist()
        torch._foreach_add_([params[i].grad for i in trained],
                            torch._foreach_mul([diffs[i] for i in trained],
                                               [scales[i] for i in trained]))
        return data.detach() + prior


def train_map(
    net: nn.Module, X: Tensor, Y: Tensor, noise_var: Tensor, prior_precision: Tensor,
    n_epochs: int, lr: float, optimizer: str = "lbfgs", prior_mean: list[Tensor] | None = None,
) -> None:
    """Minimise ``½ Σ (f − y)²/noise_var + ½ δ‖θ‖²`` over the full batch, in place.

    Args:
        net: the network (trained in place).
        X: ``(n, d)`` inputs; ``Y``: ``(n, K)`` targets.
        noise_var: ``σ²`` broadcastable to ``(n, K)``.
        prior_precision: ``δ`` (scalar tensor, or one per parameter tensor of ``net``).
        n_epochs: L-BFGS iterations or Adam steps.
        lr: the Adam learning rate (L-BFGS uses a strong-Wolfe line search).
        optimizer: ``"lbfgs"`` (default; falls back to Adam if it produces non-finite
            weights) or ``"adam"``.
        prior_mean: ``θ₀``, one tensor per parameter (default zero).
    """
    if n_epochs <= 0:
        return
    net.train()
    if optimizer == "lbfgs":
        snapshot = [p.detach().clone() for p in net.parameters()]
        opt = lbfgs(
            net.parameters(), lr=1.0, max_iter=n_epochs, history_size=50,
            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12,
        )

        params = list(net.parameters())

        def closure() -> Tensor:
            opt.zero_grad()
            return _map_loss_backward(net, params, X, Y, noise_var, prior_precision, prior_mean)

        opt.step(closure)
        with torch.no_grad():
            ok = all(bool(torch.isfinite(p).all()) for p in net.parameters())
            loss = _map_loss(net, X, Y, noise_var, prior_precision, prior_mean)
            ok = ok and bool(torch.isfinite(loss))
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
        _map_loss(net, X, Y, noise_var, prior_precision, prior_mean).backward()
        adam.step()
    net.eval()


def fit_network_and_laplace(
    net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None, sigma_noise: Tensor,
    prior_precision: Tensor, n_epochs: int, options: TrainingOptions,
    subset_of_weights: str = "all", hessian_structure: str = "full", backend: Any = None,
    prior_mean: list[Tensor] | None = None, linearized: bool = False,
) -> tuple[ParametricLaplace | None, Tensor, Tensor, SampleSpaceEvidence | None]:
    """MAP training with online marginal-likelihood refits, then the final Laplace fit.

    Args:
        X: ``(n, d)`` transformed inputs; ``Y``: ``(n, K)`` standardized targets.
        Yvar: ``(n, K)`` known noise variances (then ``σ`` is fixed to their RMS for the
            Laplace object and only ``δ`` is refit), or ``None``.
        prior_mean: ``θ₀`` of the prior ``N(θ₀, I/δ)``, one tensor per parameter of
            ``net`` (default zero); weight decay pulls towards it.
        linearized: refit on the evidence of the linearized model (``network_evidence``;
            full GGN with the native backend only).

    Returns:
        The fitted Laplace object (``None`` for the full GGN with the native backend:
        its refits use ``network_evidence`` and the model builds its posterior from the
        Jacobians; ``LaplaceBNN.la`` builds the object on demand), the final
        ``(σ, δ)``, and for the full GGN with the native backend the
        ``SampleSpaceEvidence`` of the returned weights (built by the last refit, so
        that ``LaplaceBNN.log_marginal_likelihood`` need not build it again), else
        ``None``.
    """
    check_log_normal_hyperpriors(options)
    tune_noise = options.tune_noise and Yvar is None
    if hessian_structure == "full" and backend is None:
        return _fit_full_ggn(net, X, Y, Yvar, sigma_noise, prior_precision, n_epochs, options,
                             subset_of_weights, tune_noise, prior_mean, linearized)
    if prior_precision.numel() > 1:
        raise ValueError("A per-tensor prior precision needs the full GGN (native backend).")
    if Yvar is not None:
        sigma_noise = Yvar.mean().clamp_min(options.min_noise_std**2).sqrt()
    sigma, prior = sigma_noise.detach().clone(), prior_precision.detach().clone()
    lik_var = Yvar.clamp_min(1e-12) if Yvar is not None else None
    la_kwargs = {"subset_of_weights": subset_of_weights, "hessian_structure": hessian_structure,
                 "backend": backend, "prior_mean": prior_mean}
    every = options.marglik_every if options.marglik_every > 0 else n_epochs + 1
    done = 0
    while done < n_epochs:
        steps = min(every, n_epochs - done)
        noise_var = lik_var if lik_var is not None else sigma.square()
        train_map(net, X, Y, noise_var, prior, steps, options.lr, options.optimizer, prior_mean)
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
    return la, sigma, prior, None


def _fit_full_ggn(
    net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None, sigma_noise: Tensor,
    prior_precision: Tensor, n_epochs: int, options: TrainingOptions,
    subset_of_weights: str, tune_noise: bool, prior_mean: list[Tensor] | None = None,
    linearized: bool = False,
) -> tuple[None, Tensor, Tensor, SampleSpaceEvidence | None]:
    """``fit_network_and_laplace`` for the exact GGN: refits on ``network_evidence``."""
    names = posterior_parameter_names(net, subset_of_weights)
    layerwise = prior_precision.numel() > 1
    if layerwise and names is not None:
        raise ValueError("A per-tensor prior precision needs subset_of_weights='all'.")
    sigma, prior = sigma_noise.detach().clone(), prior_precision.detach().clone()
    if Yvar is not None:
        sigma = Yvar.mean().clamp_min(options.min_noise_std**2).sqrt()
    lik_var = Yvar.clamp_min(1e-12) if Yvar is not None else None
    every = options.marglik_every if options.marglik_every > 0 else n_epochs + 1
    done, best = 0, None

    def refit(n_steps: int) -> tuple[Tensor, Tensor, Any]:
        lml = network_evidence(net, X, Y, Yvar, names, prior_mean, linearized, layerwise)
        ref = getattr(lml, "reference_precision", None)
        s, p = maximize_marglik(lml, sigma, prior, n_steps, options, tune_noise, ref)
        return s, p, lml

    while done < n_epochs:
        steps = min(every, n_epochs - done)
        noise_var = lik_var if lik_var is not None else sigma.square()
        train_map(net, X, Y, noise_var, prior, steps, options.lr, options.optimizer, prior_mean)
        done += steps
        if done < n_epochs and options.marglik_steps > 0:
            sigma, prior, evidence = refit(options.marglik_steps)
            if options.keep_best:
                best = _better_state(best, net, evidence, sigma, prior, options, tune_noise)
    evidence = None
    if options.final_marglik_steps > 0:
        sigma, prior, evidence = refit(options.final_marglik_steps)
        if best is not None:
            final = _better_state(None, net, evidence, sigma, prior, options, tune_noise)
            if best[0] > final[0]:  # an earlier network along the path had more evidence
                with torch.no_grad():
                    for p, saved in zip(net.parameters(), best[1]):
                        p.copy_(saved)
                sigma, prior, evidence = best[2], best[3], best[4]
    return None, sigma, prior, evidence


def _better_state(
    best: tuple | None, net: nn.Module, lml: Objective, sigma: Tensor,
    prior: Tensor, options: TrainingOptions, tune_noise: bool,
) -> tuple:
    """``best`` or, if its score is lower, ``(score, weights, σ, δ)`` of the current network,
    the score being the refit objective (the evidence ``lml`` plus the hyperpriors, centred
    on its ``reference_precision`` when it has one) at ``(δ, σ)``; ``lml`` is kept as the
    fifth entry (the evidence of those weights, reused after a restore)."""
    ref = getattr(lml, "reference_precision", None)
    prior_hp, noise_hp = hyperpriors(options, ref, tune_noise)
    with torch.no_grad():
        value = lml(prior, sigma)
        if prior_hp is not None:
            value = value + log_normal_density(prior, *prior_hp)
        if noise_hp is not None:
            value = value + log_normal_density(sigma.square(), *noise_hp)
        score = float(value)
    if best is not None and best[0] >= score:
        return best
    weights = [p.detach().clone() for p in net.parameters()]
    return score, weights, sigma.clone(), prior.clone(), lml


def fit_laplace_bnn(model: LaplaceBNN, **kwargs: Any) -> LaplaceBNN:
    """Fit a ``LaplaceBNN`` in place (MAP, Laplace, hyperparameters); the Ax fit handler.

    Keyword arguments are ignored (accepted so that ``fit_botorch_model``-style
    dispatchers can pass their options).
    """
    # ``isinstance(model, LaplaceBNN)`` without importing lapbo.model (which imports this)
    if not any(c.__module__ == "lapbo.model" and c.__name__ == "LaplaceBNN"
               for c in type(model).__mro__):
        raise TypeError(f"model must be a LaplaceBNN, not {type(model).__name__}.")
    return model.fit()
