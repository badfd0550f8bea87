"""Dtypes follow the model; the posterior survives state_dict/torch.save and pickle;
weight samples are reproducible and have the posterior covariance."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

STRUCTURES = ("full", "kron", "diag")


# ------------------------------------------------------------------- builders
def mlp(dtype: torch.dtype, n_out: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, n_out)).to(dtype)


def regression_loader(dtype: torch.dtype, n: int = 40) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g,
                                                              dtype=torch.float64)
    return DataLoader(TensorDataset(X.to(dtype), y.to(dtype)), batch_size=16)


def classification_loader(dtype: torch.dtype, n: int = 30) -> DataLoader:
    g = torch.Generator().manual_seed(2)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return DataLoader(TensorDataset(X.to(dtype), y), batch_size=16)


def query(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 3, generator=g, dtype=torch.float64).to(dtype)


def make_la(structure: str, model: nn.Module, likelihood: str = "regression", **kwargs):
    return Laplace(model, likelihood, subset_of_weights="all", hessian_structure=structure,
                   **kwargs)


def fitted(structure: str, dtype: torch.dtype = torch.float64, **kwargs):
    la = make_la(structure, mlp(dtype), **kwargs)
    la.fit(regression_loader(dtype))
    return la


def dense_precision(la) -> torch.Tensor:
    P = la.posterior_precision
    if hasattr(P, "to_matrix"):
        return P.to_matrix()
    if P.ndim == 1:
        return torch.diag(P)
    return P


def curvature_tensors(la) -> list[torch.Tensor]:
    if la.H is None or not isinstance(la.H, torch.Tensor):  # kron
        tensors = [f for F in la.H_facs.kfacs for f in F]
        tensors += [lam for ls in la.H.eigenvalues for lam in ls]
        tensors += [Q for Qs in la.H.eigenvectors for Q in Qs]
        return tensors
    return [la.H]


# --------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_posterior_follows_model_dtype(structure, dtype):
    la = fitted(structure, dtype, sigma_noise=0.5, prior_precision=2.0)
    X = query(dtype)
    tensors = {
        "mean": la.mean,
        "prior_precision": la.prior_precision,
        "sigma_noise": la.sigma_noise,
        "posterior_precision": dense_precision(la),
        "posterior_variance": la.posterior_variance,
        "lml": la.log_marginal_likelihood(),
        "samples": la.sample(5, generator=torch.Generator().manual_seed(0)),
    }
    f_mu, f_var = la(X)
    tensors.update(f_mu=f_mu, f_var=f_var)
    f_mu_j, f_cov = la(X, joint=True)
    tensors.update(f_mu_joint=f_mu_j, f_cov=f_cov)
    nn_mu, nn_var = la(X, pred_type="nn", n_samples=4,
                       generator=torch.Generator().manual_seed(0))
    tensors.update(nn_mu=nn_mu, nn_var=nn_var)
    for i, t in enumerate(curvature_tensors(la)):
        tensors[f"H[{i}]"] = t
    wrong = {k: t.dtype for k, t in tensors.items() if t.dtype != dtype}
    assert not wrong, f"expected {dtype}: {wrong}"
    for k, t in tensors.items():
        assert bool(torch.isfinite(t).all()), k


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_classification_follows_model_dtype(structure, dtype):
    la = make_la(structure, mlp(dtype, n_out=3), "classification")
    la.fit(classification_loader(dtype))
    X = query(dtype)
    for link in ("probit", "mc", "bridge"):
        probs = la(X, link_approx=link, generator=torch.Generator().manual_seed(0))
        assert probs.dtype == dtype, link
        torch.testing.assert_close(probs.sum(-1), torch.ones(6, dtype=dtype))
    assert la.log_marginal_likelihood().dtype == dtype


@pytest.mark.parametrize("structure", STRUCTURES)
def test_float32_agrees_with_float64(structure):
    la64 = fitted(structure, torch.float64, sigma_noise=0.5)
    la32 = fitted(structure, torch.float32, sigma_noise=0.5)
    assert float(la32.log_marginal_likelihood()) == pytest.approx(
        float(la64.log_marginal_likelihood()), rel=1e-4
    )
    _, v64 = la64(query(torch.float64))
    _, v32 = la32(query(torch.float32))
    torch.testing.assert_close(v32.double(), v64, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------ serialization
def layerwise_prior(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([0.5, 2.0, 1.5, 3.0], dtype=dtype)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_state_dict_round_trip_through_torch_save(structure):
    la = fitted(structure, sigma_noise=0.6, prior_precision=layerwise_prior(), temperature=0.8)
    X = query(torch.float64)
    lml = la.log_marginal_likelihood()
    f_mu, f_var = la(X)
    _, f_cov = la(X, joint=True)

    buffer = io.BytesIO()
    torch.save(la.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    # a fresh LA over the same network, constructed with default hyperparameters
    fresh = make_la(structure, la.model)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.prior_precision, layerwise_prior(), rtol=0, atol=0)
    assert float(fresh.sigma_noise) == 0.6
    assert fresh.temperature == 0.8
    assert fresh.n_data == 40 and fresh.n_outputs == 1
    torch.testing.assert_close(fresh.mean, la.mean, rtol=0, atol=0)
    torch.testing.assert_close(fresh.log_marginal_likelihood(), lml, rtol=1e-12, atol=0)
    g_mu, g_var = fresh(X)
    torch.testing.assert_close(g_mu, f_mu, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_var, f_var, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fresh(X, joint=True)[1], f_cov, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fresh.posterior_variance, la.posterior_variance,
                               rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(dense_precision(fresh), dense_precision(la),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_state_dict_into_a_copy_of_the_model(structure):
    la = fitted(structure, prior_precision=3.0)
    X = query(torch.float64)
    model = copy.deepcopy(la.model)
    fresh = make_la(structure, model)
    fresh.load_state_dict(la.state_dict())
    torch.testing.assert_close(fresh.log_marginal_likelihood(), la.log_marginal_likelihood(),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(fresh(X)[1], la(X)[1], rtol=1e-10, atol=1e-14)


CROSS_DTYPE = [("all", s) for s in ("full", "kron", "diag", "lowrank", "gp")] + [
    ("last_layer", s) for s in ("full", "kron", "diag", "gp")] + [
    ("subnetwork", s) for s in ("full", "diag")]


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize(("subset", "structure"), CROSS_DTYPE,
                         ids=["-".join(c) for c in CROSS_DTYPE])
@pytest.mark.parametrize("saved", [torch.float64, torch.float32])
def test_state_dict_is_cast_to_the_model_dtype(subset, structure, likelihood, saved):
    """A state saved in one dtype loads into a model of the other, as
    ``nn.Module.load_state_dict`` casts (it loaded as-is and every prediction raised a
    dtype mismatch), and gives the same predictive and evidence to that dtype's rounding."""
    other = torch.float32 if saved == torch.float64 else torch.float64
    n_out = 1 if likelihood == "regression" else 3
    kwargs = {"subset_of_weights": subset, "hessian_structure": structure}
    if subset == "subnetwork":
        kwargs["subnetwork_indices"] = torch.tensor([0, 3, 7, 30])
    if structure == "gp":
        kwargs["n_subset"] = 12
    if structure == "lowrank":
        kwargs["n_eigenvalues"] = 6
    make_loader = regression_loader if likelihood == "regression" else classification_loader
    la = Laplace(mlp(saved, n_out), likelihood, **kwargs)
    la.fit(make_loader(saved))
    loaded = Laplace(mlp(other, n_out), likelihood, **kwargs)
    loaded.load_state_dict(la.state_dict())
    X = query(torch.float64)
    out, ref = loaded(X.to(other)), la(X.to(saved))
    out, ref = (out, ref) if likelihood == "classification" else (out[1], ref[1])
    assert out.dtype == other
    torch.testing.assert_close(out.double(), ref.double(), rtol=1e-4, atol=1e-6)
    lml = loaded.log_marginal_likelihood()
    assert lml.dtype == other
    torch.testing.assert_close(lml.double(), la.log_marginal_likelihood().double(),
                               rtol=1e-5, atol=1e-4)


