"""``LaplaceBNN(net="random_features")``: length scales, ``δ`` and ``σ`` by the exact
evidence (``lapbo.lengthscales``), the weights at the posterior mean."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.models.transforms.outcome import Standardize
from torch import Tensor

from lapbo import LaplaceBNN
from lapbo.lengthscales import LENGTHSCALE_BOUNDS, REFERENCE_PRECISION
from lapbo.networks import lengthscale_hyperprior, random_feature_layer
from laplace import linear_gaussian_evidence, linear_gaussian_posterior_mean, log_normal_density

RF = {"net": "random_features", "random_features": 256, "seed": 0}


def data(n: int = 30, d: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    X = torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return X, torch.sin(6 * X[:, :1]) + 0.5 * X[:, 1:2]


def design(model: LaplaceBNN, X: Tensor, lengthscale: Tensor | None = None) -> Tensor:
    layer = random_feature_layer(model.net)
    feats = layer.features(X, layer.lengthscale if lengthscale is None else lengthscale)
    return torch.cat([feats, torch.ones_like(feats[:, :1])], dim=-1)


def standardized(model: LaplaceBNN) -> Tensor:
    return model._training_data()[1]


def test_weights_are_the_posterior_mean_and_the_evidence_is_exact() -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, **RF).fit()
    phi, y = design(model, X), standardized(model)
    prior, s2 = model.prior_precision, model.sigma_noise.square()
    mean = linear_gaussian_posterior_mean(phi, y, prior, s2)
    head = model.net[1]
    assert torch.allclose(head.weight.detach().reshape(-1), mean[:-1, 0], atol=1e-10)
    assert float(head.bias.detach()) == pytest.approx(float(mean[-1, 0]), abs=1e-10)
    exact = float(linear_gaussian_evidence(phi, y, prior, s2))
    # the evidence by which candidates are compared, and the laplace object's
    assert float(model.log_marginal_likelihood()) == pytest.approx(exact, rel=1e-8)
    assert float(model.la.log_marginal_likelihood()) == pytest.approx(exact, rel=1e-8)


def test_the_fit_is_a_local_maximum_of_evidence_plus_hyperpriors() -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, **RF).fit()
    y, d = standardized(model), X.shape[-1]
    loc, scale = lengthscale_hyperprior(d)

    def objective(u: Tensor) -> float:
        ls, prior, sigma = u[:d].exp(), u[d].exp(), u[d + 1].exp()
        value = linear_gaussian_evidence(design(model, X, ls), y, prior, sigma**2)
        value = value + log_normal_density(ls, loc, scale)
        value = value + log_normal_density(prior, math.log(REFERENCE_PRECISION), 1.0)
        return float(value + log_normal_density(sigma**2, -8.0, 2.0))

    layer = random_feature_layer(model.net)
    u = torch.cat([layer.lengthscale.log(), model.prior_precision.log().reshape(1),
                   model.sigma_noise.log().reshape(1)])
    best = objective(u)
    for i in range(d + 2):
        for h in (-1e-3, 1e-3):
            v = u.clone()
            v[i] += h
            low, high = (LENGTHSCALE_BOUNDS if i < d else (1e-6, 1e6) if i == d
                         else (1e-3, 10.0))
            if not low <= float(v[i].exp()) <= high:  # a bound is active there
                continue
            assert objective(v) <= best + 1e-7


def test_irrelevant_inputs_get_long_length_scales() -> None:
    X = torch.rand(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = LaplaceBNN(X, torch.sin(6 * X[:, :1]), **RF).fit()
    ls = random_feature_layer(model.net).lengthscale
    assert float(ls[0]) < 0.5
    assert float(ls[1:].min()) > 3 * float(ls[0])
    assert float(ls.min()) >= LENGTHSCALE_BOUNDS[0]


def test_posterior_is_bayesian_linear_regression_and_differentiable_in_x() -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, **RF).fit()
    Xt = torch.rand(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    phi, phit = design(model, X), design(model, Xt)
    s2, prior = model.sigma_noise.square(), model.prior_precision
    precision = phi.T @ phi / s2 + prior * torch.eye(phi.shape[-1], dtype=torch.float64)
    cov = torch.linalg.inv(precision)
    post = model.posterior(Xt)
    ysd = float(model.outcome_transform.stdvs)
    assert post.mean.shape == (5, 1) and post.variance.shape == (5, 1)
    var = (phit @ cov * phit).sum(-1) * ysd**2
    assert torch.allclose(post.variance.squeeze(-1), var, rtol=1e-8, atol=1e-14)
    x = Xt[:1].clone().requires_grad_(True)
    model.posterior(x).mean.sum().backward()
    h = 1e-6
    for j in range(3):
        e = torch.zeros_like(Xt[:1])
        e[0, j] = h
        fd = (model.posterior(Xt[:1] + e).mean - model.posterior(Xt[:1] - e).mean) / (2 * h)
        assert float(x.grad[0, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_known_noise_multi_output_float32_and_a_per_tensor_prior() -> None:
    X, Y = data()
    Y2 = torch.cat([Y, -Y.square()], dim=-1)
    known = LaplaceBNN(X, Y2, train_Yvar=torch.full_like(Y2, 1e-2), **RF).fit()
    assert known.posterior(X[:4]).mean.shape == (4, 2)
    tf = known.outcome_transform
    expected = math.sqrt(float((1e-2 / tf.stdvs.square()).mean()))
    assert float(known.sigma_noise) == pytest.approx(expected, rel=1e-6)
    _, y, yvar = known._training_data()  # per-output noise in standardized units
    phi = design(known, X)
    exact = sum(float(linear_gaussian_evidence(phi, y[:, k], known.prior_precision, yvar[:, k]))
                for k in range(2))
    assert float(known.log_marginal_likelihood()) == pytest.approx(exact, rel=1e-8)
    single = LaplaceBNN(X.float(), Y.float(), compute_dtype=torch.float32, **RF).fit()
    assert single.net[1].weight.dtype == torch.float64  # always double (cheap, stable)
    post = single.posterior(X[:3].float())
    assert post.mean.dtype == torch.float32 and bool(torch.isfinite(post.variance).all())
    layerwise = LaplaceBNN(X, Y, prior_structure="layerwise", **RF).fit()
    assert layerwise.prior_precision.shape == (2,)
    assert float(layerwise.log_marginal_likelihood()) >= float(
        LaplaceBNN(X, Y, **RF).fit().log_marginal_likelihood()) - 1e-6


def test_a_warm_start_starts_from_the_previous_hyperparameters_and_refits() -> None:
    X, Y = data(20)
    first = LaplaceBNN(X, Y, **RF).fit()
    X2, Y2 = data(30)
    second = LaplaceBNN(X2, Y2, warm_start=first, **RF)
    old = random_feature_layer(first.net)
    new = random_feature_layer(second.net)
    assert torch.equal(new.omega, old.omega) and torch.equal(new.lengthscale, old.lengthscale)
    assert new is not old
    second.fit()
    assert not torch.equal(new.lengthscale, old.lengthscale)
    assert torch.equal(random_feature_layer(first.net).lengthscale, old.lengthscale)


def test_in_a_family_with_its_exact_evidence() -> None:
    from lapbo.selection import MLP_CANDIDATES, RANDOM_FEATURE_CANDIDATE

    X, Y = data(25)
    model = LaplaceBNN(X, Y, n_epochs=100, n_epochs_warm_start=20, width=16,
                       outcome_transform=Standardize(m=1),
                       candidates=[*MLP_CANDIDATES,
                                   {**RANDOM_FEATURE_CANDIDATE, "random_features": 256}]).fit()
    rf = [s for s in model.selection if s.options.get("net") == "random_features"]
    assert len(rf) == 1 and len(model.selection) == 3
    child = model._candidate_models[model.selection.index(rf[0])]
    assert rf[0].log_marginal_likelihood == pytest.approx(
        float(child.la.log_marginal_likelihood()), rel=1e-8)
    best = max(model.selection, key=lambda s: s.log_marginal_likelihood)
    assert best.chosen


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"net": "mlp"}, "net must be"),
    ({"net": "random_features", "random_features": 0}, "even random_features > 0"),
    ({"net": "random_features", "random_features": 7}, "even random_features > 0"),
])
def test_bad_network_names_are_rejected(kwargs, message) -> None:
    X, Y = data(5)
    with pytest.raises(ValueError, match=message):
        LaplaceBNN(X, Y, **kwargs)


def test_a_state_of_either_architecture_loads_into_a_default_model() -> None:
    X, Y = data(20)
    rf = LaplaceBNN(X, Y, candidates=[{"net": "random_features", "random_features": 64}],
                    n_epochs=50).fit()
    plain = LaplaceBNN(X, Y, candidates=[{"net": "random_features", "random_features": 64,
                                          "trend": None, "random_feature_kernel": "matern52"}]
                       ).fit()
    assert random_feature_layer(rf.net).has_trend and not random_feature_layer(plain.net).has_trend
    mlp = LaplaceBNN(X, Y, candidates=None, n_epochs=50, width=8, seed=0).fit()
    Xt = torch.rand(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for saved, options, first in ((rf, {}, None), (mlp, {"width": 8}, None),
                                  (mlp, {"width": 8}, rf), (plain, {}, rf), (rf, {}, plain)):
        fresh = LaplaceBNN(X, Y, seed=9, **options)
        if first is not None:  # load one architecture's state, then another's, into one model
            fresh.load_state_dict(first.state_dict())
        fresh.load_state_dict(saved.state_dict())
        p0, p1 = saved.posterior(Xt), fresh.posterior(Xt)
        assert torch.allclose(p1.mean, p0.mean, atol=1e-10)
        assert torch.allclose(p1.variance, p0.variance, atol=1e-10)


def test_a_state_with_one_prior_precision_per_tensor_loads_with_its_structure() -> None:
    """The default family from ten inputs on chooses a network with one ``δ`` per weight
    tensor: its state loads into a fresh default model (as Ax does for every fit) with that
    structure and predicts the same; loading a scalar state back restores one ``δ``; a
    per-tensor state does not load into a model whose curvature cannot take it."""
    g = torch.Generator().manual_seed(6)
    X = torch.rand(22, 10, generator=g, dtype=torch.float64)
    Y = (X - 0.4).square().sum(-1, keepdim=True)
    saved = LaplaceBNN(X, Y, seed=0).fit()
    assert saved.prior_structure == "layerwise" and saved.prior_precision.shape == (2,)
    scalar = LaplaceBNN(X, Y, candidates=None, net="random_features", random_features=4096,
                        trend=None, seed=0).fit()
    Xt = torch.rand(6, 10, generator=g, dtype=torch.float64)
    fresh = LaplaceBNN(X, Y, seed=9)
    for state in (saved, scalar, saved):
        fresh.load_state_dict(state.state_dict())
        assert fresh.prior_structure == state.prior_structure
        p0, p1 = state.posterior(Xt), fresh.posterior(Xt)
        assert torch.allclose(p1.mean, p0.mean, atol=1e-10)
        assert torch.allclose(p1.variance, p0.variance, atol=1e-10)
    kron = LaplaceBNN(X, Y, candidates=None, net="random_features", random_features=4096,
                      trend=None, hessian_structure="kron")
    with pytest.raises(UnsupportedError, match="prior_structure='layerwise'"):
        kron.load_state_dict(saved.state_dict())


@pytest.mark.parametrize("known_noise", [False, True])
def test_above_exact_rows_the_hyperparameters_are_those_of_the_first_features_and_the_mean_uses_all(
    known_noise: bool, monkeypatch,
) -> None:
    from lapbo import lengthscales
    from lapbo.lengthscales import fit_random_feature_network

    monkeypatch.setattr(lengthscales, "FIT_FEATURES", 24)
    monkeypatch.setattr(lengthscales, "FULL_FEATURE_ROWS", 50)  # no refit of (δ, σ)
    X, Y = data(n=60)
    Yvar = torch.linspace(1e-4, 1e-2, 60, dtype=torch.float64).unsqueeze(-1) \
        if known_noise else None
    # the reduced objective at n = 60 > exact_rows = 40 ...
    model = LaplaceBNN(X, Y, **RF)
    Xs, Ys, _ = model._training_data()
    sigma, prior, _ = fit_random_feature_network(
        model.net, Xs, Ys, Yvar, model.sigma_noise, model.prior_precision, model.options,
        exact_rows=40)
    # ... is the exact objective of a network with the first 24 of its features
    small = LaplaceBNN(X, Y, **{**RF, "random_features": 24})
    layer, small_layer = random_feature_layer(model.net), random_feature_layer(small.net)
    small_layer.omega.copy_(layer.omega[:, :12])
    sigma_ref, prior_ref, _ = fit_random_feature_network(
        small.net, Xs, Ys, Yvar, small.sigma_noise, small.prior_precision, small.options,
        exact_rows=None)
    assert torch.allclose(layer.lengthscale, small_layer.lengthscale, rtol=1e-4)
    if Yvar is None:
        assert float(sigma) == pytest.approx(float(sigma_ref), rel=1e-4)
    else:  # known noise: σ reports the RMS of the given noise
        assert float(sigma) == pytest.approx(float(Yvar.mean().sqrt()), rel=1e-12)
    assert float(prior) == pytest.approx(float(prior_ref), rel=1e-4)
    # the weights are the posterior mean of all 256 features given all 60 rows
    noise = sigma**2 if Yvar is None else Yvar[:, 0]
    mean = linear_gaussian_posterior_mean(design(model, Xs), Ys, prior, noise)
    assert torch.allclose(model.net[1].weight.detach().reshape(-1), mean[:-1, 0], atol=1e-9)


@pytest.mark.parametrize("known_noise", [False, True])
def test_between_exact_and_full_feature_rows_delta_and_sigma_are_refit_on_all_features(
    known_noise: bool, monkeypatch,
) -> None:
    """``EXACT_FIT_ROWS < n ≤ FULL_FEATURE_ROWS`` without the limit kernel: the length
    scales are the reduced objective's, then ``(δ, σ)`` maximize the exact evidence of all
    features (plus the hyperpriors) at those length scales; the weights are that
    posterior's mean."""
    from lapbo import lengthscales
    from lapbo.lengthscales import fit_random_feature_network

    monkeypatch.setattr(lengthscales, "FIT_FEATURES", 24)
    monkeypatch.setattr(lengthscales, "LIMIT_KERNEL_FIT", False)
    X, Y = data(n=60)
    Y = Y + 0.05 * torch.randn(60, 1, generator=torch.Generator().manual_seed(3),
                               dtype=torch.float64)
    Yvar = torch.linspace(1e-4, 1e-2, 60, dtype=torch.float64).unsqueeze(-1) \
        if known_noise else None
    fits = {}
    for full_rows in (50, 100):  # above FULL_FEATURE_ROWS: no refit; below: refit
        monkeypatch.setattr(lengthscales, "FULL_FEATURE_ROWS", full_rows)
        model = LaplaceBNN(X, Y, **RF)
        Xs, Ys, _ = model._training_data()
        fits[full_rows] = model, fit_random_feature_network(
            model.net, Xs, Ys, Yvar, model.sigma_noise, model.prior_precision,
            model.options, exact_rows=40)
    (reduced, _), (refit, (sigma, prior, _)) = fits[50], fits[100]
    layer = random_feature_layer(refit.net)
    assert torch.allclose(layer.lengthscale, random_feature_layer(reduced.net).lengthscale)
    phi = design(refit, Xs)
    noise_hp = refit.options.noise_prior

    def objective(log_prior: Tensor, log_sigma: Tensor) -> Tensor:
        noise = (2 * log_sigma).exp().expand(60) if Yvar is None else Yvar[:, 0]
        value = linear_gaussian_evidence(phi, Ys, log_prior.exp(), noise)
        value = value + log_normal_density(log_prior.exp(), math.log(REFERENCE_PRECISION),
                                           refit.options.prior_precision_prior)
        if Yvar is None:
            value = value + log_normal_density((2 * log_sigma).exp(), *noise_hp)
        return value

    log_prior = prior.log().clone().requires_grad_(True)
    log_sigma = sigma.log().clone().requires_grad_(True)
    grads = torch.autograd.grad(objective(log_prior, log_sigma), (log_prior, log_sigma),
                                allow_unused=True)
    assert float(grads[0].abs().max()) < 1e-4
    if Yvar is None:
        assert abs(float(grads[1])) < 1e-4
        with torch.no_grad():  # the reduced fit's (δ, σ) are worse for all the features
            assert float(objective(log_prior, log_sigma)) > float(objective(
                reduced.prior_precision.log(), reduced.sigma_noise.log())) + 1e-3
    noise = sigma**2 if Yvar is None else Yvar[:, 0]
    mean = linear_gaussian_posterior_mean(phi, Ys, prior, noise)
    assert torch.allclose(refit.net[1].weight.detach().reshape(-1), mean[:-1, 0], atol=1e-9)


