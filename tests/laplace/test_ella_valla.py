"""ELLA (Nyström features) and VaLLA (sparse variational GP) on the NTK.

Besides the inherited contract, the exact relations to the weight-space full-GGN
posterior ``Σ = (s JᵀΛJ + δI)⁻¹`` (``s = 1/σ²``):

* ELLA with ``n_subset = N`` and ``K = rank(J)`` features spans the row space of the
  stacked training Jacobian ``J``; the full-GGN variance is ELLA's plus
  ``δ⁻¹ J(x)(I − ΨΨᵀ)J(x)ᵀ``, so they agree at training inputs, everywhere when
  ``rank(J) = P`` (``N·C ≥ P``), and their marginal likelihoods agree. For nested
  feature sets ELLA's variance grows monotonically (Loewner order) towards the full one.
* VaLLA with ``Z`` = all training inputs is the exact GP with kernel ``JJᵀ/δ``, noise
  ``σ²`` and prior mean ``f(x; θ*)``: full-GGN covariance at every ``x`` (``N·C`` below
  or above ``P``), the exact GP mean and, as marginal likelihood, the GP evidence.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import ELLA, FullLaplace, FunctionalLaplace, Laplace, VaLLA
from tests.laplace.test_contract import LaplaceContract, regression_problem

torch.set_num_threads(1)

SIGMA, DELTA = 0.3, 2.0


class TestELLA(LaplaceContract):
    cls = ELLA
    kwargs = {"n_subset": 20, "n_eigenvalues": 10}
    parametric = False


class TestVaLLA(LaplaceContract):
    cls = VaLLA
    kwargs = {"n_inducing": 20}
    parametric = False


# ------------------------------------------------------------------ problems
def wide_problem(n: int = 6, outputs: int = 2, classes: int | None = None):
    """A tiny MLP with ``N·C < P`` (P = 98 + ...): Jacobian rows span a proper subspace."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    C = classes or outputs
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, C)).double()
    if classes:
        y = torch.randint(classes, (n,), generator=g)
    else:
        y = torch.randn(n, C, generator=g, dtype=torch.float64)
    X_test = torch.randn(7, 3, generator=g, dtype=torch.float64)
    return model, DataLoader(TensorDataset(X, y), batch_size=4), X, X_test


def full_laplace(model, loader, likelihood="regression"):
    kw = {"sigma_noise": SIGMA} if likelihood == "regression" else {}
    full = FullLaplace(model, likelihood, prior_precision=DELTA, **kw)
    full.fit(loader)
    return full


def stacked_jacobian(la, X):
    J, f = la.backend.jacobians(X)
    return J.reshape(-1, J.shape[-1]), f


def ella(model, loader, K, likelihood="regression", M=None, **kw):
    extra = {"sigma_noise": SIGMA} if likelihood == "regression" else {}
    la = ELLA(model, likelihood, M or len(loader.dataset), n_eigenvalues=K,
              prior_precision=DELTA, **extra, **kw)
    la.fit(loader)
    return la


def valla(model, loader, M=None, likelihood="regression", **kw):
    extra = {"sigma_noise": SIGMA} if likelihood == "regression" else {}
    la = VaLLA(model, likelihood, M or len(loader.dataset), prior_precision=DELTA,
               **extra, **kw)
    la.fit(loader)
    return la


def close(a, b, rtol=1e-8, atol=1e-11):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------- ELLA
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_ella_full_rank_subspace_equals_full_ggn_at_training_inputs(likelihood):
    """``N·C < P``: with M = N and K = rank(J), equal at training inputs; elsewhere the
    gap is exactly ``δ⁻¹ J(x)(I − ΨΨᵀ)J(x)ᵀ`` (and nonzero)."""
    classes = 3 if likelihood == "classification" else None
    model, loader, X, X_test = wide_problem(classes=classes)
    full = full_laplace(model, loader, likelihood)
    J, _ = stacked_jacobian(full, X)
    rank = int(torch.linalg.matrix_rank(J))
    assert rank == J.shape[0] < full.n_params
    la = ella(model, loader, rank, likelihood, all_outputs=True)
    assert la.n_features == rank
    close(la.predictive_moments(X)[1], full._glm_predictive_distribution(X)[1])
    close(la.log_marginal_likelihood(), full.log_marginal_likelihood(), rtol=1e-10, atol=0)
    # Off the training inputs: the missing part is the prior variance outside span(Ψ).
    Jt = full.backend.jacobians(X_test)[0]
    E = Jt - (Jt @ la._Psi) @ la._Psi.T
    gap = full._glm_predictive_distribution(X_test)[1] - la.predictive_moments(X_test)[1]
    close(gap, E @ E.mT / DELTA)
    assert float(gap.diagonal(dim1=-2, dim2=-1).min()) > 1e-6


