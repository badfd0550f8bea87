"""The default network's building blocks: the quadratic trend, random Fourier features
and the output layer that sees them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lapbo import LaplaceBNN, networks

SMALL = {"width": 16, "n_epochs": 100, "marglik_every": 50, "marglik_steps": 10,
         "final_marglik_steps": 30, "n_epochs_warm_start": 30}


def test_quadratic_trend() -> None:
    body = networks.default_network(3, 2, width=4)
    net = networks.AugmentedMLP(body, 3, [networks.QuadraticFeatures()]).double()
    X = torch.rand(7, 3, dtype=torch.float64)
    assert torch.allclose(net(X), body(X), atol=1e-14)  # the MLP at initialisation
    with torch.no_grad():
        net.head.weight[0, 4] = 1.0  # b₀₀
        net.head.weight[1, 4 + 3 + 1] = 2.0  # a₁₁
    z = 2 * X - 1
    expected = body(X) + torch.stack([z[:, 0], 2 * z[:, 1].square()], dim=-1)
    assert torch.allclose(net(X), expected, atol=1e-12)
    # a concave quadratic is learned and moves the predicted maximiser inside the box
    g = torch.Generator().manual_seed(1)
    Xtr = torch.rand(20, 2, generator=g, dtype=torch.float64)
    Ytr = -((Xtr - 0.4).square().sum(-1, keepdim=True))
    model = LaplaceBNN(Xtr, Ytr, trend="quadratic", random_features=0, seed=0, candidates=None,
                       **SMALL).fit()
    assert bool((model.net.head.weight[0, -2:] < 0).all())  # the zᵢ² coefficients
    grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 21, dtype=torch.float64)] * 2,
                                      indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        best = grid[model.posterior(grid.unsqueeze(-2)).mean.reshape(-1).argmax()]
    assert torch.allclose(best, torch.tensor([0.4, 0.4], dtype=torch.float64), atol=0.1)
    with pytest.raises(ValueError, match="trend"):
        networks.default_network(2, 1, trend="cubic")




def test_random_features_approximate_the_squared_exponential_kernel() -> None:
    torch.manual_seed(0)
    rff = networks.RandomFourierFeatures(3, 40_000, lengthscale=0.3, variance=2.0).double()
    X = torch.rand(6, 3, dtype=torch.float64)
    K = rff(X) @ rff(X).mT
    exact = 2.0 * torch.exp(-torch.cdist(X, X).square() / (2 * 0.3**2))
    assert torch.allclose(K, exact, atol=0.05)
    assert rff.out_features(3) == 40_000
    # a range of length scales: the kernel is the mean of the squared exponentials
    mix = networks.RandomFourierFeatures(3, 40_000, lengthscale=(0.2, 1.0), variance=1.0)
    mix = mix.double()
    scales = torch.logspace(math.log10(0.2), 0.0, 40_000, dtype=torch.float64)
    d2 = torch.cdist(X, X).square().unsqueeze(-1)
    exact_mix = torch.exp(-d2 / (2 * scales.square())).mean(-1)
    assert torch.allclose(mix(X) @ mix(X).mT, exact_mix, atol=0.05)
    assert not torch.allclose(exact_mix, torch.exp(-d2[..., 0] / (2 * 0.3**2)), atol=0.05)
    with pytest.raises(ValueError, match="> 0"):
        networks.RandomFourierFeatures(3, 10, lengthscale=0.0, variance=1.0)


def test_random_features_travel_with_state_and_warm_starts() -> None:
    g = torch.Generator().manual_seed(2)
    X = torch.rand(10, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(6 * X[:, :1])
    model = LaplaceBNN(X, Y, seed=0, random_features=12, candidates=None, **SMALL).fit()
    net = model.net
    assert isinstance(net, networks.AugmentedMLP)
    assert net.head.in_features == 16 + 4 + 12
    omega = net.bases[1].omega
    assert omega.shape == (2, 12) and not omega.requires_grad
    assert "net.bases.1.omega" in model.state_dict()
    # the prior mean covers trainable weights only; coefficients start at zero
    n_trainable = sum(p.numel() for p in net.parameters())
    assert model.prior_mean.numel() == n_trainable
    warm = LaplaceBNN(X, Y, warm_start=model, random_features=12, candidates=None, **SMALL)
    assert torch.equal(warm.net.bases[1].omega, omega)
    other = LaplaceBNN(X, Y, seed=1, random_features=12, **SMALL)
    assert not torch.equal(other.net.bases[1].omega, omega)
    fresh = LaplaceBNN(X, Y, seed=5, random_features=12, **SMALL)
    fresh.load_state_dict(model.state_dict())
    Xt = torch.rand(4, 1, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(fresh.posterior(Xt).mean, model.posterior(Xt).mean, atol=1e-12)
    assert math.isfinite(float(model.posterior(Xt).variance.sum()))


def test_trend_scale_multiplies_the_features_and_travels_in_the_state_dict() -> None:
    x = torch.rand(5, 3, dtype=torch.float64)
    plain, scaled = networks.QuadraticFeatures(), networks.QuadraticFeatures(5.0)
    assert torch.allclose(scaled(x), 5.0 * plain(x))
    net = networks.default_network(3, 1, trend="quadratic", trend_scale=2.5)
    other = networks.default_network(3, 1, trend="quadratic")
    other.load_state_dict(net.state_dict())
    assert torch.allclose(other(x), net(x))
    with pytest.raises(ValueError, match="trend_scale must be a positive"):
        networks.QuadraticFeatures(0.0)


@pytest.mark.parametrize("d", [1, 4, 16])
def test_reference_dim_scales_length_scales_by_root_dimension(d: int) -> None:
    torch.manual_seed(0)
    plain = networks.default_network(d, 1, init_scale=1.2, random_features=2000,
                                     random_feature_lengthscale=0.5)
    torch.manual_seed(0)
    scaled = networks.default_network(d, 1, init_scale=1.2, random_features=2000,
                                      random_feature_lengthscale=0.5, reference_dim=4)
    factor = (d / 4) ** 0.5
    first = scaled.features[0]
    assert torch.allclose(first.weight, plain.features[0].weight / factor)
    # the random-feature frequencies are N(0, 1/ℓ²): ℓ grew by √(d/4)
    omega = scaled.bases[0].omega
    assert float(omega.std()) == pytest.approx(1 / (0.5 * factor), rel=0.05)
    with pytest.raises(ValueError, match="reference_dim"):
        networks.default_network(d, 1, reference_dim=0)


def test_rows_independent_for_the_default_network_only() -> None:
    assert networks.rows_independent(networks.default_network(3, 1, random_features=10,
                                                              trend="quadratic"))
    assert networks.rows_independent(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)))
    assert not networks.rows_independent(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4),
                                                       nn.Linear(4, 1)))
    with pytest.raises(ValueError, match="nn.Module"):
        networks.rows_independent(lambda x: x)


def test_scaled_random_features_approximate_the_ard_squared_exponential_kernel() -> None:
    from lapbo.networks import ScaledRandomFeatures, random_feature_layer, random_feature_network

    torch.manual_seed(0)
    layer = ScaledRandomFeatures(2, 1024).double()
    x = 3 * torch.rand(100, 2, dtype=torch.float64)
    ls = torch.tensor([0.5, 2.0], dtype=torch.float64)
    phi = layer.features(x, ls)
    assert phi.shape == (100, 1024)
    exact = torch.exp(-0.5 * torch.cdist(x / ls, x / ls).square())
    # quasi-random frequencies: ~0.01 here, where i.i.d. random phases give ~0.07
    assert float((phi @ phi.T - exact).abs().max()) < 0.02
    net = random_feature_network(2, 1, n_features=64)
    assert random_feature_layer(net) is net[0]
    assert [n for n, _ in net.named_parameters()] == ["1.weight", "1.bias"]  # ℓ is no weight
    assert set(net.state_dict()) >= {"0.omega", "0.lengthscale"}
    with pytest.raises(ValueError, match="even n_features"):
        ScaledRandomFeatures(2, 7)


@pytest.mark.parametrize("kernel, nu", [("matern12", 0.5), ("matern32", 1.5), ("matern52", 2.5)])
def test_scaled_random_features_approximate_the_ard_matern_kernels(kernel: str, nu: float
                                                                   ) -> None:
    """The Student-t frequencies give GPyTorch's ``MaternKernel`` of smoothness ν (the same
    distance convention), and are far from the squared-exponential kernel."""
    from gpytorch.kernels import MaternKernel

    from lapbo.networks import ScaledRandomFeatures

    torch.manual_seed(0)
    layer = ScaledRandomFeatures(2, 4096, kernel=kernel).double()
    x = torch.rand(60, 2, dtype=torch.float64)
    ls = torch.tensor([0.3, 0.6], dtype=torch.float64)
    gram = layer.features(x, ls) @ layer.features(x, ls).T
    matern = MaternKernel(nu=nu, ard_num_dims=2).double()
    matern.lengthscale = ls
    exact = matern(x).to_dense().detach()
    squared_exponential = torch.exp(-0.5 * torch.cdist(x / ls, x / ls).square())
    assert float((gram - exact).abs().max()) < 0.03
    assert float((gram - squared_exponential).abs().max()) > 0.05
    with pytest.raises(ValueError, match="kernel 'cubic'"):
        ScaledRandomFeatures(2, 8, kernel="cubic")


def test_random_feature_network_with_a_quadratic_trend() -> None:
    """``trend="quadratic"`` appends ``[z, z²]/√d`` (``z = 2x − 1``) to the features; the
    output layer has ``2d`` more inputs and the trend is recorded in the state dict."""
    from lapbo.networks import random_feature_network

    torch.manual_seed(0)
    net = random_feature_network(3, 1, n_features=16, trend="quadratic")
    assert net[1].in_features == 16 + 6 and net[0].has_trend
    x = torch.rand(5, 3, dtype=torch.float64)
    z = 2 * x - 1
    torch.testing.assert_close(net[0](x)[:, 16:], torch.cat([z, z * z], -1) / 3**0.5)
    assert "0.trend_scale" in net.state_dict()
    plain = random_feature_network(3, 1, n_features=16)
    assert not plain[0].has_trend and "0.trend_scale" not in plain.state_dict()
    with pytest.raises(ValueError, match="trend 'cubic'"):
        random_feature_network(3, 1, trend="cubic")


@pytest.mark.parametrize("kernel", ["matern12", "matern32", "matern52"])
def test_matern_frequencies_are_the_student_t_draws_of_scipy_stats(kernel) -> None:
    """The radial χ²(2ν) quantiles of the Matérn frequencies (computed without importing
    ``scipy.stats``) equal ``scipy.stats.chi2.ppf`` bit for bit."""
    from scipy.stats import chi2

    from lapbo.networks import MATERN_NU, spectral_frequencies

    nu, d = MATERN_NU[kernel], 3
    torch.manual_seed(4)
    omega = spectral_frequencies(d, 256, kernel)
    torch.manual_seed(4)
    seed = int(torch.randint(2**31 - 1, ()))
    sobol = torch.quasirandom.SobolEngine(d + 1, scramble=True, seed=seed)
    u = sobol.draw(256, dtype=torch.float64).clamp(1e-10, 1 - 1e-10)
    normal = torch.distributions.Normal(0.0, 1.0).icdf(u[:, :d])
    radial = torch.from_numpy(chi2.ppf(u[:, d].numpy(), 2 * nu))
    expected = (normal * (2 * nu / radial).sqrt().unsqueeze(-1)).mT
    assert torch.equal(omega, expected)


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_extending_continues_the_sobol_sequence_and_truncating_undoes_it(kernel) -> None:
    torch.manual_seed(3)
    net = networks.random_feature_network(2, 2, 16, kernel=kernel, trend="quadratic")
    with torch.no_grad():
        net[1].weight.normal_()
    before = [t.clone() for t in (net[0].omega, net[1].weight, net[1].bias)]
    columns = networks.extend_random_features(net, 64)
    assert net[0].omega.shape == (2, 32) and net[1].weight.shape == (2, 64 + 4)
    assert torch.equal(net[0].omega[:, :8], before[0])
    assert torch.equal(columns, torch.tensor([*range(8), *range(32, 40), *range(64, 68)]))
    assert torch.equal(net[1].weight[:, columns], before[1])
    assert float(net[1].weight.abs().sum()) == float(before[1].abs().sum())  # zeros elsewhere
    torch.manual_seed(3)
    direct = networks.random_feature_network(2, 2, 64, kernel=kernel, trend="quadratic")
    assert torch.equal(net[0].omega, direct[0].omega)
    assert networks.extend_random_features(net, 64) is None  # as many already
    # a vector over the head (a warm start's prior mean) follows the resize
    theta = torch.cat([before[1].reshape(-1), before[2]])
    grown = networks.resized_head_vector(theta, 2, columns, net[1].in_features)
    assert torch.equal(grown, torch.cat([net[1].weight.reshape(-1), net[1].bias]))
    kept = networks.truncate_random_features(net, 16)
    for now, then in zip((net[0].omega, net[1].weight, net[1].bias), before):
        assert torch.equal(now, then)
    assert torch.equal(networks.resized_head_vector(grown, 2, kept), theta)


def test_a_loaded_frequency_set_is_not_extended_and_bad_counts_are_named() -> None:
    torch.manual_seed(0)
    net = networks.random_feature_network(2, 1, 16)
    other = networks.random_feature_network(2, 1, 16)  # another Sobol seed
    net.load_state_dict(other.state_dict())
    assert networks.extend_random_features(net, 64) is None
    assert net[0].omega.shape == (2, 8)
    for bad in (0, 7, -2):
        with pytest.raises(ValueError, match=f"n_features must be even and positive, not {bad}"):
            networks.extend_random_features(net, bad)
    with pytest.raises(ValueError, match="needs a random_feature_network"):
        networks.extend_random_features(torch.nn.Sequential(torch.nn.Linear(2, 1)), 64)


def test_the_kernel_is_state_and_a_state_saved_without_it_still_loads() -> None:
    """The limit kernel of ``lapbo.lengthscales`` must be the one ``Ω`` samples: a loaded
    state brings its kernel, also when ``LaplaceBNN`` rebuilds the network for it."""
    torch.manual_seed(0)
    matern = networks.random_feature_network(3, 1, 16, kernel="matern52")
    rbf = networks.random_feature_network(3, 1, 16)
    rbf.load_state_dict(matern.state_dict())
    assert rbf[0].kernel == "matern52"
    old = {k: v for k, v in matern.state_dict().items() if k != "0.kernel_index"}
    fresh = networks.random_feature_network(3, 1, 16)
    fresh.load_state_dict(old)  # saved before the kernel was state: the constructor's
    assert fresh[0].kernel == "rbf" and torch.equal(fresh[0].omega, matern[0].omega)
    X = torch.rand(20, 3, dtype=torch.float64)
    Y = torch.sin(4 * X[:, :1])
    saved = LaplaceBNN(X, Y, net="random_features", random_features=64, seed=0,
                       random_feature_kernel="matern32", candidates=None).fit()
    loading = LaplaceBNN(X, Y, net="random_features", random_features=256, seed=1,
                         candidates=None)
    loading.load_state_dict(saved.state_dict())  # another feature count: rebuilt
    layer = networks.random_feature_layer(loading.net)
    assert layer.kernel == "matern32" and layer.omega.shape == (3, 32)
