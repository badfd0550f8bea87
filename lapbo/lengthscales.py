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
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lapbo.feature_evidence import (
    limit_feature_evidence,
    random_feature_evidence,
    random_feature_evidence_gradients,
)
from lapbo.lbfgs import lbfgs
from lapbo.networks import lengthscale_hyperprior, random_feature_layer
from lapbo.training import TrainingOptions, gamma_prior, hyperpriors
from laplace import (
    gram_evidence,
    group_grams,
    linear_gaussian_evidence,
    linear_gaussian_posterior_mean,
    log_normal_density,
)

#: Bounds of the length scales in unit-box units (BoTorch's GP: ``ℓ ≥ 0.025``).
LENGTHSCALE_BOUNDS = (0.025, 1e3)
#: ``E‖[ψ(x), 1]‖²``: the centre of the hyperprior on ``δ`` (``training.hyperpriors``).
REFERENCE_PRECISION = 2.0
#: L-BFGS iterations of one fit (a warm start usually stops well before).
MAX_ITER = 100
#: L-BFGS passes, each from the projection of the last onto the bounds (a pass that ends
#: inside the bounds is the last).
PASSES = 2
#: Convergence of one L-BFGS pass, as scipy's L-BFGS-B defaults that BoTorch's GP fit uses:
#: stop when no gradient entry exceeds ``GRAD_TOLERANCE`` or when the objective (or the
#: step) changes by less than ``RELATIVE_TOLERANCE`` times the objective's magnitude.
GRAD_TOLERANCE = 1e-5
RELATIVE_TOLERANCE = 2.2e-9
#: ``σ`` of the second start of the fit (the outcome SD): with few features per point the
#: objective has a mode that interpolates (small ``σ``) and one that smooths; a fit that
#: starts in the first cannot reach the second, so both are tried and the better kept.
SMOOTH_START_SIGMA = 1.0
#: A warm-started fit repeats the second start only when its warm start's last check found
#: two optima, or when the data has grown by this factor since that check: a round adds a
#: few rows, which rarely creates a mode, and the check doubles the cost of a fit.
RECHECK_GROWTH = 1.2
#: Two starts found different optima when their objectives differ by more than this (nats)
#: or their ``σ`` by more than a factor 2.
MODE_TOLERANCE = 0.1
#: Rows up to which the objective is the exact evidence of all ``N`` features, whose
#: sample-space form costs ``O(n² N)`` per evaluation (about a quarter of a second at
#: ``n = 512``, ``N = 4,096`` on one core, four times that at ``n = 1,024``). Above it
#: (above ``FULL_FEATURE_ROWS`` with ``LIMIT_KERNEL_FIT``, which fits the kernel between
#: the two), the length scales, ``δ`` and ``σ`` are those of the evidence of the first
#: ``FIT_FEATURES`` features (``ScaledRandomFeatures.features``) on all rows, in its
#: weight-space form: ``O(n · FIT_FEATURES²)`` per evaluation, linear in ``n``; a
#: ``LaplaceBNN(net="random_features")`` then keeps only those features (``LaplaceBNN``).
#: Was 1,024 until session 11: a cold fit of the default family at ``n = 1,000`` took
#: 350–600 s there and takes 15–35 s with 512 features.
EXACT_FIT_ROWS = 512
#: Features of the hyperparameter objective above ``EXACT_FIT_ROWS`` rows. With as many
#: features as rows the evidence has an interpolating mode at the noise floor; just above
#: ``EXACT_FIT_ROWS`` the rows barely outnumber these features, and the fit's second start
#: in ``σ`` (``SMOOTH_START_SIGMA``) keeps the smoothing optimum where it is the better
#: (measured at ``n = 600`` on six noisy or rough problems: ``σ`` 0.25–0.55 in
#: standardized units, test mean ``|z|`` 0.68–0.97).
FIT_FEATURES = 512
#: Rows up to which a model keeps all its features (``LaplaceBNN`` truncates a
#: ``net="random_features"`` network to ``FIT_FEATURES`` above it). Between
#: ``EXACT_FIT_ROWS`` and this, the length scales are those of the limit kernel
#: (``LIMIT_KERNEL_FIT``; of the reduced objective without it) and ``δ`` and ``σ`` are
#: then refit by the exact evidence of all features at those length scales
#: (``group_grams`` once, ``O(n² N)``, then ``O(n³)`` per evaluation): the reduced
#: model's ``σ`` also absorbs what its 512 features cannot fit.
FULL_FEATURE_ROWS = 1024
#: Whether, between ``EXACT_FIT_ROWS`` and ``FULL_FEATURE_ROWS`` rows, the length scales
#: (with ``δ`` and ``σ``) maximise the evidence of the kernel that the features approximate
#: (``feature_evidence.limit_feature_evidence``, ``O(n³)`` per evaluation, the GP's cost)
#: instead of that of ``FIT_FEATURES`` features; ``δ`` and ``σ`` are then refit by the
#: exact evidence of all the network's features at those length scales as before.
LIMIT_KERNEL_FIT = True
#: Features of a ``LaplaceBNN(net="random_features")`` fitted where ``limit_kernel_fit``
#: holds (``networks.extend_random_features``; the Sobol sequence of its first features
#: continued): at the limit kernel's length scales, 4,096 features leave a misfit that
#: ``σ`` absorbs at ``n ≈ 1,000`` on a smooth function (Hartmann-6: ``σ`` 0.12 against the
#: GP's 0.03, docs/lapbo_defaults.md session 26), while the ``N × N`` route costs
#: ``O(n² · features)`` once per fit.
LIMIT_FEATURES = 16384


