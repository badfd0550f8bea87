"""The closed-form gradient of the random-feature evidence equals autograd's through the
design matrix, and the fit that uses it finds what the autograd objective finds."""

from __future__ import annotations

import pytest
import torch

from lapbo import lengthscales, networks
from lapbo.feature_evidence import feature_kernel, limit_feature_evidence, random_feature_evidence
from lapbo.training import TrainingOptions
from laplace import linear_gaussian_evidence

DT = torch.float64


def problem(n: int, d: int, C: int, trend: bool, kernel: str = "rbf", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = networks.ScaledRandomFeatures(d, 256, kernel=kernel, trend=trend).to(DT)
    X = torch.rand(n, d, generator=g, dtype=DT)
    Y = torch.sin(5 * X[:, :1]) + 0.3 * torch.randn(n, C, generator=g, dtype=DT)
    return layer, X, Y


def autograd_evidence(layer, X, Y, log_ls, prior, noise, n_features=None):
    phi = layer.features(X, log_ls.exp(), n_features)
    phi = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=-1)
    groups = None if prior.numel() == 1 else [phi.shape[-1] - 1, 1]
    return linear_gaussian_evidence(phi, Y, prior.reshape(()) if groups is None else prior,
                                    noise, groups)


@pytest.mark.parametrize("trend", [False, True])
@pytest.mark.parametrize("n_prior", [1, 2])
@pytest.mark.parametrize(("C", "kernel"), [(1, "rbf"), (2, "matern52")])
def test_value_and_gradient_equal_autograd(trend, n_prior, C, kernel):
    layer, X, Y = problem(n=15, d=3, C=C, trend=trend, kernel=kernel)
    hyper = [torch.tensor([-0.3, 0.2, -1.0], dtype=DT), torch.tensor([0.7, 0.05][:n_prior],
                                                                     dtype=DT),
             torch.linspace(0.01, 0.05, 15, dtype=DT)]
    a = [h.clone().requires_grad_(True) for h in hyper]
    b = [h.clone().requires_grad_(True) for h in hyper]
    u = 2 * X - 1
    T = layer.trend_scale * torch.cat([u, u.square()], -1) if trend else None
    fused = random_feature_evidence(X, layer.omega, T, Y, a[0], a[1].exp(), a[2])
    reference = autograd_evidence(layer, X, Y, b[0], b[1].exp(), b[2])
    assert torch.allclose(fused, reference, rtol=1e-12, atol=1e-10)
    fused.backward()
    reference.backward()
    for x, y in zip(a, b):
        assert torch.allclose(x.grad, y.grad, rtol=1e-9, atol=1e-9)


def test_gradient_matches_finite_differences():
    layer, X, Y = problem(n=10, d=2, C=1, trend=True)
    x0 = torch.tensor([-0.5, 0.3, 0.2, -0.4], dtype=DT)

    def f(x):
        return random_feature_evidence(X, layer.omega, None, Y, x[:2], x[2:3].exp(),
                                       (2 * x[3]).exp().expand(10))

    assert torch.autograd.gradcheck(f, (x0.clone().requires_grad_(True),), eps=1e-6,
                                    atol=1e-6)


def test_the_input_gradient_equals_autograd_through_the_design():
    """The evidence's gradient in the inputs (which a learned ``Warp`` moves)."""
    layer, X, Y = problem(n=12, d=3, C=2, trend=True)
    log_ls, prior = torch.tensor([-0.3, 0.2, -1.0], dtype=DT), torch.tensor([0.7, 0.05], dtype=DT)
    noise = torch.full((12,), 0.02, dtype=DT)
    a, b = X.clone().requires_grad_(True), X.clone().requires_grad_(True)
    u = 2 * a - 1
    fused = random_feature_evidence(a, layer.omega, layer.trend_scale * torch.cat(
        [u, u.square()], -1), Y, log_ls, prior, noise)
    reference = autograd_evidence(layer, b, Y, log_ls, prior, noise)
    torch.testing.assert_close(torch.autograd.grad(fused, a)[0],
                               torch.autograd.grad(reference, b)[0], rtol=1e-9, atol=1e-9)