@pytest.mark.parametrize("trend", [None, "quadratic"])
def test_between_exact_and_full_feature_rows_the_length_scales_are_the_limit_kernels(
    trend: str | None, monkeypatch,
) -> None:
    """``EXACT_FIT_ROWS < n ≤ FULL_FEATURE_ROWS``: ``(ℓ, δ, σ)`` maximize the evidence of
    the kernel the features approximate plus the hyperpriors (a stationary point of it),
    then ``(δ, σ)`` are refit by all the features' evidence at those length scales."""
    from lapbo import lengthscales
    from lapbo.feature_evidence import limit_feature_evidence
    from lapbo.lengthscales import fit_random_feature_network

    monkeypatch.setattr(lengthscales, "LIMIT_KERNEL_FIT", True)
    X, Y = data(n=60, d=4)  # from LIMIT_KERNEL_DIM inputs on
    Y = Y + 0.05 * torch.randn(60, 1, generator=torch.Generator().manual_seed(3),
                               dtype=torch.float64)
    fits = {}
    refit = lengthscales._refit_scales
    for refits in (False, True):
        monkeypatch.setattr(lengthscales, "_refit_scales",
                            refit if refits else lambda u, *args: u)
        model = LaplaceBNN(X, Y, **{**RF, "trend": trend})
        Xs, Ys, _ = model._training_data()
        fits[refits] = model, fit_random_feature_network(
            model.net, Xs, Ys, None, model.sigma_noise, model.prior_precision,
            model.options, exact_rows=40)
    (limit, (sigma, prior, _)), (full, (sigma_full, _, _)) = fits[False], fits[True]
    layer = random_feature_layer(limit.net)
    assert torch.allclose(layer.lengthscale, random_feature_layer(full.net).lengthscale)
    assert float(sigma_full) != pytest.approx(float(sigma), rel=1e-3)  # refit on features
    assert lengthscales.limit_kernel_fit(60, 4, 40) and not lengthscales.limit_kernel_fit(
        60, 3, 40)  # below LIMIT_KERNEL_DIM inputs: the reduced objective, as before
    options, d = limit.options, X.shape[-1]
    trend_features = layer.trend_features(Xs) if layer.has_trend else None

    def objective(u: Tensor) -> Tensor:
        value = limit_feature_evidence(Xs, "rbf", trend_features, Ys, u[:d],
                                           u[d:d + 1].exp(), (2 * u[-1]).exp().expand(60))
        value = value + log_normal_density(u[:d].exp(), *lengthscale_hyperprior(d))
        value = value + log_normal_density(u[d].exp(), math.log(REFERENCE_PRECISION),
                                           options.prior_precision_prior)
        return value + log_normal_density((2 * u[-1]).exp(), *options.noise_prior)

    u = torch.cat([layer.lengthscale.log(), prior.log().reshape(1), sigma.log().reshape(1)])
    u.requires_grad_(True)
    best = objective(u)
    (grad,) = torch.autograd.grad(best, u)
    assert float(grad.abs().max()) < 1e-2  # L-BFGS's tolerance: 1e-5 relative
    with torch.no_grad():
        for i in range(d + 2):
            for h in (-0.05, 0.05):
                assert float(objective(u + h * torch.eye(d + 2, dtype=u.dtype)[i])) < float(best)