#: Inputs from which the limit kernel fits the length scales (``limit_kernel_fit``). At
#: d ≤ 3 the default family's test NLL at ``n = 1,000`` is about 2 nats below the GP's
#: already, and the limit fit lost 0.14–0.25 nats of it on Hartmann-3 (calibration
#: development seeds 0–1, docs/lapbo_defaults.md session 27).
LIMIT_KERNEL_DIM = 4


def limit_kernel_fit(n: int, d: int, exact_rows: int | None = None) -> bool:
    """Whether a fit on ``n`` rows of ``d`` inputs takes its length scales from the limit
    kernel (``LIMIT_KERNEL_FIT``, ``d ≥ LIMIT_KERNEL_DIM``, ``exact_rows < n ≤
    FULL_FEATURE_ROWS``; ``exact_rows`` defaults to ``EXACT_FIT_ROWS``)."""
    low = EXACT_FIT_ROWS if exact_rows is None else exact_rows
    return LIMIT_KERNEL_FIT and d >= LIMIT_KERNEL_DIM and low < n <= FULL_FEATURE_ROWS


class RandomFeatureFit(NamedTuple):
    """What ``fit_random_feature_network`` found."""

    #: ``σ`` (0-d) and ``δ`` (the shape of the given ``prior_precision``), detached.
    sigma: Tensor
    prior: Tensor
    #: Whether the two starts in ``σ`` reached different optima (``MODE_TOLERANCE``);
    #: ``None`` when one start was run.
    two_optima: bool | None


def needs_second_start(last_check: tuple[int, bool] | None, n: int) -> bool:
    """Whether a fit on ``n`` rows runs the second start, given ``(rows, two optima)`` of
    the last fit that did (``None``: no such fit, as for a cold start)."""
    if last_check is None:
        return True
    rows, two_optima = last_check
    return two_optima or n >= RECHECK_GROWTH * rows