def test_the_fit_finds_what_the_autograd_objective_finds(monkeypatch):
    layer_net = networks.random_feature_network(2, 1, 512, trend="quadratic").to(DT)
    g = torch.Generator().manual_seed(3)
    X = torch.rand(25, 2, generator=g, dtype=DT)
    Y = torch.cos(4 * X.sum(-1, keepdim=True)) + 0.05 * torch.randn(25, 1, generator=g,
                                                                     dtype=DT)
    Y = (Y - Y.mean()) / Y.std()
    options = TrainingOptions()
    results, calls = [], []
    closed = lengthscales.random_feature_evidence_gradients

    def counted(*args, **kwargs):
        calls.append(1)
        return closed(*args, **kwargs)

    monkeypatch.setattr(lengthscales, "random_feature_evidence_gradients", counted)
    for closed_form in (True, False):
        net = networks.random_feature_network(2, 1, 512, trend="quadratic").to(DT)
        net.load_state_dict(layer_net.state_dict())
        if not closed_form:
            n_closed = len(calls)
            monkeypatch.setattr(lengthscales, "_closed_form_inputs", lambda *a, **k: None)
        fit = lengthscales.fit_random_feature_network(
            net, X, Y, None, torch.tensor(0.01, dtype=DT), torch.tensor(1.0, dtype=DT),
            options)
        results.append((net[0].lengthscale.clone(), fit.sigma, fit.prior))
    # the default fit evaluated the closed form (every evaluation), the other never
    assert n_closed > 10 and len(calls) == n_closed
    (ls_a, s_a, p_a), (ls_b, s_b, p_b) = results
    assert torch.allclose(ls_a, ls_b, rtol=1e-5)
    assert torch.allclose(s_a, s_b, rtol=1e-5) and torch.allclose(p_a, p_b, rtol=1e-5)


def test_the_default_model_fits_with_the_closed_form(monkeypatch):
    from lapbo import LaplaceBNN

    calls = []
    closed = lengthscales.random_feature_evidence_gradients
    monkeypatch.setattr(lengthscales, "random_feature_evidence_gradients",
                        lambda *a, **k: calls.append(1) or closed(*a, **k))
    g = torch.Generator().manual_seed(4)
    X = torch.rand(10, 2, generator=g, dtype=DT)
    LaplaceBNN(X, torch.sin(6 * X[:, :1]), seed=0).fit()
    assert len(calls) > 10


@pytest.mark.parametrize("trend", [False, True])
@pytest.mark.parametrize(("reference", "hyperprior", "C"), [
    (None, 1.0, 1), ((1.0, 0.01), 0.01, 2), (None, None, 1)])
