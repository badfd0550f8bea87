"""State and predictions before ``fit`` (laplace-torch 0.3), float64.

* Every parametric variant starts at the prior: ``mean`` is the prior mean (for
  subnetworks ``mean`` has all ``P`` entries: the subnetwork ones at the prior mean, the
  others at their MAP values; ``mean_subnet`` is the prior mean).
* A last-layer LA whose layer is named (``last_layer_name``) is the prior before ``fit``;
  one whose layer is found at ``fit`` has ``mean``, ``H`` and ``n_params`` ``None`` and
  raises ``NotFittedError`` when asked to predict (laplace-torch's state).
* ``KronLaplace.H`` is an all-zero ``Kron`` with the parameters' factor shapes.
* Full and diagonal structures predict with the prior before ``fit``: the GLM
  predictive covariance is ``J diag(1/δ) Jᵀ``; Kronecker and low-rank posteriors raise
  ``NotFittedError`` (an ``AttributeError``, laplace-torch's type), except that a
  Kronecker posterior's density (``log_prob``, ``square_norm``,
  ``log_det_posterior_precision``) is the prior's, laplace-torch's fallback.
* ``LowRankLaplace.V`` and ``.Kinv`` give the Woodbury form of the covariance.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.curvature import TorchFuncGGN
from laplace.precision import NotFittedError
from laplace.utils.matrix import Kron

DT = torch.float64
SUBNET = torch.tensor([0, 3, 7, 20, 25])
VARIANTS = [("all", s) for s in ("full", "diag", "kron", "lowrank")] + [
    ("last_layer", s) for s in ("full", "diag", "kron")] + [
    ("subnetwork", s) for s in ("full", "diag")]


def mlp(K: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, K)).to(DT)  # P = 26 (K=2)


def make(subset: str, structure: str, likelihood: str = "regression", K: int = 2, **kwargs):
    if subset == "subnetwork":
        kwargs["subnetwork_indices"] = SUBNET
    if subset == "last_layer":
        kwargs.setdefault("last_layer_name", "2")  # known before fit: the prior's state
    return Laplace(mlp(K), likelihood, subset_of_weights=subset, hessian_structure=structure,
                   **kwargs)


def query(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(3), dtype=DT)


@pytest.mark.parametrize("subset,structure", VARIANTS)
def test_mean_is_the_prior_mean(subset, structure):
    la = make(subset, structure, prior_mean=0.25)
    dim = {"all": 26, "last_layer": 10, "subnetwork": 5}[subset]
    posterior_mean = la.mean_subnet if subset == "subnetwork" else la.mean
    assert posterior_mean.shape == (dim,)
    assert torch.equal(posterior_mean, torch.full((dim,), 0.25, dtype=DT))
    vector_prior = torch.linspace(-1, 1, dim, dtype=DT)
    la = make(subset, structure, prior_mean=vector_prior)
    posterior_mean = la.mean_subnet if subset == "subnetwork" else la.mean
    assert torch.equal(posterior_mean, vector_prior)
    assert torch.allclose(posterior_mean, la.prior_mean)  # laplace-torch's own check
    if subset == "subnetwork":  # all P entries, the others at their MAP values
        theta = torch.cat([p.detach().flatten() for p in la.model.parameters()])
        fixed = torch.ones(26, dtype=torch.bool)
        fixed[SUBNET] = False
        assert la.mean.shape == (26,)
        assert torch.equal(la.mean[fixed], theta[fixed])


@pytest.mark.parametrize("subset,structure", VARIANTS)
def test_mean_follows_a_prior_mean_assigned_before_fit(subset, structure):
    """The posterior before data is the prior, whichever order the prior is set in;
    after ``fit`` the mean is the MAP and a new prior mean leaves it alone."""
    la = make(subset, structure)
    la.prior_mean = 0.5
    posterior_mean = la.mean_subnet if subset == "subnetwork" else la.mean
    assert torch.equal(posterior_mean, torch.full_like(posterior_mean, 0.5))
    X = query(8)
    la.fit(DataLoader(TensorDataset(X, X[:, :2].sin()), batch_size=4))
    fitted_mean = la.mean.clone()
    la.prior_mean = -1.0
    assert torch.equal(la.mean, fitted_mean)


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_last_layer_found_at_fit_is_unknown_before(structure):
    """laplace-torch: without ``last_layer_name`` nothing is known before ``fit``;
    predicting raises ``NotFittedError`` naming the remedy; ``fit`` gives the state."""
    la = make("last_layer", structure, last_layer_name=None, prior_mean=0.25)
    assert la.mean is None and la.H is None and la.n_params is None
    for call in (lambda: la(query()), lambda: la.sample(3), lambda: la.posterior_precision):
        with pytest.raises(NotFittedError, match=r"is not fitted: call fit.*last_layer_name"):
            call()
    X = query(8)
    la.fit(DataLoader(TensorDataset(X, X[:, :2].sin()), batch_size=4))
    assert la.n_params == 10 and la.mean.shape == (10,)
    assert torch.equal(la.mean, torch.cat([p.detach().flatten() for p in la.model.last_layer
                                           .parameters()]))


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_kron_H_is_zero_kron_with_the_factor_shapes(subset):
    la = make(subset, "kron")
    assert type(la.H) is Kron and la.H_facs is None
    shapes = [[tuple(f.shape) for f in F] for F in la.H.kfacs]
    expected = {"all": [[(4, 4), (3, 3)], [(4, 4)], [(2, 2), (4, 4)], [(2, 2)]],
                "last_layer": [[(2, 2), (4, 4)], [(2, 2)]]}[subset]
    assert shapes == expected
    assert all(bool((f == 0).all()) and f.dtype == DT for F in la.H.kfacs for f in F)
    la._init_H()  # as laplace-torch's test re-initialises it
    assert [[tuple(f.shape) for f in F] for F in la.H.kfacs] == expected


def _prior_predictive(la, X: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``J diag(1/δ) Jᵀ`` with the Jacobians of the posterior's parameters."""
    Js, _ = la.backend.jacobians(X)
    return torch.einsum("nkp,p,nlp->nkl", Js, prior.reciprocal(), Js)