def fit_random_feature_network(
    net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None, sigma_noise: Tensor,
    prior_precision: Tensor, options: TrainingOptions,
    prior_mean: list[Tensor] | None = None, max_iter: int = MAX_ITER,
    exact_rows: int | None = EXACT_FIT_ROWS, second_start: bool = True,
) -> RandomFeatureFit:
    """Type-II maximum likelihood of ``(ℓ, δ, σ)`` for a ``random_feature_network``, then
    its weights set to the posterior mean (all in place).

    Args:
        net: a ``networks.random_feature_network``; its current length scales, with
            ``sigma_noise`` and ``prior_precision``, are the starting point.
        X: ``(n, d)`` transformed inputs; Y: ``(n, K)`` standardized targets.
        Yvar: ``(n, K)`` known noise variances (``σ`` is then not refit), or ``None``.
        prior_precision: scalar, or ``(2,)`` (weight and bias of the output layer).
        prior_mean: ``θ₀`` as ``[W₀ (K, N), b₀ (K,)]`` (default zero).
        exact_rows: above this many rows, fit the hyperparameters by the evidence of the
            first ``FIT_FEATURES`` features (``EXACT_FIT_ROWS``; ``None``: always all);
            up to ``FULL_FEATURE_ROWS`` rows ``δ`` and ``σ`` are then refit by the exact
            evidence of all the network's features at the length scales found.
        second_start: also start from ``σ = SMOOTH_START_SIGMA`` (when ``σ`` is fitted and
            ``sigma_noise`` is more than a factor 2 from it) and keep the better optimum
            (``needs_second_start`` decides it for a warm-started model).

    Returns:
        ``RandomFeatureFit(σ, δ, two_optima)``.
    """
    layer = random_feature_layer(net)
    if layer is None:
        raise ValueError("fit_random_feature_network needs a networks.random_feature_network.")
    if exact_rows is not None and (isinstance(exact_rows, bool) or not isinstance(exact_rows, int)
                                   or exact_rows < 1):
        raise ValueError(f"exact_rows must be a positive integer or None, not {exact_rows!r}.")
    if net[1].weight.dtype != torch.float64:  # the fit is cheap: run it in double
        return _fit_in_double(net, X, Y, Yvar, sigma_noise, prior_precision, options,
                              prior_mean, max_iter, exact_rows, second_start)
    head = net[1]
    tune_noise = options.tune_noise and Yvar is None
    theta0 = (torch.zeros_like(head.weight), torch.zeros_like(head.bias)) \
        if prior_mean is None else (prior_mean[0].detach(), prior_mean[1].detach())

    def design(lengthscale: Tensor, n_features: int | None = None) -> Tensor:  # Φ (n, N + 1)
        feats = layer.features(X, lengthscale, n_features)
        return torch.cat([feats, torch.ones_like(feats[:, :1])], dim=-1)

    def residual(phi: Tensor) -> Tensor:  # y − Φθ₀ (n, K) for the full Φ
        if prior_mean is None:
            return Y
        return Y - phi[:, :-1] @ theta0[0].mT - theta0[1]

    def noise(log_sigma: Tensor) -> Tensor:  # (n,) shared, or (n, K) known
        return (2 * log_sigma).exp().expand(len(X)) if Yvar is None else Yvar.clamp_min(1e-12)

    # the features of the objective: all, or the first FIT_FEATURES above exact_rows
    reduced = exact_rows is not None and len(X) > exact_rows
    n_fit = min(FIT_FEATURES, layer.omega.shape[-1] * 2) if reduced else None

    limit = exact_rows is not None and limit_kernel_fit(len(X), X.shape[-1], exact_rows)
    fused = None if limit else _closed_form_inputs(layer, X, Y, Yvar, theta0,
                                                   prior_mean is not None, n_fit)
    trend = layer.trend_features(X) if layer.has_trend else None

    # y − Φθ₀ does not depend on ℓ when θ₀'s feature weights are zero (as they start)
    fixed_residual = Y - theta0[1] if not bool(theta0[0].any()) else None

    def evidence(log_ls: Tensor, log_prior: Tensor, log_sigma: Tensor) -> Tensor:
        if limit:  # the features' limit: their kernel
            r = fixed_residual if fixed_residual is not None \
                else residual(design(log_ls.exp()))
            v = noise(log_sigma)
            return sum(limit_feature_evidence(X, layer.kernel, trend, r_k, log_ls,
                                              log_prior.exp(), v_k)
                       for r_k, v_k in _per_output_noise(r, v))
        if fused is not None:  # the same value, its gradient without autograd's graph
            return random_feature_evidence(X, fused[0], fused[1], fused[2], log_ls,
                                           log_prior.exp(), noise(log_sigma))
        phi = design(log_ls.exp(), n_features=n_fit)
        # the prior mean θ₀ lives on all features: y − Φθ₀ needs the full Φ
        r = residual(phi if n_fit is None or prior_mean is None else design(log_ls.exp()))
        return _evidence(phi, r, log_prior.exp(), noise(log_sigma))

    d = X.shape[-1]
    ls_prior = options.lengthscale_prior
    ls_loc, ls_scale = lengthscale_hyperprior(d) if ls_prior is None else ls_prior[1:]
    gamma = _GammaHyperpriors.of(options, d, prior_precision.numel(), tune_noise, X)
    # The hyperprior on δ is centred where the prior function variance is 1 (the
    # outcome variance), as for the other candidates: E‖[ψ(x), 1]‖² = 2 at every ℓ.
    prior_hp, noise_hp = hyperpriors(options, REFERENCE_PRECISION, tune_noise)
    bounds = _log_bounds(options, d, prior_precision.numel(), X)
    start = torch.cat([layer.lengthscale.log(), prior_precision.detach().reshape(-1).log(),
                       sigma_noise.detach().reshape(1).log()]).to(X)
    g = prior_precision.numel()
    if gamma is not None:  # each δ starts at its hyperprior's mode (see ``start_at_modes``)
        start[d:d + g] = gamma.start_at_modes(start[d:d + g], prior_hp)

    def add_hyperpriors(value: Tensor, log_prior: Tensor, log_sigma: Tensor) -> Tensor:
        if prior_hp is not None:  # value + log densities of δ and σ²
            value = value + (log_normal_density(log_prior.exp(), *prior_hp) if gamma is None
                             else gamma.log_normal_precisions(log_prior, prior_hp))
        if noise_hp is not None:
            value = value + log_normal_density((2 * log_sigma).exp(), *noise_hp)
        return value if gamma is None else value + gamma.scales(log_prior, log_sigma)

    def objective(u: Tensor) -> Tensor:  # −(evidence + log hyperpriors) at u
        v = torch.clamp(u, bounds[0], bounds[1])
        log_ls, log_prior, log_sigma = v[:d], v[d:d + g], v[d + g]
        value = evidence(log_ls, log_prior, log_sigma)
        value = value + (log_normal_density(log_ls.exp(), ls_loc, ls_scale) if gamma is None
                         or not gamma.on_lengthscales else gamma.lengthscales(log_ls))
        return -add_hyperpriors(value, log_prior, log_sigma)

    hyperprior = _LogNormalHyperpriors(
        d, g, None if gamma is not None and gamma.on_lengthscales else (ls_loc, ls_scale),
        prior_hp, noise_hp, X, skip_first_prior=gamma is not None and gamma.on_outputscale)

    def closed_form(u: Tensor) -> tuple[float, Tensor]:  # objective(u) and its gradient
        v, keep = torch.clamp(u, bounds[0], bounds[1]), _clamp_gradient(u, *bounds)
        log_ls, log_prior, log_sigma = v[:d], v[d:d + g], v[d + g]
        noise_var = (2 * log_sigma).exp()
        value, d_ls, d_prior, d_noise = random_feature_evidence_gradients(
            X, fused[0], fused[1], fused[2], log_ls, log_prior.exp(), noise_var.expand(len(X)))
        prior_value, prior_grad = hyperprior(v)
        if gamma is not None:
            gamma_value, gamma_grad = gamma(v)
            prior_value, prior_grad = prior_value + gamma_value, prior_grad + gamma_grad
        grad = torch.cat([d_ls, d_prior * log_prior.exp(), 2 * d_noise.sum() * noise_var[None]])
        return -float(value + prior_value), -(grad + prior_grad) * keep

    if not tune_noise:
        bounds[0][-1] = bounds[1][-1] = start[-1].clamp(bounds[0][-1], bounds[1][-1])
    starts = [start]
    if second_start and tune_noise \
            and abs(float(start[-1]) - math.log(SMOOTH_START_SIGMA)) > math.log(2):
        # the objective has an interpolating and a smoothing mode in σ
        smooth = start.clone()
        smooth[-1] = math.log(SMOOTH_START_SIGMA)
        starts.append(smooth)
    gradient = None if fused is None else closed_form
    fits = [_minimize(objective, u0, bounds, max_iter, gradient) for u0 in starts]
    u = min(fits, key=lambda fit: fit[1])[0]
    two_optima = None if len(fits) == 1 else _distinct(fits[0], fits[1], bounds)
    if limit or (reduced and n_fit < layer.omega.shape[-1] * 2 and len(X) <= FULL_FEATURE_ROWS):
        u = _refit_scales(u, d, design, residual, noise, add_hyperpriors, bounds, max_iter)
    with torch.no_grad():
        v = torch.clamp(u, bounds[0], bounds[1])
        layer.lengthscale.copy_(v[:d].exp())
        prior = v[d:d + g].exp().reshape(prior_precision.shape)
        sigma = v[d + g].exp()
        if Yvar is not None:
            sigma = Yvar.mean().clamp_min(options.min_noise_std**2).sqrt()
        phi = design(layer.lengthscale)
        _set_posterior_mean(net, phi, residual(phi), prior, noise(sigma.log()), theta0)
    return RandomFeatureFit(sigma.to(sigma_noise), prior.to(prior_precision), two_optima)