def test_the_closed_form_objective_equals_autograd_at_every_point(monkeypatch, trend,
                                                                  reference, hyperprior, C):
    """The objective the fit minimises (evidence plus the hyperpriors on ``ℓ``, ``δ`` and
    ``σ²``, clamped to the bounds) and its gradient, computed in closed form, equal
    autograd's through the same objective: inside the bounds, on them and beyond them."""
    net = networks.random_feature_network(3, C, 256, trend="quadratic" if trend else None)
    net = net.to(DT)
    g = torch.Generator().manual_seed(5)
    X = torch.rand(12, 3, generator=g, dtype=DT)
    Y = torch.cos(3 * X[:, :C]) + 0.1 * torch.randn(12, C, generator=g, dtype=DT)
    options = TrainingOptions(prior_precision_prior=hyperprior,
                              prior_precision_reference=reference, noise_prior=(-4.0, 1.0))
    prior = torch.tensor([1.0, 0.01] if reference else 1.0, dtype=DT)
    captured = []
    minimize = lengthscales._minimize

    def capture(objective, start, bounds, max_iter, gradient=None):
        captured.append((objective, gradient, bounds))
        return minimize(objective, start, bounds, max_iter, gradient)

    monkeypatch.setattr(lengthscales, "_minimize", capture)
    lengthscales.fit_random_feature_network(net, X, Y, None, torch.tensor(0.1, dtype=DT),
                                            prior, options, second_start=False)
    objective, gradient, (low, high) = captured[0]
    assert gradient is not None
    points = [low + (high - low) * torch.rand(len(low), generator=g, dtype=DT)
              for _ in range(3)]
    points += [torch.where(torch.arange(len(low)) % 2 == 0, low, high), low - 1, high + 0.5]
    for u in points:
        value, grad = gradient(u.clone())
        x = u.clone().requires_grad_(True)
        expected = objective(x)
        (expected_grad,) = torch.autograd.grad(expected, x)
        assert value == pytest.approx(float(expected.detach()), rel=1e-11, abs=1e-9)
        assert torch.allclose(grad, expected_grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(("kernel", "nu"), [("rbf", None), ("matern12", 0.5),
                                            ("matern32", 1.5), ("matern52", 2.5)])
def test_the_limit_kernel_is_gpytorchs_and_the_features_approximate_it(kernel, nu):
    import gpytorch

    g = torch.Generator().manual_seed(6)
    X1, X2 = torch.rand(9, 3, generator=g, dtype=DT), torch.rand(7, 3, generator=g, dtype=DT)
    ls = torch.tensor([0.3, 0.5, 0.9], dtype=DT)
    reference = (gpytorch.kernels.RBFKernel(ard_num_dims=3) if nu is None else
                 gpytorch.kernels.MaternKernel(nu=nu, ard_num_dims=3)).to(DT)
    reference.lengthscale = ls
    exact = feature_kernel(X1, X2, ls, kernel)
    assert exact.shape == (9, 7)
    assert torch.allclose(exact, reference(X1, X2).to_dense(), atol=1e-7)
    torch.manual_seed(0)
    layer = networks.ScaledRandomFeatures(3, 2**15, kernel=kernel).to(DT)
    gram = layer.features(X1, ls) @ layer.features(X2, ls).mT
    assert float((gram - exact).abs().max()) < (1e-3 if nu is None else 1e-2)
    with pytest.raises(ValueError, match="kernel 'cosine'"):
        feature_kernel(X1, X2, ls, "cosine")


@pytest.mark.parametrize(("trend", "n_prior"), [(False, 1), (True, 2)])
def test_the_limit_evidence_is_a_gaussian_log_density_with_its_gradient(trend, n_prior):
    layer, X, Y = problem(n=12, d=3, C=2, trend=trend, kernel="matern52")
    T = layer.trend_features(X) if trend else None
    prior = torch.tensor([0.7, 0.05][:n_prior], dtype=DT)
    noise = torch.linspace(0.01, 0.05, 12, dtype=DT)
    log_ls = torch.tensor([-0.3, 0.2, -1.0], dtype=DT)
    value = limit_feature_evidence(X, "matern52", T, Y, log_ls, prior, noise)
    K = feature_kernel(X, X, log_ls.exp(), "matern52") + (0 if T is None else T @ T.mT)
    cov = (K + 1) / prior[0] if n_prior == 1 else K / prior[0] + 1 / prior[1]
    normal = torch.distributions.MultivariateNormal(torch.zeros(12, dtype=DT),
                                                    cov + torch.diag(noise))
    assert float(value) == pytest.approx(float(normal.log_prob(Y.mT).sum()), rel=1e-12)
    # against the features' own evidence, which converges to it
    torch.manual_seed(1)
    many = networks.ScaledRandomFeatures(3, 2**15, kernel="matern52").to(DT)
    finite = random_feature_evidence(X, many.omega, T, Y, log_ls, prior, noise)
    assert float(finite) == pytest.approx(float(value), abs=0.05)

    def f(x):
        return limit_feature_evidence(X, "matern52", T, Y, x[:3], x[3:3 + n_prior].exp(),
                                      (2 * x[-1]).exp().expand(12))

    x0 = torch.tensor([-0.3, 0.2, -1.0, -0.4, 1.0][:3 + n_prior] + [-1.5], dtype=DT)
    assert torch.autograd.gradcheck(f, (x0.requires_grad_(True),), eps=1e-6, atol=1e-6)
