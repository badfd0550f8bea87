"""``laplace.linear_gaussian_evidence`` / ``linear_gaussian_posterior_mean``: the exact
evidence and posterior mean of a model linear in its weights, in both the sample-space
(``M ≤ P``) and the weight-space (``M > P``) form, against dense Gaussian algebra."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from laplace import (
    FullLaplace,
    gram_evidence,
    gram_evidence_gradients,
    group_grams,
    linear_gaussian_evidence,
    linear_gaussian_posterior_mean,
)


def problem(M: int, P: int, C: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(M, P, generator=g, dtype=torch.float64)
    y = torch.randn(M, C, generator=g, dtype=torch.float64)
    v = 0.1 + torch.rand(M, generator=g, dtype=torch.float64)
    return R, y, v


def dense_prior_var(prior, groups, P):
    if groups is None:
        return torch.full((P,), 1 / float(prior), dtype=torch.float64)
    return torch.repeat_interleave(1 / prior, torch.tensor(groups))


@pytest.mark.parametrize(("M", "P"), [(6, 9), (12, 5)])  # sample space, weight space
@pytest.mark.parametrize("groups", [None, "two"])
def test_evidence_and_mean_equal_dense_gaussian_algebra(M: int, P: int, groups) -> None:
    R, y, v = problem(M, P, C=2)
    if groups is None:
        prior = torch.tensor(0.7, dtype=torch.float64)
    else:
        groups = [P - 2, 2]
        prior = torch.tensor([0.7, 3.0], dtype=torch.float64)
    pv = dense_prior_var(prior, groups, P)
    cov = R @ torch.diag(pv) @ R.T + torch.diag(v)
    expected = sum(MultivariateNormal(torch.zeros(M, dtype=torch.float64), cov).log_prob(y[:, c])
                   for c in range(2))
    value = linear_gaussian_evidence(R, y, prior, v, groups)
    assert float(value) == pytest.approx(float(expected), rel=1e-12)
    precision = R.T @ torch.diag(1 / v) @ R + torch.diag(1 / pv)
    mean = torch.linalg.solve(precision, R.T @ (y / v.unsqueeze(-1)))
    got = linear_gaussian_posterior_mean(R, y, prior, v, groups)
    assert torch.allclose(got, mean, atol=1e-12)
    single = linear_gaussian_posterior_mean(R, y[:, 0], prior, v, groups)
    assert single.shape == (P,) and torch.allclose(single, mean[:, 0], atol=1e-12)


@pytest.mark.parametrize(("M", "P"), [(7, 10), (12, 5)])  # sample-space / weight-space form
def test_gradients_in_rows_and_hyperparameters_match_finite_differences(M: int, P: int) -> None:
    R, y, v = problem(M, P)
    R.requires_grad_(True)
    log_prior = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    log_noise = (torch.linspace(-1.5, -0.5, M, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda r, a, b: linear_gaussian_evidence(r, y, a.exp(), b.exp()),
        (R, log_prior, log_noise))


def test_equals_the_laplace_evidence_of_a_linear_network_at_its_map() -> None:
    """For a linear network trained to its MAP the Laplace evidence is exact."""
    torch.manual_seed(0)
    X = torch.randn(15, 4, dtype=torch.float64)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]], dtype=torch.float64) + 0.1
    net = torch.nn.Linear(4, 1, dtype=torch.float64)
    rows = torch.cat([X, torch.ones(15, 1, dtype=torch.float64)], dim=-1)
    prior, sigma = torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    mean = linear_gaussian_posterior_mean(rows, y, prior, sigma**2)
    with torch.no_grad():
        net.weight.copy_(mean[:4].T)
        net.bias.copy_(mean[4])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=15)
    la = FullLaplace(net, "regression", sigma_noise=0.3, prior_precision=2.0)
    la.fit(loader)
    exact = linear_gaussian_evidence(rows, y, prior, sigma**2)
    assert float(la.log_marginal_likelihood()) == pytest.approx(float(exact), rel=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rows": torch.ones(3)}, "rows must be"),
     ({"targets": torch.ones(4)}, "targets must be"),
     ({"noise_var": torch.ones(2)}, "noise_var must be"),
     ({"prior_precision": torch.ones(2)}, "prior_precision must be 0-d"),
     ({"prior_precision": torch.ones(2), "groups": [1, 1]}, "groups"),
     ({"noise_var": torch.tensor(-1.0)}, "positive")],
)
def test_bad_input_names_the_argument(kwargs, message) -> None:
    args = {"rows": torch.ones(3, 4), "targets": torch.ones(3), "prior_precision":
            torch.tensor(1.0), "noise_var": torch.tensor(0.1)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        linear_gaussian_evidence(**args)


@pytest.mark.parametrize("groups", [None, [7, 2]])
def test_the_evidence_from_group_grams_equals_the_evidence_of_the_rows(groups) -> None:
    """``gram_evidence(group_grams(R))`` is ``linear_gaussian_evidence(R)``, with the
    same gradients in the prior precisions and the noise."""
    R, y, v = problem(6, 9, C=2)
    prior = torch.tensor(0.7 if groups is None else [0.7, 3.0], dtype=torch.float64)
    prior.requires_grad_(True)
    v.requires_grad_(True)
    grams = group_grams(R, groups)
    assert len(grams) == (1 if groups is None else 2) and grams[0].shape == (6, 6)
    value = gram_evidence(grams, y, prior, v)
    expected = linear_gaussian_evidence(R, y, prior if groups else prior.reshape(()), v, groups)
    assert float(value) == pytest.approx(float(expected), rel=1e-12)
    got = torch.autograd.grad(value, (prior, v))
    want = torch.autograd.grad(expected, (prior, v))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="2 prior precisions for 1 Gram"):
        gram_evidence(grams[:1], y, torch.ones(2, dtype=torch.float64), v)
    with pytest.raises(ValueError, match="prior_precision must be positive"):
        gram_evidence(grams, y, -torch.ones(len(grams), dtype=torch.float64), v)


@pytest.mark.parametrize("groups", [None, [7, 2]])
def test_the_closed_form_gradients_equal_autograd(groups) -> None:
    """``gram_evidence_gradients`` gives ``gram_evidence`` and its gradients in the prior
    precisions, the noise variances and each Gram matrix (``W / δ_g``)."""
    R, y, v = problem(6, 9, C=2)
    prior = torch.tensor(0.7 if groups is None else [0.7, 3.0], dtype=torch.float64)
    grams = group_grams(R, groups)
    value, d_prior, d_noise, W = gram_evidence_gradients(grams, y, prior, v)
    leaves = [prior.clone().requires_grad_(True), v.clone().requires_grad_(True),
              *[G.clone().requires_grad_(True) for G in grams]]
    expected = gram_evidence(leaves[2:], y, leaves[0], leaves[1])
    assert float(value) == pytest.approx(float(expected), rel=1e-12)
    got = [d_prior, d_noise, *[W / p for p in prior.reshape(-1)]]
    for a, b in zip(got, torch.autograd.grad(expected, leaves)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