def test_ella_equals_full_ggn_everywhere_when_jacobian_has_full_column_rank():
    """``N·C = 60 ≥ P = 50``: rank(J) = P, so K = P features reproduce FullLaplace."""
    model, loader, _ = regression_problem(torch.float64)
    full = full_laplace(model, loader)
    X_test = torch.rand(9, 3, generator=torch.Generator().manual_seed(5),
                        dtype=torch.float64) * 4 - 2
    J, _ = stacked_jacobian(full, loader.dataset.tensors[0])
    assert int(torch.linalg.matrix_rank(J)) == full.n_params == 50
    la = ella(model, loader, 50, all_outputs=True)
    for joint in (False, True):
        (m1, v1), (m2, v2) = full(X_test, joint=joint), la(X_test, joint=joint)
        close(m2, m1, rtol=0, atol=0)
        close(v2, v1)
    for prior, sigma in ((2.0, 0.3), (0.5, 1.1)):
        close(la.log_marginal_likelihood(prior, sigma), full.log_marginal_likelihood(prior, sigma),
              rtol=1e-10, atol=0)


@pytest.mark.parametrize("M", [30, 12])
def test_ella_variance_grows_monotonically_to_the_full_ggn(M):
    """Nested top-K subspaces: ELLA ≤ ELLA(K') ≤ FullLaplace in the Loewner order, so the
    error at test inputs decreases with K (to zero at K = P when M = N)."""
    model, loader, _ = regression_problem(torch.float64)
    full = full_laplace(model, loader)
    X_test = torch.rand(9, 3, generator=torch.Generator().manual_seed(6),
                        dtype=torch.float64) * 4 - 2
    ref = full(X_test, joint=True)[1]
    errors, previous = [], None
    for K in (1, 3, 8, 15, 24) + ((50,) if M == 30 else ()):
        cov = ella(model, loader, K, M=M, all_outputs=True)(X_test, joint=True)[1]
        assert float(torch.linalg.eigvalsh(ref - cov).min()) > -1e-12
        if previous is not None:
            assert float(torch.linalg.eigvalsh(cov - previous).min()) > -1e-12
        previous = cov
        errors.append(float((ref - cov).diagonal().sum()))
    assert all(b < a for a, b in zip(errors, errors[1:]))
    if M == 30:
        assert errors[-1] < 1e-10 * errors[0]


def test_ella_features_are_the_nystrom_map():
    """``φ(x) = κ(x, M) V Λ^{-1/2}`` with the top-K eigenpairs of ``K_MM``."""
    model, loader, X, X_test = wide_problem()
    la = ella(model, loader, 5, M=4, all_outputs=True)
    J_M = stacked_jacobian(la, X[torch.as_tensor(la.sod_indices)])[0]
    lam, V = torch.linalg.eigh(J_M @ J_M.T)
    lam, V = lam.flip(0)[:5], V.flip(-1)[:, :5]
    Jt = stacked_jacobian(la, X_test)[0]
    phi = (Jt @ J_M.T @ V / lam.sqrt()).reshape(7, 2, 5)
    feats = la.features(X_test)[0]
    # Eigenvectors are defined up to sign: compare φφᵀ and the eigenvalues.
    close(feats @ feats.mT, phi @ phi.mT)
    close(la.eigenvalues, lam)
    assert la._Psi.shape == (la.n_params, 5)


def test_ella_classification_link_approximations_and_tuning():
    model, loader, X, X_test = wide_problem(n=12, classes=3)
    la = Laplace(model, "classification", "all", "gp", functional_approximation="nystrom",
                 n_subset=8, n_eigenvalues=6, prior_precision=DELTA)
    assert type(la) is ELLA
    la.fit(loader)
    for link in ("probit", "bridge", "bridge_norm", "mc"):
        probs = la(X_test, link_approx=link, generator=torch.Generator().manual_seed(0))
        assert probs.shape == (7, 3)
        close(probs.sum(-1), torch.ones(7, dtype=torch.float64))
    before = la.log_marginal_likelihood(1.0).item()
    la.optimize_prior_precision(method="marglik", n_steps=50, lr=0.2, init_prior_prec=1.0)
    assert la.log_marginal_likelihood().item() >= before


