"""Length scales of a random-feature network by the Laplace evidence (type-II ML).

``networks.random_feature_network`` is ``f(x) = W ψ_ℓ(x) + b``: linear in its weights
``θ = (W, b)``. With the prior ``θ ~ N(θ₀, Λ⁻¹)`` (``Λ = δI``, or one ``δ`` per weight
tensor) and Gaussian noise, its Laplace posterior is the exact posterior and its Laplace
evidence the exact log marginal likelihood, for output ``k``

    log p(y_k | ℓ, δ, σ) = log N(y_k; Φ θ₀_k, Φ Λ⁻¹ Φᵀ + D_k),   Φ = [ψ_ℓ(X), 1] (n, N + 1),

with ``D_k`` the noise variances. ``fit_random_feature_network`` maximises the sum over
outputs plus log-normal hyperpriors over ``(log ℓ, log δ, log σ)`` by L-BFGS, then sets
the weights to the posterior mean. The length scales, which a multilayer network learns
as weights by MAP training, are here hyperparameters of the evidence, as for a GP: the
hyperprior on ``ℓ`` is the dimension-scaled log-normal of BoTorch's ``SingleTaskGP``
(``get_covar_module_with_dim_scaled_prior``), those on ``δ`` and ``σ²`` are the
``TrainingOptions`` ones that the other candidates of ``LaplaceBNN`` use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lapbo.networks import random_feature_layer
from lapbo.training import TrainingOptions, hyperpriors
from laplace import log_normal_density

#: Bounds of the length scales in unit-box units (BoTorch's GP: ``ℓ ≥ 0.025``).
LENGTHSCALE_BOUNDS = (0.025, 1e3)
#: L-BFGS iterations of one fit (a warm start usually stops well before).
MAX_ITER = 100


def lengthscale_hyperprior(d: int) -> tuple[float, float]:
    """``(loc, scale)`` of the log-normal hyperprior on each length scale for ``d``
    inputs: ``(√2 + ½ log d, √3)``, BoTorch's dimension-scaled prior."""
    return math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)


def linear_gaussian_evidence(phi: Tensor, residual: Tensor, prior_var: Tensor,
                             noise: Tensor) -> Tensor:
    """``Σ_k log N(r_k; 0, Φ diag(v) Φᵀ + diag(s))`` for outputs sharing the noise.

    Args:
        phi: ``Φ`` ``(n, P)``; residual: ``r = y − Φθ₀`` ``(n, K)``;
        prior_var: ``v`` ``(P,)`` the prior variances; noise: ``s`` ``(n,)``.

    Sample space (``n × n`` Cholesky) for ``n ≤ P``, weight space (``P × P``) otherwise.
    """
    n, p = phi.shape
    k = residual.shape[-1]
    const = 0.5 * n * k * math.log(2 * math.pi)
    if n <= p:
        gram = (phi * prior_var) @ phi.mT + torch.diag_embed(noise)
        chol = _cholesky(gram)
        white = torch.linalg.solve_triangular(chol, residual, upper=False)
        logdet = 2 * chol.diagonal().log().sum()
        return -0.5 * white.square().sum() - 0.5 * k * logdet - const
    scaled = phi / noise.unsqueeze(-1)
    precision = phi.mT @ scaled + torch.diag_embed(1 / prior_var)
    chol = _cholesky(precision)
    b = torch.linalg.solve_triangular(chol, scaled.mT @ residual, upper=False)
    quad = (residual.square() / noise.unsqueeze(-1)).sum() - b.square().sum()
    logdet = 2 * chol.diagonal().log().sum() + noise.log().sum() + prior_var.log().sum()
    return -0.5 * quad - 0.5 * k * logdet - const