def test_the_limit_kernel_fit_with_known_noise_per_output(monkeypatch) -> None:
    """Known noise variances per output: the limit objective is the sum of each output's
    evidence under its own variances, and ``ℓ`` a stationary point of it (with the
    hyperpriors); the model then predicts both outputs."""
    from lapbo import lengthscales
    from lapbo.feature_evidence import limit_feature_evidence

    monkeypatch.setattr(lengthscales, "EXACT_FIT_ROWS", 40)
    monkeypatch.setattr(lengthscales, "LIMIT_FEATURES", 512)
    monkeypatch.setattr(lengthscales, "LIMIT_KERNEL_FIT", True)
    monkeypatch.setattr(lengthscales, "_refit_scales", lambda u, *args: u)
    X, _ = data(n=60, d=4)
    Y = torch.cat([torch.sin(5 * X[:, :1]), torch.cos(3 * X[:, 1:2])], -1)
    Yvar = torch.stack([torch.full((60,), 1e-3), torch.linspace(1e-3, 1e-2, 60)], -1).double()
    model = LaplaceBNN(X, Y, train_Yvar=Yvar, **{**RF, "candidates": None, "trend": None}
                       ).fit()
    layer = random_feature_layer(model.net)
    assert layer.omega.shape[-1] == 256
    Xs, Ys, Yv = model._training_data()
    u = torch.cat([layer.lengthscale.log(), model.prior_precision.log().reshape(1)])
    u.requires_grad_(True)
    value = sum(limit_feature_evidence(Xs, "rbf", None, Ys[:, k:k + 1], u[:4], u[4:].exp(),
                                       Yv[:, k]) for k in range(2))
    value = value + log_normal_density(u[:4].exp(), *lengthscale_hyperprior(4))
    value = value + log_normal_density(u[4].exp(), math.log(REFERENCE_PRECISION),
                                       model.options.prior_precision_prior)
    (grad,) = torch.autograd.grad(value, u)
    assert float(grad.abs().max()) < 1e-2
    assert model.posterior(torch.rand(3, 4, dtype=torch.float64)).mean.shape == (3, 2)