# --------------------------------------------------------------------- VaLLA
def exact_gp(la_full, X, y, X_test):
    """Mean, covariance and evidence of the GP with kernel JJᵀ/δ, noise σ², mean f(θ*)."""
    J, f = stacked_jacobian(la_full, X)
    Jt, ft = stacked_jacobian(la_full, X_test)
    r = y.reshape(-1) - f.reshape(-1)
    A = J @ J.T / DELTA + SIGMA**2 * torch.eye(len(J), dtype=J.dtype)
    mean = ft.reshape(-1) + Jt @ J.T / DELTA @ torch.linalg.solve(A, r)
    evidence = torch.distributions.MultivariateNormal(torch.zeros_like(r), A).log_prob(r)
    return mean.reshape(ft.shape), evidence


@pytest.mark.parametrize("problem", ["wide", "tall"])
def test_valla_with_all_inducing_points_is_the_exact_gp(problem):
    """``wide``: N·C = 12 < P (K_ZZ invertible); ``tall``: N·C = 60 > P = 50 (K_ZZ
    singular: the pseudo-inverse); either way the exact GP = full-GGN covariance."""
    if problem == "wide":
        model, loader, X, X_test = wide_problem()
    else:
        model, loader, _ = regression_problem(torch.float64)
        X = loader.dataset.tensors[0]
        X_test = torch.rand(7, 3, generator=torch.Generator().manual_seed(3),
                            dtype=torch.float64) * 4 - 2
    y = loader.dataset.tensors[1]
    full, la = full_laplace(model, loader), valla(model, loader, free_mean=True)
    mean, evidence = exact_gp(full, X, y, X_test)
    fixed = valla(model, loader)  # the default: the MAP output is the predictive mean
    for joint in (False, True):
        v1, (m2, v2) = full(X_test, joint=joint)[1], la(X_test, joint=joint)
        close(v2, v1)
        close(m2, mean.reshape(m2.shape))
        m3, v3 = fixed(X_test, joint=joint)
        close(v3, v1)
        close(m3, full(X_test, joint=joint)[0], rtol=0, atol=0)
    close(la.log_marginal_likelihood(), evidence, rtol=1e-10, atol=0)


def test_valla_regression_is_titsias_with_the_brief_formulas():
    """M < N with an invertible K_ZZ: q(u), the predictive and the collapsed ELBO from
    the textbook (N·C × N·C) formulas."""
    model, loader, X, X_test = wide_problem(n=10, outputs=2)
    y = loader.dataset.tensors[1]
    full, la = full_laplace(model, loader), valla(model, loader, M=4, free_mean=True)
    Z = X[torch.as_tensor(la.sod_indices)]
    (J, f), (J_Z, _), (Jt, ft) = (stacked_jacobian(full, A) for A in (X, Z, X_test))
    K_ZZ, K_ZN, K_sZ = J_Z @ J_Z.T / DELTA, J_Z @ J.T / DELTA, Jt @ J_Z.T / DELTA
    K_NN, K_ss = J @ J.T / DELTA, Jt @ Jt.T / DELTA
    s, r = 1 / SIGMA**2, y.reshape(-1) - f.reshape(-1)
    Sigma = torch.linalg.inv(K_ZZ + s * K_ZN @ K_ZN.T)
    m = s * K_ZZ @ Sigma @ K_ZN @ r
    S = K_ZZ @ Sigma @ K_ZZ
    close(la.inducing_mean.reshape(-1), m)
    close(la.inducing_covariance, S)
    Ki = torch.linalg.inv(K_ZZ)
    mean = ft.reshape(-1) + K_sZ @ Ki @ m
    cov = K_ss - K_sZ @ Ki @ K_sZ.T + K_sZ @ Ki @ S @ Ki @ K_sZ.T
    m2, v2 = la(X_test, joint=True)
    close(m2, mean, rtol=1e-7, atol=1e-9)
    close(v2, cov, rtol=1e-7, atol=1e-9)
    Q = K_ZN.T @ Ki @ K_ZN
    noise = torch.eye(len(r), dtype=r.dtype) / s
    elbo = (torch.distributions.MultivariateNormal(torch.zeros_like(r), Q + noise).log_prob(r)
            - s / 2 * torch.trace(K_NN - Q))
    close(la.log_marginal_likelihood(), elbo, rtol=1e-9, atol=0)
    assert float(la.log_marginal_likelihood()) < float(exact_gp(full, X, y, X_test)[1])
    # the default keeps m = 0 (the MAP mean): the same S, and the uncollapsed ELBO at m = 0
    fixed = valla(model, loader, M=4)
    close(fixed.inducing_covariance, S)
    m3, v3 = fixed(X_test, joint=True)
    close(m3, ft.reshape(-1), rtol=0, atol=0)
    close(v3, cov, rtol=1e-7, atol=1e-9)
    latent = torch.diagonal(K_NN - Q + K_ZN.T @ Ki @ S @ Ki @ K_ZN)
    kl = 0.5 * (torch.trace(Ki @ S) - len(S) + torch.logdet(K_ZZ) - torch.logdet(S))
    elbo0 = (-0.5 * len(r) * math.log(2 * math.pi / s) - s / 2 * (r.square() + latent).sum()
             - kl)
    close(fixed.log_marginal_likelihood(), elbo0, rtol=1e-9, atol=0)


