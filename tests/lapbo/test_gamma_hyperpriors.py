"""Gamma hyperpriors of a random-feature network (``lengthscale_prior``,
``outputscale_prior``, ``noise_prior=("gamma", α, β)``): the fit maximises the evidence
plus the log densities that GPyTorch's ``GammaPrior`` gives, their closed-form gradient is
autograd's, and the options are validated where they enter."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.exceptions.errors import UnsupportedError
from gpytorch.priors import GammaPrior
from torch import Tensor

from lapbo import LaplaceBNN
from lapbo.lengthscales import LENGTHSCALE_BOUNDS, _GammaHyperpriors
from lapbo.networks import lengthscale_start, random_feature_layer
from laplace import linear_gaussian_evidence, log_normal_density

GAMMA = {"net": "random_features", "random_features": 256, "seed": 0,
         "random_feature_kernel": "matern52", "trend": None, "candidates": None,
         "lengthscale_prior": ("gamma", 3.0, 6.0), "outputscale_prior": ("gamma", 2.0, 0.15),
         "noise_prior": ("gamma", 1.1, 0.05), "prior_structure": "layerwise",
         "prior_precision_reference": (1.0, 0.01), "prior_precision_prior": 0.01}


def data(n: int = 25, d: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    X = torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    noise = 0.1 * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed + 1),
                              dtype=torch.float64)
    return X, torch.sin(6 * X[:, :1]) + 0.5 * X[:, 1:2] + noise


def test_the_fit_is_a_local_maximum_of_evidence_plus_gpytorch_gamma_log_densities() -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, **GAMMA).fit()
    layer = random_feature_layer(model.net)
    y, d = model._training_data()[1], X.shape[-1]
    priors = (GammaPrior(3.0, 6.0), GammaPrior(2.0, 0.15), GammaPrior(1.1, 0.05))

    def objective(u: Tensor) -> float:
        ls, prior, sigma2 = u[:d].exp(), u[d:d + 2].exp(), (2 * u[d + 2]).exp()
        feats = layer.features(X, ls)
        phi = torch.cat([feats, torch.ones_like(feats[:, :1])], dim=-1)
        value = linear_gaussian_evidence(phi, y, prior, sigma2, groups=[phi.shape[-1] - 1, 1])
        value = value + priors[0].log_prob(ls).sum() + priors[1].log_prob(1 / prior[0])
        value = value + priors[2].log_prob(sigma2)
        return float(value + log_normal_density(prior[1:], math.log(0.01), 0.01))

    u = torch.cat([layer.lengthscale.log(), model.prior_precision.log(),
                   model.sigma_noise.log().reshape(1)])
    best = objective(u)
    for i in range(d + 3):
        for h in (-1e-3, 1e-3):
            v = u.clone()
            v[i] += h
            low, high = (LENGTHSCALE_BOUNDS if i < d else (1e-6, 1e6) if i < d + 2
                         else (1e-3, 10.0))
            if not low <= float(v[i].exp()) <= high:
                continue
            assert objective(v) <= best + 1e-7
    # the evidence stays the one the Laplace object computes
    assert float(model.log_marginal_likelihood()) == pytest.approx(
        float(model.la.log_marginal_likelihood()), rel=1e-8)


def test_the_closed_form_gradient_is_autograds_and_the_density_gpytorchs() -> None:
    like = torch.zeros((), dtype=torch.float64)
    hp = _GammaHyperpriors(3, 2, (3.0, 6.0), (2.0, 0.15), (1.1, 0.05), like)
    u = torch.tensor([-1.2, 0.3, -0.4, 0.7, 2.0, -1.5], dtype=torch.float64,
                     requires_grad=True)
    value, grad = hp(u)
    (auto,) = torch.autograd.grad(value, u)
    assert torch.allclose(grad, auto, atol=1e-12)
    v = u.detach().clone()
    v[[0, 3, 5]] += torch.tensor([0.2, -0.3, 0.4], dtype=torch.float64)
    # differences of log densities are GammaPrior's (its normalising constant cancels)
    def gpytorch_value(w: Tensor) -> Tensor:
        return (GammaPrior(3.0, 6.0).log_prob(w[:3].exp()).sum()
                + GammaPrior(2.0, 0.15).log_prob((-w[3]).exp())
                + GammaPrior(1.1, 0.05).log_prob((2 * w[5]).exp()))
    ours = float(hp(v)[0] - hp(u.detach())[0])
    # (GammaPrior evaluates in single precision)
    assert ours == pytest.approx(float(gpytorch_value(v) - gpytorch_value(u.detach())), rel=1e-6)
    # the second δ (the constant's) has no Gamma term
    assert grad[4] == 0


def test_the_network_starts_at_the_gamma_mode() -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, **GAMMA)
    start = random_feature_layer(model.net).lengthscale
    assert torch.allclose(start, torch.full_like(start, 2.0 / 6.0))
    assert lengthscale_start(3, ("gamma", 0.5, 2.0)) == 0.25  # the mean when α ≤ 1
    assert lengthscale_start(3, ("lognormal", 0.0, 1.0)) == pytest.approx(math.exp(-1.0))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lengthscale_prior": ("gamma", 0.0, 6.0)}, "lengthscale_prior concentration"),
    ({"lengthscale_prior": ("gamma", 3.0, -1.0)}, "lengthscale_prior rate"),
    ({"lengthscale_prior": ("beta", 3.0, 6.0)}, "lengthscale_prior must be"),
    ({"lengthscale_prior": (3.0, 6.0)}, "lengthscale_prior must be"),
    ({"lengthscale_prior": ("lognormal", float("nan"), 1.0)}, "lengthscale_prior loc"),
    ({"outputscale_prior": ("lognormal", 0.0, 1.0)}, "outputscale_prior must be"),
    ({"outputscale_prior": "gamma"}, "outputscale_prior must be"),
    ({"noise_prior": ("gamma", 1.1, float("inf"))}, "noise_prior rate"),
    ({"noise_prior": ("gamma", 1.1)}, "noise_prior"),
])
def test_bad_hyperpriors_are_named(kwargs, message) -> None:
    X, Y = data()
    with pytest.raises(ValueError, match=message):
        LaplaceBNN(X, Y, **{**GAMMA, **kwargs})


@pytest.mark.parametrize("kwargs", [{"noise_prior": ("gamma", 1.1, 0.05)},
                                    {"lengthscale_prior": ("gamma", 3.0, 6.0)}])
def test_an_mlp_refuses_the_random_feature_hyperpriors(kwargs) -> None:
    X, Y = data(n=10)
    model = LaplaceBNN(X, Y, width=8, n_epochs=5, candidates=None, **kwargs)
    with pytest.raises(UnsupportedError, match=next(iter(kwargs))):
        model.fit()