def _closed_form_inputs(layer: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None,
                        theta0: tuple[Tensor, Tensor], has_prior_mean: bool,
                        n_fit: int | None) -> tuple[Tensor, Tensor | None, Tensor] | None:
    """``(Ω, trend features (n, 2d) | None, Y − b₀ (n, K))`` for
    ``feature_evidence.random_feature_evidence`` when it computes this fit's objective:
    the sample-space form (no more rows than weights), one noise variance per row (``σ``,
    not known variances per output) and a prior mean whose feature weights are zero (the
    residual then does not depend on ``ℓ``); else ``None`` (autograd through the design)."""
    omega = layer.frequencies(n_fit)
    trend = layer.trend_features(X) if layer.has_trend else None
    columns = 2 * omega.shape[-1] + (0 if trend is None else trend.shape[-1]) + 1
    if Yvar is not None or len(X) > columns or (has_prior_mean and bool(theta0[0].any())):
        return None
    return omega.to(X), trend, Y - theta0[1]


def _per_output_noise(residual: Tensor, noise: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``[(targets (n, C), noise variances (n,))]``: all outputs at once when they share the
    noise ``(n,)``, else one pair per output of ``(n, K)`` known variances."""
    if noise.ndim == 1:
        return [(residual, noise)]
    return [(residual[:, k:k + 1], noise[:, k]) for k in range(residual.shape[-1])]


def _refit_scales(u: Tensor, d: int, design: Callable[[Tensor], Tensor],
                  residual: Callable[[Tensor], Tensor], noise: Callable[[Tensor], Tensor],
                  add_hyperpriors: Callable[[Tensor, Tensor, Tensor], Tensor],
                  bounds: tuple[Tensor, Tensor], max_iter: int) -> Tensor:
    """``u`` ``(log ℓ, log δ, log σ)`` with ``(δ, σ)`` refit by the exact evidence of all
    features at the length scales ``exp(u[:d])`` (``FULL_FEATURE_ROWS``)."""
    with torch.no_grad():
        phi = design(torch.clamp(u, bounds[0], bounds[1])[:d].exp())
        r = residual(phi)
        g = len(u) - d - 1
        grams = group_grams(phi, None if g == 1 else [phi.shape[-1] - 1, 1])
    low, high = bounds[0][d:], bounds[1][d:]

    def objective(w: Tensor) -> Tensor:
        w = torch.clamp(w, low, high)
        log_prior, log_sigma = w[:-1], w[-1]
        v = noise(log_sigma)
        value = gram_evidence(grams, r, log_prior.exp(), v) if v.ndim == 1 else sum(
            gram_evidence(grams, r[:, k], log_prior.exp(), v[:, k]) for k in range(r.shape[-1]))
        return -add_hyperpriors(value, log_prior, log_sigma)

    w, _ = _minimize(objective, u[d:], (low, high), max_iter)
    return torch.cat([u[:d], w])


def _distinct(a: tuple[Tensor, float], b: tuple[Tensor, float],
              bounds: tuple[Tensor, Tensor]) -> bool:
    """Whether two ``(u, objective)`` optima differ (``MODE_TOLERANCE``; ``σ`` is last)."""
    log_sigma = [float(torch.clamp(u, bounds[0], bounds[1])[-1]) for u, _ in (a, b)]
    return not math.isclose(a[1], b[1], abs_tol=MODE_TOLERANCE) \
        or abs(log_sigma[0] - log_sigma[1]) > math.log(2)


class _LogNormalHyperpriors:
    """The log-normal hyperpriors of the fit on ``ℓ`` (each), ``δ`` and ``σ²`` (those not
    ``None``) as a function of ``u = (log ℓ, log δ, log σ)`` ``(d + g + 1,)``: the sum of
    ``log_normal_density`` terms and its gradient in ``u``, in closed form."""

    def __init__(self, d: int, g: int, lengthscale: tuple[float, float] | None,
                 prior: tuple[float | tuple[float, ...], float] | None,
                 noise: tuple[float, float] | None, like: Tensor,
                 skip_first_prior: bool = False) -> None:
        def entries(hp: tuple[Any, float] | None, size: int) -> list[tuple[float, float, float]]:
            if hp is None:
                return [(0.0, 1.0, 0.0)] * size  # (loc, scale, present)
            locs = hp[0] if isinstance(hp[0], tuple) else (hp[0],) * size
            return [(float(loc), float(hp[1]), 1.0) for loc in locs]

        table = like.new_tensor(entries(lengthscale, d) + entries(prior, g) + entries(noise, 1))
        self.loc, self.scale, self.present = table.unbind(-1)
        if skip_first_prior:  # the first δ has a Gamma hyperprior (``_GammaHyperpriors``)
            self.present = self.present.clone()
            self.present[d] = 0.0
        self.factor = like.new_tensor([1.0] * (d + g) + [2.0])  # log σ² = 2 log σ

    def __call__(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(Σ log densities (0-d), gradient in u (d + g + 1,))``."""
        log_x = u * self.factor
        standard = (log_x - self.loc) / self.scale
        value = -(self.present * (log_x + 0.5 * standard.square())).sum()
        return value, -self.present * (1 + standard / self.scale) * self.factor


class _GammaHyperpriors:
    """The Gamma hyperpriors of the fit (``TrainingOptions``: ``lengthscale_prior``,
    ``outputscale_prior``, ``noise_prior`` of the form ``("gamma", α, β)``) as a
    function of ``u = (log ℓ, log δ, log σ)`` ``(d + g + 1,)``: the sum of
    ``(α − 1) log x − β x`` (the log density of ``x``, as ``GammaPrior.log_prob`` up to a
    constant) over ``x = ℓ`` (each), ``x = 1/δ₀`` (the kernel's output scale) and
    ``x = σ²``, and its gradient in ``u``, in closed form."""

    def __init__(self, d: int, g: int, lengthscale: tuple[float, float] | None,
                 outputscale: tuple[float, float] | None, noise: tuple[float, float] | None,
                 like: Tensor) -> None:
        rows = [(*(lengthscale or (1.0, 0.0)), 1.0, float(lengthscale is not None))] * d
        rows += [(*(outputscale or (1.0, 0.0)), -1.0, float(outputscale is not None))]
        rows += [(1.0, 0.0, -1.0, 0.0)] * (g - 1) + [(*(noise or (1.0, 0.0)), 2.0,
                                                       float(noise is not None))]
        self.alpha, self.beta, self.factor, self.present = like.new_tensor(rows).unbind(-1)
        self.d = d
        self.on_lengthscales, self.on_outputscale = lengthscale is not None, \
            outputscale is not None

    @classmethod
    def of(cls, options: TrainingOptions, d: int, g: int, tune_noise: bool,
           like: Tensor) -> _GammaHyperpriors | None:
        """The Gamma hyperpriors that ``options`` set (``None`` if none)."""
        priors = (gamma_prior(options.lengthscale_prior), gamma_prior(options.outputscale_prior),
                  gamma_prior(options.noise_prior) if tune_noise else None)
        return None if priors == (None, None, None) else cls(d, g, *priors, like)

    def __call__(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(Σ log densities (0-d), gradient in u (d + g + 1,))``."""
        log_x = u * self.factor
        x = log_x.exp()
        value = (self.present * ((self.alpha - 1) * log_x - self.beta * x)).sum()
        return value, self.present * ((self.alpha - 1) - self.beta * x) * self.factor

    def lengthscales(self, log_ls: Tensor) -> Tensor:
        """The terms of ``ℓ`` at ``log ℓ`` ``(d,)`` (0-d; differentiable)."""
        return self._terms(log_ls, slice(0, self.d))

    def scales(self, log_prior: Tensor, log_sigma: Tensor) -> Tensor:
        """The terms of ``1/δ₀`` and ``σ²`` (0-d; differentiable)."""
        return self._terms(torch.cat([log_prior.reshape(-1), log_sigma.reshape(1)]),
                           slice(self.d, None))

    def log_normal_precisions(self, log_prior: Tensor,
                              prior_hp: tuple[float | tuple[float, ...], float]) -> Tensor:
        """The log-normal hyperprior ``prior_hp`` on the entries of ``δ`` that have no
        Gamma hyperprior (all but the first with ``outputscale_prior``)."""
        if not self.on_outputscale:
            return log_normal_density(log_prior.exp(), *prior_hp)
        loc = prior_hp[0] if isinstance(prior_hp[0], (int, float)) else prior_hp[0][1:]
        rest = log_prior.reshape(-1)[1:]
        return log_normal_density(rest.exp(), loc, prior_hp[1]) if rest.numel() \
            else log_prior.new_zeros(())

    def start_at_modes(self, log_prior: Tensor,
                       prior_hp: tuple[float | tuple[float, ...], float] | None) -> Tensor:
        """``log δ`` ``(g,)`` with each entry that has a hyperprior at its mode: ``1/δ₀``
        at the output-scale prior's, the others at their log-normal's ``loc − scale²``.
        A start far out in a narrow hyperprior (the constant's, scale 0.01) makes the
        start's objective, which sets the fit's relative tolerance, so large that L-BFGS
        stops before the length scales have converged."""
        out = log_prior.clone()
        if self.on_outputscale:
            alpha, beta = float(self.alpha[self.d]), float(self.beta[self.d])
            out[0] = -math.log((alpha - 1) / beta if alpha > 1 else alpha / beta)
        if prior_hp is not None:
            locs = torch.as_tensor(prior_hp[0], dtype=out.dtype).expand(out.shape)
            first = 1 if self.on_outputscale else 0
            out[first:] = locs[first:] - prior_hp[1] ** 2
        return out

    def _terms(self, u: Tensor, part: slice) -> Tensor:
        log_x = u * self.factor[part]
        alpha, beta, present = self.alpha[part], self.beta[part], self.present[part]
        return (present * ((alpha - 1) * log_x - beta * log_x.exp())).sum()


def _clamp_gradient(u: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """The derivative of ``torch.clamp(u, low, high)`` as autograd computes it: 1 inside,
    0 outside, ½ on a bound (the tie of ``max``/``min``), 1 where ``low = u = high``."""
    inside = ((u > low) & (u < high)).to(u)
    on_bound = ((u == low) ^ (u == high)).to(u)
    return inside + 0.5 * on_bound + ((u == low) & (u == high)).to(u)


def _minimize(objective: Callable[[Tensor], Tensor], start: Tensor,
              bounds: tuple[Tensor, Tensor], max_iter: int,
              gradient: Callable[[Tensor], tuple[float, Tensor]] | None = None
              ) -> tuple[Tensor, float]:
    """L-BFGS on ``objective`` clamped to ``bounds`` from ``start``: ``(u, objective(u))``.

    A coordinate that left the box sees no gradient there, so each further pass restarts
    from the projection onto the box (where the gradient of a bound that should no longer
    be active points back inside). Every point is evaluated once: the value and gradient
    at the start (which also sets the tolerance's scale) and at the final point (which
    L-BFGS has evaluated) are reused, not recomputed. ``gradient`` gives the objective's
    value and gradient at a point in closed form (``None``: autograd through
    ``objective``)."""
    u = start.detach().clone().requires_grad_(True)
    seen = _Evaluations(objective, u, gradient)
    value, _ = seen.at(u.detach())
    scale = max(abs(value), 1.0) if math.isfinite(value) else 1.0
    for i in range(PASSES):
        with torch.no_grad():
            inside = torch.clamp(u, bounds[0], bounds[1])
            if i > 0 and torch.equal(inside, u):
                break
            u.copy_(inside)
        optimizer = lbfgs([u], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                          tolerance_grad=GRAD_TOLERANCE,
                          tolerance_change=RELATIVE_TOLERANCE * scale)
        with torch.enable_grad():
            optimizer.step(seen.closure)
    u = u.detach()
    value, _ = seen.at(u)
    return u, value if math.isfinite(value) else math.inf


class _Evaluations:
    """The objective's value and gradient at the last few points L-BFGS visited, so that
    a point is never evaluated twice (a line search's accepted point is one it tried)."""

    KEEP = 8

    def __init__(self, objective: Callable[[Tensor], Tensor], u: Tensor,
                 gradient: Callable[[Tensor], tuple[float, Tensor]] | None = None) -> None:
        self.objective, self.u, self.gradient = objective, u, gradient
        self.points: list[tuple[Tensor, float, Tensor]] = []

    def at(self, point: Tensor) -> tuple[float, Tensor]:
        """``(value, gradient)`` at ``point`` (detached), evaluated if not yet seen."""
        for seen, value, grad in reversed(self.points):
            if torch.equal(seen, point):
                return value, grad
        if self.gradient is not None:  # the value and its gradient in closed form
            x = point.detach().clone()
            with torch.no_grad():
                value, grad = self.gradient(x)
        else:
            x = point.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                loss = self.objective(x)
                (grad,) = torch.autograd.grad(loss, x)
            value = float(loss.detach())
        self.points = [*self.points[-self.KEEP + 1:], (x.detach(), value, grad)]
        return value, grad

    def closure(self) -> Tensor:
        """L-BFGS's closure: the value at ``u`` (a 0-d tensor) with ``u.grad`` set."""
        value, grad = self.at(self.u.detach())
        self.u.grad = grad.clone()
        return torch.tensor(value, dtype=self.u.dtype, device=self.u.device)


def condition_weights(net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None,
                      sigma_noise: Tensor, prior_precision: Tensor,
                      prior_mean: list[Tensor] | None = None) -> None:
    """Set a ``random_feature_network``'s output layer to its posterior mean on ``(X, Y)``
    at its length scales, ``δ`` and ``σ`` (known ``Yvar`` instead, if given), without
    fitting them: what a GP does with new data at fixed hyperparameters. The weights of
    a random-feature network are a posterior mean, not hyperparameters: a fitted state
    loaded onto other data (Ax's cross-validation folds) is conditioned on that data."""
    layer = random_feature_layer(net)
    if layer is None:
        raise ValueError("condition_weights needs a networks.random_feature_network.")
    dtype, double = net[1].weight.dtype, lambda t: t.detach().to(torch.float64)  # noqa: E731
    X, Y = double(X), double(Y)
    net.to(torch.float64)
    try:
        with torch.no_grad():
            phi = layer.features(X, layer.lengthscale)
            phi = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=-1)
            theta0 = ((torch.zeros_like(net[1].weight), torch.zeros_like(net[1].bias))
                      if prior_mean is None else (double(prior_mean[0]), double(prior_mean[1])))
            residual = Y - phi[:, :-1] @ theta0[0].mT - theta0[1]
            noise = (double(sigma_noise).square().expand(len(X)) if Yvar is None
                     else double(Yvar).clamp_min(1e-12))
            _set_posterior_mean(net, phi, residual, double(prior_precision), noise, theta0)
    finally:
        net.to(dtype)


def _fit_in_double(net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None,
                   sigma_noise: Tensor, prior_precision: Tensor, options: TrainingOptions,
                   prior_mean: list[Tensor] | None, max_iter: int,
                   exact_rows: int | None, second_start: bool) -> RandomFeatureFit:
    """``fit_random_feature_network`` of a lower-precision network, computed in float64."""
    dtype = net[1].weight.dtype
    double = lambda t: None if t is None else t.to(torch.float64)  # noqa: E731
    net.to(torch.float64)
    try:
        fit = fit_random_feature_network(
            net, double(X), double(Y), double(Yvar), double(sigma_noise),
            double(prior_precision), options,
            None if prior_mean is None else [double(t) for t in prior_mean], max_iter,
            exact_rows, second_start)
    finally:
        net.to(dtype)
    return fit._replace(sigma=fit.sigma.to(sigma_noise), prior=fit.prior.to(prior_precision))


def _log_bounds(options: TrainingOptions, d: int, g: int, like: Tensor
                ) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of ``(log ℓ (d), log δ (g), log σ)``."""
    low = [math.log(LENGTHSCALE_BOUNDS[0])] * d + [math.log(options.min_prior_precision)] * g \
        + [math.log(options.min_noise_std)]
    high = [math.log(LENGTHSCALE_BOUNDS[1])] * d + [math.log(options.max_prior_precision)] * g \
        + [math.log(options.max_noise_std)]
    return like.new_tensor(low), like.new_tensor(high)


def _groups(prior: Tensor, p: int) -> list[int] | None:
    """Column groups of one output's weights ``[w (p − 1), b]``: ``None`` for a scalar
    ``δ``, ``[p − 1, 1]`` for one ``δ`` per tensor (weight, bias) of the output layer."""
    if prior.numel() == 1:
        return None
    if prior.numel() != 2:
        raise ValueError(f"{prior.numel()} prior precisions for the 2 weight tensors of a "
                         "random-feature network.")
    return [p - 1, 1]


def _evidence(phi: Tensor, residual: Tensor, prior: Tensor, noise: Tensor) -> Tensor:
    """The exact evidence of the outputs ``(n, K)``; ``noise`` ``(n,)`` shared by all, or
    ``(n, K)`` per output."""
    groups = _groups(prior, phi.shape[-1])
    prior = prior.reshape(-1) if groups else prior.reshape(())
    if noise.ndim == 1:
        return linear_gaussian_evidence(phi, residual, prior, noise, groups)
    return sum(linear_gaussian_evidence(phi, residual[:, k], prior, noise[:, k], groups)
               for k in range(residual.shape[-1]))


def _set_posterior_mean(net: nn.Module, phi: Tensor, residual: Tensor, prior: Tensor,
                        noise: Tensor, theta0: tuple[Tensor, Tensor]) -> None:
    """Output layer ← ``θ₀ + E[θ − θ₀ | y − Φθ₀]`` per output (``noise`` as in
    ``_evidence``)."""
    groups = _groups(prior, phi.shape[-1])
    prior = prior.reshape(-1) if groups else prior.reshape(())
    if noise.ndim == 1:
        steps = linear_gaussian_posterior_mean(phi, residual, prior, noise, groups).mT
    else:
        steps = torch.stack([linear_gaussian_posterior_mean(
            phi, residual[:, k], prior, noise[:, k], groups) for k in range(residual.shape[-1])])
    head = net[1]
    head.weight.copy_(theta0[0] + steps[:, :-1])
    head.bias.copy_(theta0[1] + steps[:, -1])