def test_valla_marglik_tuning_and_hyperparameter_gradients():
    model, loader, _ = regression_problem(torch.float64)
    la = valla(model, loader, M=10)
    prior = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    lml = la.log_marginal_likelihood(prior, sigma)
    lml.backward()
    assert torch.isfinite(prior.grad) and torch.isfinite(sigma.grad)
    la.prior_precision, la.sigma_noise = 2.0, 0.3
    before = la.log_marginal_likelihood().item()
    la.optimize_prior_precision(method="marglik", n_steps=60, lr=0.1, init_prior_prec=2.0)
    assert la.log_marginal_likelihood().item() > before


def classification_problem():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model, DataLoader(TensorDataset(X, y), batch_size=16), X[:6]


def test_valla_classification_elbo_increases_and_is_reproducible():
    model, loader, X = classification_problem()
    la = Laplace(model, "classification", "all", "gp", functional_approximation="variational",
                 n_inducing=10, prior_precision=1.0, n_iter=60, lr=0.02)
    assert type(la) is VaLLA
    la.fit(loader)
    history = la.elbo_history
    assert len(history) == 61 and max(history) > history[0] + 1e-3
    lml = la.log_marginal_likelihood()
    assert lml.item() == pytest.approx(max(history), rel=1e-12)
    probs = la(X)
    assert probs.shape == (6, 3)
    close(probs.sum(-1), torch.ones(6, dtype=torch.float64))
    again = VaLLA(model, "classification", 10, prior_precision=1.0, n_iter=60, lr=0.02)
    again.fit(loader)
    close(again(X), probs, rtol=0, atol=0)
    # State round trip keeps the predictive and the ELBO.
    fresh = VaLLA(model, "classification", 10)
    fresh.load_state_dict(la.state_dict())
    close(fresh(X), probs, rtol=1e-12, atol=1e-14)
    close(fresh.log_marginal_likelihood(), lml, rtol=1e-12, atol=0)


def test_valla_classification_starts_from_the_ggn_posterior():
    """n_iter = 0 keeps m_w = 0 and the Gauss-Newton S_w; with Z = all inputs that is the
    full-GGN (Laplace) covariance at the MAP mean."""
    model, loader, X = classification_problem()
    la = valla(model, loader, likelihood="classification", n_iter=0)
    full = full_laplace(model, loader, "classification")
    f_mu, f_var = full._glm_predictive_distribution(X)
    m2, v2 = la.predictive_moments(X)
    close(m2, f_mu, rtol=0, atol=0)
    close(v2, f_var)


# ----------------------------------------------------------------- factory / errors
def test_factory_routes_functional_approximations():
    model, _, _ = regression_problem(torch.float64)
    kinds = {None: FunctionalLaplace, "nystrom": ELLA, "variational": VaLLA}
    for approx, cls in kinds.items():
        la = Laplace(model, "regression", "all", "gp", 10, functional_approximation=approx)
        assert type(la) is cls
    with pytest.raises(ValueError, match="functional_approximation"):
        Laplace(model, "regression", "all", "gp", 10, functional_approximation="bogus")
    with pytest.raises(ValueError, match="functional_approximation applies"):
        Laplace(model, "regression", "last_layer", "gp", 10, functional_approximation="nystrom")
    with pytest.raises(ValueError, match="functional_approximation applies"):
        Laplace(model, "regression", "all", "full", functional_approximation="variational")


