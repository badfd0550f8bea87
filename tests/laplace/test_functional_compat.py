"""Function-space variants as in laplace-torch 0.3: ``functional_samples`` accepts the
documented ``pred_type="glm"`` default and draws the GP posterior; ``FunctionalLaplace``
exposes ``functional_variance``, ``functional_covariance`` and
``gp_kernel_prior_variance``, and keeps no subset Jacobians (the kernel is built batch
by batch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

DT = torch.float64
N, M, SIGMA, DELTA = 24, 10, 0.3, 2.0


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).to(DT)  # P = 98
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, 3, generator=g, dtype=DT)
    y = torch.stack([X.sin().sum(-1), X[:, 0] * X[:, 1]], -1)
    return model, DataLoader(TensorDataset(X, y), batch_size=3), X


VARIANTS = {
    "gp": dict(subset_of_weights="all", n_subset=M),
    "gp-last-layer": dict(subset_of_weights="last_layer", n_subset=M),
    "ella": dict(subset_of_weights="all", functional_approximation="nystrom", n_subset=M,
                 n_eigenvalues=8),
    "valla": dict(subset_of_weights="all", functional_approximation="variational",
                  n_inducing=M),
}


def fitted(variant: str):
    model, loader, X = problem()
    la = Laplace(model, "regression", hessian_structure="gp", sigma_noise=SIGMA,
                 prior_precision=DELTA, **VARIANTS[variant])
    la.fit(loader)
    return la, X


@pytest.mark.parametrize("variant", VARIANTS)
def test_functional_samples_default_glm_draws_gp_posterior(variant):
    la, X = fitted(variant)
    x = X[:3]
    draws = la.functional_samples(x, n_samples=30000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (30000, 3, 2)
    f_mu, f_var = la.predictive_moments(x)
    scale = f_var.diagonal(dim1=-2, dim2=-1).max()
    torch.testing.assert_close(draws.mean(0), f_mu, rtol=0, atol=0.03 * scale.sqrt())
    cov = torch.stack([torch.cov(draws[:, i].T) for i in range(3)])
    torch.testing.assert_close(cov, f_var, rtol=0, atol=0.03 * scale)
    for pred_type in ("gp", "nn"):  # every prediction type draws the same posterior
        again = la.functional_samples(x, pred_type=pred_type, n_samples=5,
                                      generator=torch.Generator().manual_seed(4))
        first = la.functional_samples(x, pred_type="glm", n_samples=5,
                                      generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(again, first, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Unknown pred_type 'bayes'"):
        la.functional_samples(x, pred_type="bayes")


@pytest.mark.parametrize("variant", VARIANTS)
def test_joint_functional_samples(variant):
    la, X = fitted(variant)
    x = X[:3]
    draws = la.functional_samples(x, n_samples=30000, joint=True,
                                  generator=torch.Generator().manual_seed(1))
    assert draws.shape == (30000, 3, 2)
    _, joint = la.predictive_moments(x, joint=True)
    torch.testing.assert_close(torch.cov(draws.reshape(30000, 6).T), joint, rtol=0,
                               atol=0.03 * joint.diagonal().max())


@pytest.mark.parametrize("variant", VARIANTS)
def test_functional_variance_and_covariance(variant):
    la, X = fitted(variant)
    Js, _ = la._jacobians(X[:4])
    f_mu, f_var = la.predictive_moments(X[:4])
    torch.testing.assert_close(la.functional_variance(Js), f_var, rtol=1e-12, atol=1e-14)
    _, joint = la.predictive_moments(X[:4], joint=True)
    torch.testing.assert_close(la.functional_covariance(Js), joint, rtol=1e-12, atol=1e-14)
    blocks = torch.stack([joint[2 * i:2 * i + 2, 2 * i:2 * i + 2] for i in range(4)])
    torch.testing.assert_close(blocks, f_var, rtol=1e-10, atol=1e-13)


def test_gp_posterior_against_dense_computation():
    """``κ** − κ*M (K_MM + σ²I)⁻¹ κM*`` with ``κ = v JJᵀ``, ``v = (M/N)/δ``, from stacked
    Jacobians: the batch-by-batch kernel (batches 3, 3, 3, 1) is the dense one."""
    la, X = fitted("gp")
    v = M / N / DELTA
    torch.testing.assert_close(la.gp_kernel_prior_variance, torch.tensor([v], dtype=DT))
    J_M = la._jacobians(X[torch.as_tensor(la.sod_indices)])[0].reshape(2 * M, -1)
    torch.testing.assert_close(la.K_MM, J_M @ J_M.T, rtol=1e-12, atol=1e-12)
    Js = la._jacobians(X[:4])[0].reshape(8, -1)
    A = v * J_M @ J_M.T + SIGMA**2 * torch.eye(2 * M, dtype=DT)
    K_sM = v * Js @ J_M.T
    expected = v * Js @ Js.T - K_sM @ torch.linalg.solve(A, K_sM.T)
    torch.testing.assert_close(la.functional_covariance(Js.reshape(4, 2, -1)), expected,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant", ["gp", "gp-last-layer"])
def test_no_subset_jacobians_stored(variant):
    la, X = fitted(variant)
    P = la.n_params
    size = M * 2 * P  # the M × C × P subset Jacobians
    assert not hasattr(la, "_J_M")
    stored = [t for v in vars(la).values()
              for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor)]
    assert all(t.numel() < size for t in stored)
    state = la.state_dict()
    assert "J_M" not in state and {"K_MM", "mu", "Lambda", "X_M"} <= set(state)
    tensors = [t for v in state.values()
               for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor)]
    assert all(t.numel() < size for t in tensors)


def test_laplace_torchs_function_space_warnings():
    """laplace-torch warns on a diagonal kernel for multi-output regression and on
    marglik tuning of ``FunctionalLaplace`` (not of ELLA or VaLLA): so do we."""
    import warnings

    model, loader, _ = problem()
    la = Laplace(model, "regression", hessian_structure="gp", sigma_noise=SIGMA,
                 independent_outputs=True, n_subset=M)
    with pytest.warns(UserWarning, match="diagonal approximation of a GP kernel is not "
                                         "recommended in the case of multivariate regression"):
        la.fit(loader)
    with pytest.warns(UserWarning, match="Use of method='marglik' in case of FunctionalLaplace "
                                         "is discouraged"):
        la.optimize_prior_precision(method="marglik", n_steps=2)
    for variant in ("ella", "valla"):
        other, _ = fitted(variant)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            other.optimize_prior_precision(method="marglik", n_steps=2)


def test_a_loader_over_part_of_the_data_set_is_refused():
    """The subset of data is drawn from ``train_loader.dataset``: a sampler over part of
    it would mix points the loader never yields into the kernel."""
    model, loader, _ = problem()
    partial = DataLoader(loader.dataset, batch_size=3, sampler=list(range(0, N, 2)))
    la = Laplace(model, "regression", hessian_structure="gp", n_subset=M)
    with pytest.raises(ValueError, match=f"the loader yields {N // 2} of its {N} points"):
        la.fit(partial)


@pytest.mark.parametrize("variant", VARIANTS)
def test_predictive_samples_takes_fitting_and_joint(variant):
    """laplace-torch 0.3's function-space ``predictive_samples(x, pred_type, n_samples,
    diagonal_output, generator, fitting, joint)``: the functional draws (joint ones with
    ``joint=True``), through the softmax for classification and for reward modeling with
    ``fitting=True`` only."""
    la, X = fitted(variant)
    x = X[:4]

    def draws(method, **kwargs):
        return getattr(la, method)(x, "glm", 5, False, torch.Generator().manual_seed(2),
                                   **kwargs)

    assert torch.equal(draws("predictive_samples"), draws("functional_samples"))
    joint = draws("predictive_samples", joint=True)
    assert joint.shape == (5, 4, 2)
    assert torch.equal(joint, draws("functional_samples", joint=True))
    assert torch.equal(draws("predictive_samples", fitting=True),
                       draws("functional_samples"))  # regression: latent values
    # the GP variants' draws do not depend on the likelihood, only the link does (VaLLA's
    # variational posterior does: its link is the same code)
    for likelihood in ("classification", "reward_modeling") if variant != "valla" else ():
        la.likelihood = likelihood
        latent = draws("functional_samples")
        linked = draws("predictive_samples", fitting=True)
        assert torch.equal(linked, torch.softmax(latent, -1))
        unlinked = draws("predictive_samples")
        assert torch.equal(unlinked, torch.softmax(latent, -1) if likelihood ==
                           "classification" else latent)
    with pytest.raises(ValueError, match="fitting"):
        la.predictive_samples(x, fitting="yes")


@pytest.mark.parametrize("variant", VARIANTS)
def test_laplace_torch_keyword_names(variant):
    """``predictive_moments(x=..., joint=...)`` and ``load_state_dict(state_dict=...)``
    take laplace-torch's keyword names."""
    la, X = fitted(variant)
    mean, var = la.predictive_moments(x=X[:3], joint=True)
    assert mean.shape == (6,) and var.shape == (6, 6)
    la.load_state_dict(state_dict=la.state_dict())
    assert torch.equal(la.predictive_moments(x=X[:3])[0], mean.reshape(3, 2))
