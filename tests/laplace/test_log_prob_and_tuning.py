"""``log_prob``/``square_norm`` of the parametric posteriors and the laplace-torch 0.3
signature and defaults of ``optimize_prior_precision``."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

torch.set_num_threads(1)
DT = torch.float64

VARIANTS = [
    ("all", "full"), ("all", "kron"), ("all", "diag"), ("all", "lowrank"),
    ("last_layer", "full"), ("last_layer", "kron"), ("last_layer", "diag"),
    ("subnetwork", "full"), ("subnetwork", "diag"),
]
IDS = ["-".join(v) for v in VARIANTS]


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    X = torch.randn(12, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    y = torch.cat([torch.sin(X[:, :1]), X[:, 1:2] ** 2], dim=1)
    return model, DataLoader(TensorDataset(X, y), batch_size=6)


def fitted(variant, **kwargs):
    subset, structure = variant
    model, loader = problem()
    extra = {}
    if subset == "subnetwork":
        extra["subnetwork_indices"] = torch.tensor([1, 4, 9, 15, 22, 30, 31])
    if structure == "lowrank":
        extra["n_eigenvalues"] = 5
    la = Laplace(model, "regression", subset_of_weights=subset, hessian_structure=structure,
                 sigma_noise=0.3, prior_precision=0.8, temperature=0.7, **extra, **kwargs)
    la.fit(loader)
    return la


def dense_precision(la) -> torch.Tensor:
    """The posterior precision as a dense matrix, from each structure's public form."""
    P = la.posterior_precision
    if isinstance(P, tuple):  # low rank: ((U, s·λ), prior diagonal)
        (U, lam), prior = P
        return U @ torch.diag(lam) @ U.T + torch.diag(prior)
    if hasattr(P, "to_matrix"):
        return P.to_matrix()
    return torch.diag(P) if P.ndim == 1 else P


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_log_prob_equals_the_dense_gaussian(variant):
    la = fitted(variant)
    precision = dense_precision(la)
    mean = la.mean if la.mean.numel() == precision.shape[0] else la.mean_subnet
    reference = MultivariateNormal(mean, precision_matrix=precision)
    values = reference.sample((4,)) * 1.5 + 0.1  # a batch (4, P) off the mean
    delta = values - mean
    torch.testing.assert_close(la.square_norm(values),
                               torch.einsum("bp,pq,bq->b", delta, precision, delta))
    torch.testing.assert_close(la.log_prob(values), reference.log_prob(values))
    torch.testing.assert_close(la.log_prob(values[0]), reference.log_prob(values[0]))
    torch.testing.assert_close(la.log_prob(values, normalized=False),
                               -la.square_norm(values) / 2)
    assert float(la.square_norm(mean)) == pytest.approx(0.0, abs=1e-12)


def test_log_prob_is_differentiable_in_the_value():
    la = fitted(("all", "kron"))
    value = la.mean.clone().requires_grad_(True)
    shifted = value + 0.1
    la.log_prob(shifted).backward()
    precision = dense_precision(la)
    torch.testing.assert_close(value.grad, -precision @ torch.full_like(la.mean, 0.1))


# ---------------------------------------------------------- tuning defaults
LAPLACE_TORCH_0_3_SIGNATURE = [
    ("pred_type", "glm"), ("method", "marglik"), ("n_steps", 100), ("lr", 0.1),
    ("init_prior_prec", 1.0), ("prior_structure", "scalar"), ("val_loader", None),
    ("loss", None), ("log_prior_prec_min", -4), ("log_prior_prec_max", 4),
    ("grid_size", 100), ("link_approx", "probit"), ("n_samples", 100), ("verbose", False),
    ("progress_bar", False), ("log_prior_prec_base", 10.0),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_optimize_prior_precision_signature_is_laplace_torchs(variant):
    la = fitted(variant)
    params = inspect.signature(la.optimize_prior_precision).parameters
    assert [(n, p.default) for n, p in params.items()] == LAPLACE_TORCH_0_3_SIGNATURE


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_optimize_prior_precision_default_tunes_a_scalar_to_the_evidence_maximum(variant):
    la = fitted(variant)
    la.optimize_prior_precision(n_steps=200)
    assert la.prior_precision.shape == (1,)
    # at the optimum the evidence is flat in log δ (a dense, autograd check)
    log_delta = la.prior_precision.log().clone().requires_grad_(True)
    la.log_marginal_likelihood(prior_precision=log_delta.exp()).backward()
    assert abs(float(log_delta.grad)) < 1e-3
    explicit = fitted(variant)
    explicit.optimize_prior_precision(pred_type="glm", method="marglik",
                                      prior_structure="scalar", n_steps=200)
    torch.testing.assert_close(la.prior_precision, explicit.prior_precision)


def test_vector_init_prior_keeps_its_structure():
    la = fitted(("all", "full"))
    init = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=DT)  # one per parameter tensor
    la.optimize_prior_precision(init_prior_prec=init, n_steps=1, lr=1e-12)
    torch.testing.assert_close(la.prior_precision, init)


def test_gridsearch_uses_log_prior_prec_base():
    la = fitted(("all", "diag"))
    model, loader = problem()
    la.optimize_prior_precision(method="gridsearch", val_loader=loader, grid_size=3,
                                log_prior_prec_min=0, log_prior_prec_max=2,
                                log_prior_prec_base=2.0)
    assert float(la.prior_precision) in (1.0, 2.0, 4.0)


def test_gridsearch_skips_failing_grid_points():
    """24 residual rows for 32 parameters: the curvature is singular, so the grid point
    δ = 10⁻⁴⁰⁰ = 0 is not positive definite and scores inf; the others are used."""
    from laplace.posterior.tuning import gridsearch

    la = fitted(("all", "full"))
    _, loader = problem()
    grid, losses = gridsearch(la, "glm", loader, None, -400, 0, 3, "probit", 10)
    assert float(grid[0]) == 0.0 and losses[0] == float("inf")
    assert bool(torch.isfinite(losses[2]))
    assert float(la.prior_precision) == float(grid[int(losses.argmin())]) > 0


def test_marglik_warns_that_val_loader_is_ignored():
    la = fitted(("all", "diag"))
    _, loader = problem()
    with pytest.warns(UserWarning, match=r"`val_loader` will be ignored"):
        la.optimize_prior_precision(val_loader=loader, n_steps=1)