def test_the_first_features_approximate_the_kernel_of_all() -> None:
    model = LaplaceBNN(*data(), **{**RF, "random_features": 4096, "trend": None})
    layer = random_feature_layer(model.net)
    X = torch.rand(20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ls = torch.full((3,), 0.3, dtype=torch.float64)
    exact = torch.exp(-0.5 * torch.cdist(X / ls, X / ls).square())
    for count, tol in ((64, 0.4), (512, 0.1), (4096, 0.02)):
        feats = layer.features(X, ls, None if count == 4096 else count)
        assert feats.shape == (20, count)
        assert float((feats @ feats.mT - exact).abs().max()) < tol


def test_a_fit_started_at_a_small_noise_also_tries_the_smoothing_mode(monkeypatch) -> None:
    import lapbo.lengthscales as lengthscales

    g = torch.Generator().manual_seed(1)
    X = torch.rand(80, 3, generator=g, dtype=torch.float64)
    Y = torch.sin(6 * X[:, :1]) + 0.5 * X[:, 1:2] \
        + 0.5 * torch.randn(80, 1, generator=g, dtype=torch.float64)

    def fit() -> LaplaceBNN:
        return LaplaceBNN(X, Y, **RF, candidates=None, sigma_noise=1e-3).fit()

    both = fit()
    monkeypatch.setattr(lengthscales, "SMOOTH_START_SIGMA", 1e-3)  # one start only
    single = fit()
    # from σ = 1e-3 alone the fit interpolates the noise; the second start finds the
    # mode that explains it, whose evidence is tens of nats higher
    assert float(single.sigma_noise) < 0.01 < 0.3 < float(both.sigma_noise)
    assert float(both.log_marginal_likelihood()) > float(single.log_marginal_likelihood()) + 10


def test_the_second_start_is_rechecked_after_two_optima_or_growth_of_the_data() -> None:
    from lapbo.lengthscales import RECHECK_GROWTH, needs_second_start

    assert needs_second_start(None, 10)  # cold: no check yet
    assert needs_second_start((50, True), 51)  # the last check found two optima
    assert not needs_second_start((50, False), 59)
    assert needs_second_start((50, False), int(50 * RECHECK_GROWTH))


def test_a_warm_start_skips_the_second_start_while_its_check_found_one_optimum(
    monkeypatch,
) -> None:
    import lapbo.lengthscales as lengthscales

    g = torch.Generator().manual_seed(2)
    X = torch.rand(40, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X[:, :1]) + 0.1 * torch.randn(40, 1, generator=g, dtype=torch.float64)
    starts = []
    minimize = lengthscales._minimize

    def counting(objective, start, bounds, max_iter, gradient=None):  # noqa: ANN001, ANN202
        starts.append(float(start[-1].exp()))
        return minimize(objective, start, bounds, max_iter, gradient)

    monkeypatch.setattr(lengthscales, "_minimize", counting)
    cold = LaplaceBNN(X[:30], Y[:30], **RF, candidates=None, sigma_noise=0.1).fit()
    assert len(starts) == 2 and cold._mode_check == (30, False)
    starts.clear()
    warm = LaplaceBNN(X[:33], Y[:33], **RF, candidates=None, warm_start=cold).fit()
    assert len(starts) == 1 and warm._mode_check == (30, False)
    starts.clear()  # 36 rows ≥ 1.2 × 30: checked again
    grown = LaplaceBNN(X[:36], Y[:36], **RF, candidates=None, warm_start=warm).fit()
    assert float(warm.sigma_noise) < 0.5 and len(starts) == 2
    assert grown._mode_check == (36, False)


def test_above_exact_rows_a_random_feature_model_keeps_its_first_features(monkeypatch) -> None:
    """Many rows: the network keeps its first ``FIT_FEATURES`` features (a warm start's
    prefix and its prior-mean entries), its evidence is still the laplace object's, and
    its state loads into a fresh model."""
    from lapbo import lengthscales

    monkeypatch.setattr(lengthscales, "EXACT_FIT_ROWS", 40)
    monkeypatch.setattr(lengthscales, "FULL_FEATURE_ROWS", 40)
    monkeypatch.setattr(lengthscales, "FIT_FEATURES", 32)
    X, Y = data(n=60)
    small = LaplaceBNN(X[:30], Y[:30], **RF).fit()
    assert random_feature_layer(small.net).omega.shape[-1] == 128
    big = LaplaceBNN(X, Y, **RF, warm_start=small).fit()
    layer = random_feature_layer(big.net)
    assert layer.omega.shape[-1] == 16 and big.net[1].weight.shape == (1, 32 + 6)
    assert torch.equal(layer.omega, random_feature_layer(small.net).omega[:, :16])
    assert big.prior_mean.shape == (39,) and bool((big.prior_mean == 0).all())
    lml = float(big.log_marginal_likelihood())
    assert lml == pytest.approx(float(big.la.log_marginal_likelihood()), rel=1e-8)
    phi, y = design(big, big._training_data()[0]), standardized(big)
    exact = linear_gaussian_evidence(phi, y, big.prior_precision, big.sigma_noise.square())
    assert lml == pytest.approx(float(exact), rel=1e-8)
    fresh = LaplaceBNN(X[:30], Y[:30], **RF)  # its network: all 128 frequencies
    Xt = torch.rand(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fresh._train_X, fresh._train_Y = big._train_X, big._train_Y  # the loaded weights are
    fresh.load_state_dict(big.state_dict())  # conditioned on the loading model's data
    p0, p1 = big.posterior(Xt), fresh.posterior(Xt)
    assert torch.allclose(p0.mean, p1.mean, atol=1e-10)
    assert torch.allclose(p0.variance, p1.variance, atol=1e-10)


@pytest.mark.parametrize("trend", [None, "quadratic"])
def test_between_exact_and_full_feature_rows_a_random_feature_model_grows(trend,
                                                                         monkeypatch) -> None:
    """``EXACT_FIT_ROWS < n ≤ FULL_FEATURE_ROWS``: the network grows to ``LIMIT_FEATURES``
    features whose first ones are a warm start's (its Sobol sequence continued), with the
    warm start's prior-mean entries in place; its evidence is the laplace object's; below
    and above that range the model is as before, and its state loads into a fresh model."""
    from lapbo import lengthscales

    monkeypatch.setattr(lengthscales, "EXACT_FIT_ROWS", 40)
    monkeypatch.setattr(lengthscales, "FULL_FEATURE_ROWS", 50)
    monkeypatch.setattr(lengthscales, "FIT_FEATURES", 32)
    monkeypatch.setattr(lengthscales, "LIMIT_FEATURES", 512)
    monkeypatch.setattr(lengthscales, "LIMIT_KERNEL_FIT", True)
    X, Y = data(n=60, d=4)
    options = {**RF, "trend": trend, "candidates": None}
    small = LaplaceBNN(X[:30], Y[:30], **options).fit()
    first = random_feature_layer(small.net).omega.clone()
    assert first.shape[-1] == 128  # 30 rows: as before
    theta = torch.randn(small.prior_mean.shape, generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64)
    small.prior_mean.copy_(theta)  # entries a warm start must carry to their columns
    grown = LaplaceBNN(X[:45], Y[:45], **options, warm_start=small)
    layer, t = random_feature_layer(grown.net), 8 if trend else 0
    assert layer.omega.shape[-1] == 256 and grown.net[1].weight.shape == (1, 512 + t)
    assert torch.equal(layer.omega[:, :128], first)
    fresh = random_feature_layer(LaplaceBNN(X[:30], Y[:30], **{**options,
                                                                "random_features": 512}).net)
    assert torch.equal(layer.omega, fresh.omega)  # the same sequence, continued
    W = grown.prior_mean[:-1].reshape(1, -1)
    assert torch.equal(W[:, :128], theta[:-1].reshape(1, -1)[:, :128])  # cosines
    assert torch.equal(W[:, 256:384], theta[:-1].reshape(1, -1)[:, 128:256])  # sines
    assert torch.equal(W[:, 512:], theta[:-1].reshape(1, -1)[:, 256:])  # trend
    assert bool((W[:, 128:256] == 0).all()) and bool((W[:, 384:512] == 0).all())
    assert float(grown.prior_mean[-1]) == float(theta[-1])
    grown.fit()
    lml = float(grown.log_marginal_likelihood())
    assert lml == pytest.approx(float(grown.la.log_marginal_likelihood()), rel=1e-8)
    # above FULL_FEATURE_ROWS: the first FIT_FEATURES of the grown network
    big = LaplaceBNN(X, Y, **options, warm_start=grown).fit()
    assert torch.equal(random_feature_layer(big.net).omega, first[:, :16])
    loaded = LaplaceBNN(X[:30], Y[:30], **options)
    loaded._train_X, loaded._train_Y = grown._train_X, grown._train_Y
    loaded.load_state_dict(grown.state_dict())
    Xt = torch.rand(5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(loaded.posterior(Xt).variance, grown.posterior(Xt).variance,
                          atol=1e-10)
    three = LaplaceBNN(X[:45, :3], Y[:45], **options)  # below LIMIT_KERNEL_DIM: no growth
    assert random_feature_layer(three.net).omega.shape[-1] == 128


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_bad_exact_rows_is_rejected(bad) -> None:
    from lapbo.lengthscales import fit_random_feature_network

    model = LaplaceBNN(*data(), **RF)
    X, Y, _ = model._training_data()
    with pytest.raises(ValueError, match="exact_rows"):
        fit_random_feature_network(model.net, X, Y, None, model.sigma_noise,
                                   model.prior_precision, model.options, exact_rows=bad)