def test_rejections():
    model, loader, X = regression_problem(torch.float64)
    with pytest.raises(ValueError, match="n_eigenvalues=41 exceeds"):
        ELLA(model, "regression", 20, n_eigenvalues=41).fit(loader)
    with pytest.raises(ValueError, match="n_subset=31 exceeds"):
        ELLA(model, "regression", 31, n_eigenvalues=5).fit(loader)
    with pytest.raises(ValueError, match="n_inducing=31 exceeds"):
        VaLLA(model, "regression", 31).fit(loader)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="n_eigenvalues must be a positive integer"):
            ELLA(model, "regression", 10, n_eigenvalues=bad)
        with pytest.raises(ValueError, match="n_inducing must be a positive integer"):
            VaLLA(model, "regression", bad)
    with pytest.raises(ValueError, match="n_iter"):
        VaLLA(model, "regression", 5, n_iter=-1)
    with pytest.raises(ValueError, match="does not support"):
        ELLA(model, "regression", 5, independent_outputs=True)
    with pytest.raises(ValueError, match="does not support"):
        VaLLA(model, "regression", 5, output_hessian="diag")
    for cls, kw in ((ELLA, {"n_eigenvalues": 5}), (VaLLA, {})):
        la = cls(model, "regression", 10, **kw)
        with pytest.raises(ValueError, match="not fitted"):
            la(X)
        la.fit(loader)
        with pytest.raises(ValueError, match="Only gp"):
            la(X, pred_type="glm")
        with pytest.raises(ValueError, match="scalar prior precision only"):
            la.prior_precision = torch.ones(la.n_layers, dtype=torch.float64)  # refused here
        assert la.prior_precision.shape == (1,)
        with pytest.raises(ValueError, match="scalar prior precision only"):
            la.optimize_prior_precision(prior_structure="layerwise")
    ella_state = ELLA(model, "regression", 10, n_eigenvalues=5)
    ella_state.fit(loader)
    with pytest.raises(ValueError, match="State of a ELLA cannot be loaded into a VaLLA"):
        VaLLA(model, "regression", 10).load_state_dict(ella_state.state_dict())
    with pytest.raises(ValueError, match="regression fit cannot be loaded"):
        ELLA(model, "classification", 10).load_state_dict(ella_state.state_dict())


def test_rank_deficient_kernel_keeps_the_nonzero_eigenvalues():
    """More features than rank(K_MM) = P: a warning, and only the nonzero ones are kept."""
    model, loader, _ = regression_problem(torch.float64)
    with pytest.warns(RuntimeWarning, match="numerically nonzero"):
        la = ella(model, loader, 55, all_outputs=True)
    assert la.n_features == 50 and math.isfinite(la.log_marginal_likelihood().item())


@pytest.mark.parametrize("variant", ["gp", "ella", "valla"])
def test_states_load_only_at_their_weights_and_misuse_is_named(variant):
    """A function-space state holds kernel quantities of the weights it was fitted at:
    loading it into a network with other weights raised nothing and predicted from
    mismatched Jacobians. Before ``fit``, ``NotFittedError``; an empty input is named."""
    import copy

    from laplace.utils.errors import NotFittedError

    model, loader, _, X_test = wide_problem()
    make = {"gp": lambda m: FunctionalLaplace(m, "regression", 6, sigma_noise=SIGMA,
                                              prior_precision=DELTA),
            "ella": lambda m: ELLA(m, "regression", 6, n_eigenvalues=4, sigma_noise=SIGMA,
                                   prior_precision=DELTA),
            "valla": lambda m: VaLLA(m, "regression", 6, sigma_noise=SIGMA,
                                     prior_precision=DELTA)}[variant]
    with pytest.raises(NotFittedError):
        make(copy.deepcopy(model)).state_dict()
    la = make(model)
    la.fit(loader)
    with pytest.raises(ValueError, match="Input x has no points"):
        la(X_test[:0])
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.add_(0.1)
    with pytest.raises(ValueError, match="fitted at other network weights"):
        make(other).load_state_dict(la.state_dict())
    same = make(copy.deepcopy(model))
    same.load_state_dict(la.state_dict())
    close(same(X_test)[1], la(X_test)[1])


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_ella_gives_laplace_torchs_numbers(likelihood):
    """``tests/fixtures/laplace_torch_0.3_ella.pt`` holds laplace-torch 0.3's ELLA (default
    seed, 12 of 30 points, 8 eigenvalues, one drawn output per point) on a 2-output
    regression and a 3-class classification: the same subset and output draws give its
    predictive to round-off (they differed by up to 12× with all outputs and numpy's draw)."""
    from pathlib import Path

    case = torch.load(Path(__file__).parents[1] / "fixtures" / "laplace_torch_0.3_ella.pt",
                      weights_only=True)[likelihood]
    C = case["f_mu"].shape[-1]
    model = nn.Sequential(nn.Linear(2, 10), nn.Tanh(), nn.Linear(10, C)).double()
    model.load_state_dict(case["model"])
    kw = {"sigma_noise": 0.3} if likelihood == "regression" else {}
    la = ELLA(model, likelihood, 12, 8, prior_precision=2.0, **kw)
    la.fit(DataLoader(TensorDataset(case["X"], case["y"]), batch_size=7))
    f_mu, f_var = la.predictive_moments(case["Xt"])
    close(f_mu, case["f_mu"])
    close(f_var, case["f_var"], rtol=1e-8, atol=1e-12)