@pytest.mark.parametrize("subset,structure", [v for v in VARIANTS
                                              if v[1] in ("full", "diag")])
def test_full_and_diag_predict_the_prior_before_fit(subset, structure):
    dim = {"all": 26, "last_layer": 10, "subnetwork": 5}[subset]
    prior = torch.linspace(0.5, 2.0, dim, dtype=DT)
    la = make(subset, structure, prior_precision=prior, sigma_noise=0.3)
    X = query()
    f_mu, f_var = la(X)
    with torch.no_grad():
        assert torch.allclose(f_mu, la.model(X))
    expected = _prior_predictive(la, X, prior)
    assert f_var.shape == (5, 2, 2)
    assert torch.allclose(f_var, expected, rtol=1e-12, atol=1e-14)
    _, f_var_joint = la(X, joint=True)
    Js, _ = la.backend.jacobians(X)
    J = Js.reshape(-1, dim)
    assert torch.allclose(f_var_joint, J @ torch.diag(prior.reciprocal()) @ J.T, rtol=1e-12)
    assert torch.allclose(la.posterior_variance, prior.reciprocal(), rtol=1e-12)
    samples = la.sample(4000, generator=torch.Generator().manual_seed(0))
    if subset == "subnetwork":  # full-network samples, the others at their MAP values
        assert samples.shape == (4000, 26)
        fixed = torch.ones(26, dtype=torch.bool)
        fixed[SUBNET] = False
        assert torch.equal(samples[:, fixed], la.mean[fixed].expand(4000, -1))
        samples = samples[:, SUBNET]
    assert samples.shape == (4000, dim)
    assert torch.allclose(samples.var(0), prior.reciprocal(), rtol=0.1)


def test_prior_predictive_for_classification():
    la = make("all", "diag", likelihood="classification", K=3, prior_precision=2.0)
    X = query()
    probs = la(X, link_approx="probit")
    f = la.model(X).detach()
    var = _prior_predictive(la, X, torch.full((31,), 2.0, dtype=DT)).diagonal(dim1=-2, dim2=-1)
    expected = torch.softmax(f / (1 + torch.pi / 8 * var).sqrt(), dim=-1)
    assert torch.allclose(probs, expected, rtol=1e-12)


@pytest.mark.parametrize("subset,structure", [("all", "kron"), ("last_layer", "kron"),
                                              ("all", "lowrank")])
def test_kron_and_lowrank_raise_before_fit(subset, structure):
    la = make(subset, structure)
    name = type(la).__name__
    for call in (lambda: la(query()), lambda: la.sample(3), lambda: la.posterior_precision,
                 lambda: la.functional_variance(torch.zeros(1, 2, la.mean.numel(), dtype=DT))):
        with pytest.raises(AttributeError, match=rf"{name} is not fitted: call fit"):
            call()
    assert issubclass(NotFittedError, ValueError)


@pytest.mark.parametrize("subset,dim", [("all", 26), ("last_layer", 10)])
@pytest.mark.parametrize("layerwise", [False, True])
def test_kron_density_is_the_prior_before_fit(subset, dim, layerwise):
    """laplace-torch's fallback: ``log_prob``, ``square_norm`` and
    ``log_det_posterior_precision`` of an unfitted Kronecker posterior are the prior's,
    ``N(mean, diag(1/δ))`` (everything else raises, above)."""
    prior = torch.tensor([0.5, 2.0, 0.7, 1.5], dtype=DT)[-2 if subset == "last_layer" else 0:]
    la = make(subset, "kron", prior_precision=prior if layerwise else 0.24)
    delta = la.prior_precision_diag
    assert delta.shape == (dim,)
    theta = torch.randn(3, dim, generator=torch.Generator().manual_seed(1), dtype=DT)
    reference = torch.distributions.Normal(la.mean, delta.rsqrt()).log_prob(theta).sum(-1)
    assert torch.allclose(la.log_prob(theta), reference, rtol=1e-12)
    assert torch.allclose(la.square_norm(theta), ((theta - la.mean) ** 2 * delta).sum(-1),
                          rtol=1e-12)
    assert torch.allclose(la.log_det_posterior_precision, delta.log().sum(), rtol=1e-12)
    assert la.log_prob(theta, normalized=False).shape == (3,)


def test_lowrank_V_and_Kinv():
    torch.manual_seed(1)
    X = torch.randn(30, 3, dtype=DT)
    y = torch.randn(30, 2, dtype=DT)
    la = make("all", "lowrank", n_eigenvalues=5, sigma_noise=0.7,
              prior_precision=torch.linspace(0.5, 1.5, 26, dtype=DT))
    la.fit(DataLoader(TensorDataset(X, y), batch_size=10))
    (U, eigvals), prior = la.posterior_precision
    V, Kinv = la.V, la.Kinv
    assert V.shape == (26, 5) and Kinv.shape == (5, 5)
    assert torch.allclose(V, torch.diag(prior.reciprocal()) @ U, rtol=1e-12)
    precision = U @ torch.diag(eigvals) @ U.T + torch.diag(prior)
    woodbury = torch.diag(prior.reciprocal()) - V @ Kinv @ V.T
    assert torch.allclose(woodbury, torch.linalg.inv(precision), rtol=1e-9, atol=1e-12)
    assert type(la.backend) is TorchFuncGGN
