"""``InputPerturbation`` (robust BO): observed inputs are used as they are, every query
point becomes its ``n_w`` perturbed copies, as in BoTorch's models. A fitted model with
the transform must predict, condition and sample exactly as the same fit without it at
the explicitly perturbed points."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition import qSimpleRegret, qUpperConfidenceBound
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.acquisition.risk_measures import CVaR
from botorch.models.transforms.input import ChainedInputTransform, InputPerturbation, Normalize
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler

from lapbo import LaplaceBNN
from lapbo.sampling import PathwiseSamples, draw_pathwise_samples

DT = torch.float64
N_W = 3


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 2, generator=g, dtype=DT)
    Y = torch.sin(4 * X).sum(-1, keepdim=True)
    W = 0.05 * torch.randn(N_W, 2, generator=g, dtype=DT)
    return X, Y, W


@pytest.fixture(scope="module")
def pair() -> tuple[LaplaceBNN, LaplaceBNN, torch.Tensor]:
    """The same fit with and without the perturbation, and the perturbation set."""
    X, Y, W = _data()
    robust = LaplaceBNN(X, Y, input_transform=InputPerturbation(W), seed=0).fit()
    plain = LaplaceBNN(X, Y, seed=0).fit()
    return robust, plain, W


def _perturbed(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``(*b, q, d)`` → ``(*b, q·n_w, d)``: each point followed by its perturbed copies."""
    return (X.unsqueeze(-2) + W).reshape(*X.shape[:-2], -1, X.shape[-1])


def test_training_ignores_the_perturbation(pair):
    robust, plain, _ = pair
    torch.testing.assert_close(robust.log_marginal_likelihood(),
                               plain.log_marginal_likelihood(), rtol=0, atol=0)


@pytest.mark.parametrize("batch", [(), (5,)])
def test_posterior_is_the_joint_over_the_perturbed_points(pair, batch):
    robust, plain, W = pair
    Xq = torch.rand(*batch, 4, 2, generator=torch.Generator().manual_seed(1), dtype=DT)
    got, want = robust.posterior(Xq), plain.posterior(_perturbed(Xq, W))
    assert got.mean.shape == (*batch, 4 * N_W, 1)
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.distribution.covariance_matrix,
                               want.distribution.covariance_matrix, rtol=1e-12, atol=1e-14)
    noisy = robust.posterior(Xq, observation_noise=True).variance
    torch.testing.assert_close(noisy, plain.posterior(_perturbed(Xq, W),
                                                      observation_noise=True).variance)


def test_conditioning_and_fantasies_use_the_observed_points(pair):
    robust, plain, W = pair
    g = torch.Generator().manual_seed(2)
    X_new, Xq = torch.rand(2, 2, generator=g, dtype=DT), torch.rand(3, 2, generator=g, dtype=DT)
    Y_new = torch.tensor([[0.5], [1.5]], dtype=DT)
    got = robust.condition_on_observations(X_new, Y_new).posterior(Xq)
    want = plain.condition_on_observations(X_new, Y_new).posterior(_perturbed(Xq, W))
    torch.testing.assert_close(got.mean, want.mean)
    torch.testing.assert_close(got.variance, want.variance)
    sampler = SobolQMCNormalSampler(torch.Size([4]), seed=3)
    fantasy = robust.fantasize(X_new, sampler).posterior(Xq)  # fantasies at X_new itself
    assert fantasy.mean.shape == (4, 3 * N_W, 1)


def test_pathwise_samples_are_paths_at_the_perturbed_points(pair):
    robust, plain, W = pair
    paths = draw_pathwise_samples(robust, 6)
    Xq = torch.rand(4, 2, generator=torch.Generator().manual_seed(4), dtype=DT)
    same = PathwiseSamples(plain, paths.offsets)
    torch.testing.assert_close(paths(Xq), same(_perturbed(Xq, W)))


def test_risk_measure_acquisitions_optimise_with_gradients(pair):
    robust, _, _ = pair
    X, _, _ = _data()
    objective = CVaR(alpha=0.8, n_w=N_W)
    best = float(objective(robust.posterior(X).mean).max())
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DT)
    for acqf in (qLogExpectedImprovement(robust, best_f=best, objective=objective),
                 qSimpleRegret(robust, objective=objective),
                 qUpperConfidenceBound(robust, beta=2.0, objective=objective)):
        Xq = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(5), dtype=DT)
        Xq.requires_grad_(True)
        value = acqf(Xq)
        value.sum().backward()
        assert value.shape == (1,) and torch.isfinite(value).all()
        assert torch.isfinite(Xq.grad).all() and Xq.grad.abs().sum() > 0
        candidate, _ = optimize_acqf(acqf, bounds=bounds, q=2, num_restarts=2, raw_samples=16)
        assert candidate.shape == (2, 2)


def test_a_chain_normalizes_observed_points_without_perturbing_them():
    X, Y, W = _data()
    scaled = 10 * X
    bounds = torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=DT)
    chain = ChainedInputTransform(normalize=Normalize(d=2, bounds=bounds),
                                  perturb=InputPerturbation(W))
    robust = LaplaceBNN(scaled, Y, input_transform=chain, seed=0).fit()
    plain = LaplaceBNN(X, Y, seed=0).fit()
    Xq = torch.rand(3, 2, generator=torch.Generator().manual_seed(6), dtype=DT)
    torch.testing.assert_close(robust.posterior(10 * Xq).mean,
                               plain.posterior(_perturbed(Xq, W)).mean)