def _gaussian_nll(la, X, y):
    """Mean NLL per example of ``N(f, f_var + σ²)``, summed over the outputs."""
    f_mu, f_var = la.predictive_moments(X)
    var = f_var.diagonal(dim1=-2, dim2=-1) + la.sigma_noise ** 2
    return float((0.5 * ((y - f_mu) ** 2 / var + var.log() + math.log(2 * math.pi))).sum()
                 / len(X))


def test_ella_optimize_hyperparameters_picks_the_lowest_validation_nll():
    """laplace-torch 0.3's ``ELLA.optimize_hyperparameters(val_loader, grid)``."""
    model, loader, X, X_test = wide_problem(n=12)
    la = ella(model, loader, K=8)
    y_val = torch.randn(7, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    val = DataLoader(TensorDataset(X_test, y_val), batch_size=3)
    assert la.fit_history_["processed_examples"] == [4.0, 8.0, 12.0]  # after each batch
    grid = [0.1, 1.0, 10.0, (1.0, 0.5), (1.0, 2.0)]
    expected = []
    for point in grid:
        la.prior_precision, la.sigma_noise = (point if isinstance(point, tuple)
                                              else (point, SIGMA))
        expected.append(_gaussian_nll(la, X_test, y_val))
    la.prior_precision, la.sigma_noise = DELTA, SIGMA
    la.optimize_hyperparameters(val, grid)
    best = grid[min(range(len(grid)), key=expected.__getitem__)]
    prior, sigma = best if isinstance(best, tuple) else (best, SIGMA)
    assert float(la.prior_precision) == prior and float(la.sigma_noise) == sigma
    scores = [r["val_nll"] for r in la.fit_history_["tuning"]]
    assert scores[:3] == pytest.approx(expected[:3], rel=1e-12)  # the scalar points keep σ
    assert scores[3:] == pytest.approx(expected[3:], rel=1e-12)
    with pytest.raises(ValueError, match="grid is empty"):
        la.optimize_hyperparameters(val, [])
    with pytest.raises(ValueError, match="needs a val_loader"):
        la.optimize_hyperparameters(None, grid)
    assert float(la.prior_precision) == prior and float(la.sigma_noise) == sigma


def test_ella_optimize_hyperparameters_for_classification():
    model, loader, X, X_test = wide_problem(n=12, classes=3)
    la = ella(model, loader, K=8, likelihood="classification")
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 1])
    val = DataLoader(TensorDataset(X_test, labels), batch_size=4)
    expected = []
    for prior in (0.01, 1.0, 100.0):
        la.prior_precision = prior
        probs = la(X_test, link_approx="probit")
        expected.append(float(-probs[torch.arange(7), labels].log().mean()))
    la.optimize_hyperparameters(val, [0.01, 1.0, 100.0])
    assert float(la.prior_precision) == [0.01, 1.0, 100.0][expected.index(min(expected))]
    assert [r["val_nll"] for r in la.fit_history_["tuning"]] == pytest.approx(expected,
                                                                              rel=1e-12)