def _cholesky(matrix: Tensor) -> Tensor:
    """Cholesky factor, with a relative jitter if ``matrix`` is numerically singular."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return chol
    jitter = 1e-8 * matrix.diagonal().mean().detach()
    return torch.linalg.cholesky(matrix + jitter * torch.eye(len(matrix)).to(matrix))


def fit_random_feature_network(
    net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None, sigma_noise: Tensor,
    prior_precision: Tensor, options: TrainingOptions,
    prior_mean: list[Tensor] | None = None, max_iter: int = MAX_ITER,
) -> tuple[Tensor, Tensor]:
    """Type-II maximum likelihood of ``(ℓ, δ, σ)`` for a ``random_feature_network``, then
    its weights set to the posterior mean (all in place).

    Args:
        net: a ``networks.random_feature_network``; its current length scales, with
            ``sigma_noise`` and ``prior_precision``, are the starting point.
        X: ``(n, d)`` transformed inputs; Y: ``(n, K)`` standardized targets.
        Yvar: ``(n, K)`` known noise variances (``σ`` is then not refit), or ``None``.
        prior_precision: scalar, or ``(2,)`` (weight and bias of the output layer).
        prior_mean: ``θ₀`` as ``[W₀ (K, N), b₀ (K,)]`` (default zero).

    Returns:
        ``(σ, δ)`` as detached tensors of the input shapes.
    """
    layer = random_feature_layer(net)
    if layer is None:
        raise ValueError("fit_random_feature_network needs a networks.random_feature_network.")
    head = net[1]
    tune_noise = options.tune_noise and Yvar is None
    theta0 = (torch.zeros_like(head.weight), torch.zeros_like(head.bias)) \
        if prior_mean is None else (prior_mean[0].detach(), prior_mean[1].detach())

    def design(lengthscale: Tensor) -> Tensor:  # Φ (n, N + 1)
        feats = layer.features(X, lengthscale)
        return torch.cat([feats, torch.ones_like(feats[:, :1])], dim=-1)

    def evidence(log_ls: Tensor, log_prior: Tensor, log_sigma: Tensor) -> Tensor:
        phi = design(log_ls.exp())
        residual = Y - phi[:, :-1] @ theta0[0].mT - theta0[1]
        prior_var = _prior_variances(log_prior.exp(), phi.shape[-1])
        if Yvar is None:
            noise = (2 * log_sigma).exp().expand(len(X))
            return linear_gaussian_evidence(phi, residual, prior_var, noise)
        return sum(linear_gaussian_evidence(phi, residual[:, k:k + 1], prior_var,
                                            Yvar[:, k].clamp_min(1e-12))
                   for k in range(Y.shape[-1]))

    d = X.shape[-1]
    ls_loc, ls_scale = lengthscale_hyperprior(d)
    with torch.no_grad():
        reference = float(design(layer.lengthscale).square().sum(-1).mean())
    prior_hp, noise_hp = hyperpriors(options, reference, tune_noise)
    bounds = _log_bounds(options, d, prior_precision.numel(), X)
    start = torch.cat([layer.lengthscale.log(), prior_precision.detach().reshape(-1).log(),
                       sigma_noise.detach().reshape(1).log()]).to(X)
    u = start.clamp(bounds[0], bounds[1]).requires_grad_(True)
    g = prior_precision.numel()

    def objective() -> Tensor:
        v = torch.minimum(torch.maximum(u, bounds[0]), bounds[1])
        log_ls, log_prior, log_sigma = v[:d], v[d:d + g], v[d + g]
        value = evidence(log_ls, log_prior, log_sigma)
        value = value + log_normal_density(log_ls.exp(), ls_loc, ls_scale)
        if prior_hp is not None:
            value = value + log_normal_density(log_prior.exp(), *prior_hp)
        if noise_hp is not None:
            value = value + log_normal_density((2 * log_sigma).exp(), *noise_hp)
        return -value

    if not tune_noise:
        bounds[0][-1] = bounds[1][-1] = u.detach()[-1]
    optimizer = torch.optim.LBFGS([u], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        v = torch.minimum(torch.maximum(u, bounds[0]), bounds[1])
        layer.lengthscale.copy_(v[:d].exp())
        prior = v[d:d + g].exp().reshape(prior_precision.shape)
        sigma = v[d + g].exp()
        if Yvar is not None:
            sigma = Yvar.mean().clamp_min(options.min_noise_std**2).sqrt()
        _set_posterior_mean(net, design(layer.lengthscale), Y, Yvar, sigma, prior, theta0)
    return sigma.to(sigma_noise), prior.to(prior_precision)


def _log_bounds(options: TrainingOptions, d: int, g: int, like: Tensor
                ) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of ``(log ℓ (d), log δ (g), log σ)``."""
    low = [math.log(LENGTHSCALE_BOUNDS[0])] * d + [math.log(options.min_prior_precision)] * g \
        + [math.log(options.min_noise_std)]
    high = [math.log(LENGTHSCALE_BOUNDS[1])] * d + [math.log(options.max_prior_precision)] * g \
        + [math.log(options.max_noise_std)]
    return like.new_tensor(low), like.new_tensor(high)


def _prior_variances(prior: Tensor, p: int) -> Tensor:
    """Prior variances ``(P,)`` of one output's weights ``[w (P − 1), b]`` from ``δ``:
    a scalar, or ``(2,)`` for the weight and the bias tensor of the output layer."""
    if prior.numel() == 1:
        return (1 / prior.reshape(())).expand(p)
    if prior.numel() != 2:
        raise ValueError(f"{prior.numel()} prior precisions for the 2 weight tensors of a "
                         "random-feature network.")
    prior = prior.reshape(-1)
    return torch.cat([(1 / prior[:1]).expand(p - 1), 1 / prior[1:]])


def _set_posterior_mean(net: nn.Module, phi: Tensor, Y: Tensor, Yvar: Tensor | None,
                        sigma: Tensor, prior: Tensor, theta0: tuple[Tensor, Tensor]) -> None:
    """Output layer ← the posterior mean ``θ₀ + (ΦᵀD⁻¹Φ + Λ)⁻¹ΦᵀD⁻¹(y − Φθ₀)`` per output
    (written in sample space, ``Λ⁻¹Φᵀ(ΦΛ⁻¹Φᵀ + D)⁻¹(y − Φθ₀)``, when ``n ≤ P``)."""
    head = net[1]
    n, p = phi.shape
    prior_var = _prior_variances(prior, p)
    residual = Y - phi[:, :-1] @ theta0[0].mT - theta0[1]
    columns = []
    for k in range(Y.shape[-1]):
        noise = sigma.square().expand(n) if Yvar is None else Yvar[:, k].clamp_min(1e-12)
        r = residual[:, k:k + 1]
        if n <= p:
            gram = (phi * prior_var) @ phi.mT + torch.diag_embed(noise)
            step = prior_var * (phi.mT @ torch.cholesky_solve(r, _cholesky(gram))).squeeze(-1)
        else:
            scaled = phi / noise.unsqueeze(-1)
            precision = phi.mT @ scaled + torch.diag_embed(1 / prior_var)
            step = torch.cholesky_solve(scaled.mT @ r, _cholesky(precision)).squeeze(-1)
        columns.append(step)
    steps = torch.stack(columns)  # (K, N + 1)
    head.weight.copy_(theta0[0] + steps[:, :-1])
    head.bias.copy_(theta0[1] + steps[:, -1])
