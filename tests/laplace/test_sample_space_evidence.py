"""``SampleSpaceEvidence`` against ``FullLaplace`` and explicit dense Gaussian algebra.

A small MLP gives Jacobian rows ``R`` ``(M, P)`` with ``M < P``; the reference values are
``FullLaplace.log_marginal_likelihood`` (scalar and per-tensor priors) and the dense
formulas of the module docstring (known noise, linearized evidence), in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset

from laplace import (
    FullLaplace,
    SampleSpaceEvidence,
    WoodburyPrecision,
    maximize_marginal_likelihood,
)

DT = torch.float64


def problem():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).to(DT)
    X = torch.rand(9, 2, generator=g, dtype=DT)
    y = torch.sin(3 * X[:, :1]) + 0.1 * torch.randn(9, 1, generator=g, dtype=DT)
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = vmap(jacrev(lambda p, x: functional_call(net, p, (x[None],)).reshape(-1)),
               in_dims=(None, 0))(params, X)
    R = torch.cat([jac[k].flatten(2) for k in params], 2).reshape(9, -1)
    theta0 = 0.1 * torch.randn(R.shape[1], generator=g, dtype=DT)
    theta = torch.cat([v.reshape(-1) for v in params.values()])
    with torch.no_grad():
        f = net(X)
    return net, X, y, R, (f - y).reshape(-1), theta - theta0, theta0


def full_laplace(net, X, y, theta0, prior, sigma):
    la = FullLaplace(net, "regression", sigma_noise=sigma, prior_precision=prior,
                     prior_mean=theta0)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=9))
    return float(la.log_marginal_likelihood())


@pytest.mark.parametrize("prior", [[0.7], [0.3, 2.0, 1.1, 0.5]])
def test_equals_full_laplace(prior):
    net, X, y, R, r, offset, theta0 = problem()
    layerwise = len(prior) > 1
    groups = [p.numel() for p in net.parameters()] if layerwise else None
    ev = SampleSpaceEvidence(R, r, offset, groups=groups)
    p = torch.tensor(prior, dtype=DT)
    ours = float(ev(p if layerwise else p.reshape(()), torch.tensor(0.2, dtype=DT)))
    assert ours == pytest.approx(full_laplace(net, X, y, theta0, p, 0.2), rel=1e-10)
    assert ev.reference_precision == pytest.approx(float(R.square().sum(1).mean()), rel=1e-14)


def dense_laplace_evidence(R, r, offset, D, v):
    """Laplace evidence with per-row noise ``v`` and per-weight prior ``D`` (dense)."""
    A = R.T @ (R / v[:, None]) + torch.diag(D)
    M = len(r)
    loglik = -0.5 * (r.square() / v).sum() - 0.5 * v.log().sum() - 0.5 * M * math.log(2 * math.pi)
    ratio = torch.logdet(A) - D.log().sum()
    return float(loglik - 0.5 * (ratio + (D * offset.square()).sum()))


def dense_linearized_evidence(R, r, offset, D, v):
    """``log N(e; 0, R D⁻¹ Rᵀ + diag v)`` with ``e = −r + R·offset``."""
    e = -r + R @ offset
    cov = R @ (R / D).T + torch.diag(v)
    return float(torch.distributions.MultivariateNormal(torch.zeros_like(e), cov).log_prob(e))


@pytest.mark.parametrize("linearized", [False, True])
@pytest.mark.parametrize("layerwise", [False, True])
def test_known_noise_and_linearized_against_dense(linearized, layerwise):
    net, X, y, R, r, offset, _ = problem()
    sizes = [p.numel() for p in net.parameters()]
    v = torch.linspace(0.01, 0.09, 9, dtype=DT)
    prior = torch.tensor([0.3, 2.0, 1.1, 0.5] if layerwise else [0.8], dtype=DT)
    D = torch.repeat_interleave(prior, torch.tensor(sizes)) if layerwise else prior.expand(
        R.shape[1])
    ev = SampleSpaceEvidence(R, r, offset, noise_var=v, groups=sizes if layerwise else None,
                             linearized=linearized)
    dense = dense_linearized_evidence if linearized else dense_laplace_evidence
    sigma = torch.tensor(123.0, dtype=DT)  # ignored with known noise
    arg = prior if layerwise else prior.reshape(())
    assert float(ev(arg, sigma)) == pytest.approx(dense(R, r, offset, D, v), rel=1e-10)
    # scalar σ: the same as known noise σ² on every row
    ev_s = SampleSpaceEvidence(R, r, offset, groups=sizes if layerwise else None,
                               linearized=linearized)
    ref = dense(R, r, offset, D, torch.full((9,), 0.04, dtype=DT))
    assert float(ev_s(arg, torch.tensor(0.2, dtype=DT))) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("linearized", [False, True])
def test_gradients_match_finite_differences(linearized):
    net, X, y, R, r, offset, _ = problem()
    ev = SampleSpaceEvidence(R, r, offset, linearized=linearized)
    lp = torch.tensor(math.log(0.7), dtype=DT, requires_grad=True)
    ls = torch.tensor(math.log(0.2), dtype=DT, requires_grad=True)
    grads = torch.autograd.grad(ev(lp.exp(), ls.exp()), [lp, ls])
    h = 1e-6
    for i, g in enumerate(grads):
        up = [lp.detach(), ls.detach()]
        down = [lp.detach(), ls.detach()]
        up[i], down[i] = up[i] + h, down[i] - h
        fd = (float(ev(up[0].exp(), up[1].exp())) - float(ev(down[0].exp(), down[1].exp()))) / (
            2 * h)
        assert float(g) == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_capacitance_inv_square_form_is_the_gp_quadratic():
    _, _, _, R, r, _, _ = problem()
    D = torch.linspace(0.5, 2.0, R.shape[1], dtype=DT)
    precision = WoodburyPrecision(R, 1 / 0.04, D)
    C = torch.eye(9, dtype=DT) + R @ (R / D).T / 0.04
    assert float(precision.capacitance_inv_square_form(r)) == pytest.approx(
        float(r @ torch.linalg.solve(C, r)), rel=1e-12)
    with pytest.raises(ValueError, match=r"e of shape \(8,\) must end in 9"):
        precision.capacitance_inv_square_form(r[:8])


def test_arguments_are_validated():
    _, _, _, R, r, offset, _ = problem()
    cases = [
        (dict(rows=R[0]), r"rows must be a floating-point tensor of shape \(M, P\)"),
        (dict(residuals=r[:3]), r"residuals must be a tensor of shape \(9,\)"),
        (dict(offset=offset[:3]), r"offset must be a tensor of shape \(\d+,\)"),
        (dict(noise_var=-torch.ones(9, dtype=DT)), r"noise_var must be positive and finite"),
        (dict(noise_var=torch.ones(3, dtype=DT)), r"noise_var must be None or a tensor"),
        (dict(groups=[1, 2]), r"groups must be positive ints summing to the"),
    ]
    for kwargs, message in cases:
        args = {"rows": R, "residuals": r, "offset": offset, **kwargs}
        with pytest.raises(ValueError, match=message):
            SampleSpaceEvidence(**args)


def test_lbfgs_tolerances_are_arguments():
    def lml(prior, sigma):
        return -(prior.log() - 1.0).square().sum()

    start = torch.tensor([5.0], dtype=DT)
    loose, _ = maximize_marginal_likelihood(lml, start, method="lbfgs", n_steps=50,
                                            tolerance_grad=1e-9, tolerance_change=1e-12)
    assert float(loose) == pytest.approx(math.e, rel=1e-8)
    with pytest.raises(ValueError, match="tolerance_grad"):
        maximize_marginal_likelihood(lml, start, method="lbfgs", tolerance_grad=0.0)
    with pytest.raises(ValueError, match="tolerance_change"):
        maximize_marginal_likelihood(lml, start, method="lbfgs", tolerance_change=-1.0)


@pytest.mark.parametrize("linearized", [False, True])
def test_more_rows_than_weights_takes_the_weight_space_spectrum(linearized):
    """``M > P``: ``GramSpectrum`` decomposes ``RᵀR`` ``(P × P)``; the evidence and its
    gradients equal the dense formulas (as with ``M ≤ P``)."""
    g = torch.Generator().manual_seed(3)
    M, P = 40, 7
    R = torch.randn(M, P, generator=g, dtype=DT)
    r = torch.randn(M, generator=g, dtype=DT)
    offset = torch.randn(P, generator=g, dtype=DT)
    ev = SampleSpaceEvidence(R, r, offset, linearized=linearized)
    assert ev.spectrum.eigenvalues.shape == (P,) and ev.spectrum.eigenvectors is None
    log_prior = torch.tensor(0.4, dtype=DT, requires_grad=True)
    log_sigma = torch.tensor(-0.5, dtype=DT, requires_grad=True)
    ours = ev(log_prior.exp(), log_sigma.exp())
    grads = torch.autograd.grad(ours, (log_prior, log_sigma))

    def dense(lp, ls):
        prior, s2 = lp.exp(), (2 * ls).exp()
        if linearized:  # log N(e; 0, R Rᵀ/δ + σ² I), e = −r + RΔ
            cov = R @ R.T / prior + s2 * torch.eye(M, dtype=DT)
            return torch.distributions.MultivariateNormal(
                torch.zeros(M, dtype=DT), cov).log_prob(-r + R @ offset)
        precision = R.T @ R / s2 + prior * torch.eye(P, dtype=DT)
        return (-0.5 * r.square().sum() / s2 - M * ls - 0.5 * M * math.log(2 * math.pi)
                - 0.5 * (torch.logdet(precision) - P * lp) - 0.5 * prior * offset.square().sum())

    lp, ls = log_prior.detach().requires_grad_(), log_sigma.detach().requires_grad_()
    ref = dense(lp, ls)
    ref_grads = torch.autograd.grad(ref, (lp, ls))
    assert float(ours) == pytest.approx(float(ref), rel=1e-10)
    for a, b in zip(grads, ref_grads):
        assert float(a) == pytest.approx(float(b), rel=1e-8)
