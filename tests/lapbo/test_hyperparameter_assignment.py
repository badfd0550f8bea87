"""``model.sigma_noise = σ`` and ``model.prior_precision = δ``: checked where they enter,
and the posterior, evidence and weights follow them (``LaplaceBNN.__setattr__``)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from lapbo import LaplaceBNN
from lapbo.networks import random_feature_layer


def data(n: int = 14, noise: float = 0.05) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    X = torch.rand(n, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X[:, :1]) * X[:, 1:] + noise * torch.randn(n, 1, generator=g,
                                                                 dtype=torch.float64)
    return X, Y


def random_feature_model(**kwargs: object) -> LaplaceBNN:
    X, Y = data()
    return LaplaceBNN(X, Y, net="random_features", random_features=64, trend=None,
                      outcome_transform=None, seed=0, **kwargs).fit()


def test_assigned_hyperparameters_give_the_exact_linear_gaussian_posterior() -> None:
    """A random-feature network is Bayesian linear regression on ``[ψ(x), 1]``: after the
    assignment its predictive and evidence are those of that model at the new ``(δ, σ)``
    (zero prior mean: the head starts at zero), computed here from the features."""
    model = random_feature_model()
    before = model.log_marginal_likelihood()
    sigma, delta = 0.3, 2.0
    model.sigma_noise = sigma
    model.prior_precision = torch.tensor(delta)
    X, Y = data()
    X_test = torch.rand(5, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    layer = random_feature_layer(model.net)

    def rows(x: Tensor) -> Tensor:
        with torch.no_grad():
            phi = layer.features(x, layer.lengthscale)
        return torch.cat([phi, torch.ones_like(phi[:, :1])], dim=-1)

    J, J_test, y = rows(X), rows(X_test), Y.squeeze(-1)
    precision = J.mT @ J / sigma**2 + delta * torch.eye(J.shape[-1], dtype=J.dtype)
    cov = torch.linalg.inv(precision)
    mean = cov @ J.mT @ y / sigma**2
    post = model.posterior(X_test)
    assert torch.allclose(post.mean.squeeze(-1), J_test @ mean, atol=1e-9)
    assert torch.allclose(post.variance.squeeze(-1),
                          (J_test @ cov * J_test).sum(-1), rtol=1e-7, atol=1e-12)
    marginal = J @ J.mT / delta + sigma**2 * torch.eye(len(y), dtype=J.dtype)
    exact = torch.distributions.MultivariateNormal(torch.zeros_like(y), marginal).log_prob(y)
    evidence = float(model.log_marginal_likelihood())
    assert evidence == pytest.approx(float(exact), abs=1e-6)  # jittered factorisations
    assert evidence == pytest.approx(float(model.la.log_marginal_likelihood()), abs=1e-8)
    assert abs(float(before) - float(exact)) > 1.0  # the fitted (δ, σ) were elsewhere
    assert float(model.sigma_noise) == sigma and float(model.prior_precision) == delta


def test_assignment_before_fit_sets_the_starting_values() -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, net="random_features", random_features=64, trend=None,
                       tune_noise=False, seed=0)
    model.sigma_noise = 0.2
    assert float(model.sigma_noise) == pytest.approx(0.2)
    model.fit()  # σ is not refit (tune_noise=False): the assigned start stays
    assert float(model.sigma_noise) == pytest.approx(0.2)


def test_assigned_prior_precision_reaches_the_laplace_object_of_an_mlp() -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, width=8, depth=1, activation="gauss", n_epochs=30, seed=0,
                       candidates=None).fit()
    model.prior_precision = 3.0
    assert float(model.la.prior_precision) == pytest.approx(3.0)
    assert float(model.log_marginal_likelihood()) == pytest.approx(
        float(model.la.log_marginal_likelihood()), abs=1e-8)


@pytest.mark.parametrize(("name", "value", "match"), [
    ("sigma_noise", -0.1, "positive"),
    ("sigma_noise", 0.0, "positive"),
    ("sigma_noise", math.nan, "finite"),
    ("sigma_noise", "0.1", "number"),
    ("sigma_noise", True, "number"),
    ("sigma_noise", torch.ones(3), "shape"),
    ("sigma_noise", 100.0, "bounds"),
    ("prior_precision", -1.0, "positive"),
    ("prior_precision", math.inf, "finite"),
    ("prior_precision", 1e9, "bounds"),
    ("prior_precision", torch.tensor(1 + 1j), "real"),
])
def test_bad_assignment_names_the_hyperparameter(name: str, value: object, match: str) -> None:
    model = random_feature_model()
    before = model.posterior(data()[0][:3]).variance
    with pytest.raises(ValueError, match=match) as error:
        setattr(model, name, value)
    assert name in str(error.value)
    assert torch.equal(model.posterior(data()[0][:3]).variance, before)  # unchanged


def test_sigma_noise_of_a_model_with_known_noise_is_refused() -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, torch.full_like(Y, 0.01), net="random_features",
                       random_features=64, trend=None, seed=0).fit()
    with pytest.raises(ValueError, match="train_Yvar"):
        model.sigma_noise = 0.1
    model.prior_precision = 2.0  # δ still applies
    assert float(model.prior_precision) == 2.0


def test_training_options_are_frozen() -> None:
    model = random_feature_model()
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.options.n_epochs = -3
    assert dataclasses.replace(model.options, n_epochs=5).n_epochs == 5