def test_state_dict_rejects_other_structure():
    state = fitted("full").state_dict()
    fresh = make_la("diag", mlp(torch.float64))
    with pytest.raises(ValueError, match="FullLaplace cannot be loaded into DiagLaplace"):
        fresh.load_state_dict(state)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_pickle_round_trip(structure):
    la = fitted(structure, sigma_noise=0.6, prior_precision=layerwise_prior())
    X = query(torch.float64)
    f_mu, f_var = la(X)
    lml = la.log_marginal_likelihood()
    clone = pickle.loads(pickle.dumps(la))
    g_mu, g_var = clone(X)
    torch.testing.assert_close(g_mu, f_mu, rtol=0, atol=0)
    torch.testing.assert_close(g_var, f_var, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(clone.log_marginal_likelihood(), lml, rtol=1e-12, atol=0)
    gen = torch.Generator
    torch.testing.assert_close(clone.sample(3, generator=gen().manual_seed(1)),
                               la.sample(3, generator=gen().manual_seed(1)),
                               rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------- sampling
@pytest.mark.parametrize("structure", STRUCTURES)
def test_samples_reproducible(structure):
    la = fitted(structure, sigma_noise=0.5)
    a = la.sample(50, generator=torch.Generator().manual_seed(0))
    b = la.sample(50, generator=torch.Generator().manual_seed(0))
    c = la.sample(50, generator=torch.Generator().manual_seed(1))
    assert a.shape == (50, la.n_params)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_sample_covariance_is_posterior_covariance(structure):
    la = fitted(structure, sigma_noise=0.3, prior_precision=layerwise_prior())
    Sigma = torch.linalg.inv(dense_precision(la))
    n = 20_000
    s = la.sample(n, generator=torch.Generator().manual_seed(0))
    centered = s - la.mean
    # the mean: within 5 standard errors per coordinate
    se = (Sigma.diagonal() / n).sqrt()
    assert bool(((s.mean(0) - la.mean).abs() < 5 * se).all())
    C = centered.T @ centered / n
    std = Sigma.diagonal().sqrt()
    torch.testing.assert_close(C.diagonal(), Sigma.diagonal(), rtol=0.05, atol=0)
    # every covariance within 5% of the scale √(ΣᵢᵢΣⱼⱼ) (about 5 standard errors)
    assert float(((C - Sigma) / torch.outer(std, std)).abs().max()) < 0.05
    torch.testing.assert_close(la.posterior_variance, Sigma.diagonal(), rtol=1e-8, atol=1e-14)


def test_posterior_covariance_and_scale():
    """``posterior_covariance``/``posterior_scale`` (full) and ``posterior_scale`` (diag)
    agree with the inverse of the posterior precision."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from laplace import Laplace

    torch.manual_seed(0)
    X = torch.randn(20, 3, dtype=torch.float64)
    y = X.sum(-1, keepdim=True).sin()
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    loader = DataLoader(TensorDataset(X, y), batch_size=7)
    full = Laplace(model, "regression", "all", "full", sigma_noise=0.2, prior_precision=0.5)
    full.fit(loader)
    cov = torch.linalg.inv(full.posterior_precision)
    torch.testing.assert_close(full.posterior_covariance, cov, rtol=1e-9, atol=1e-12)
    S = full.posterior_scale
    torch.testing.assert_close(S @ S.T, cov, rtol=1e-9, atol=1e-12)
    assert torch.equal(S, S.tril())
    diag = Laplace(model, "regression", "all", "diag", sigma_noise=0.2, prior_precision=0.5)
    diag.fit(loader)
    torch.testing.assert_close(diag.posterior_scale, diag.posterior_precision.rsqrt())
