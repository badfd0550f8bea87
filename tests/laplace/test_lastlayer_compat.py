"""Last-layer variants as in laplace-torch 0.3: the layer is found at ``fit`` by execution
order, nothing of the posterior's size exists before, ``feature_reduction`` pools every
middle dimension, the model's own output is the predictive mean, and
``functional_variance_fast`` gives the diagonal predictive."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.utils.feature_extractor import FeatureExtractor, reduce_features

DT = torch.float64
STRUCTURES = ("full", "kron", "diag")


class HeadFirst(nn.Module):
    """Registers its head before its body: registration order names the wrong layer."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.body = nn.Sequential(nn.Linear(3, 8), nn.Tanh())

    def forward(self, x):
        return self.head(self.body(x))


class AuxAfterHead(nn.Module):
    """An auxiliary ``nn.Linear`` runs after the head; its output is not returned."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
        self.head = nn.Linear(8, 2)
        self.aux = nn.Linear(8, 4)

    def forward(self, x):
        h = self.body(x)
        out = self.head(h)
        self.aux(h)
        return out


def regression_loader(n: int = 20, outputs: int = 2):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=g, dtype=DT)
    y = torch.stack([X.sin().sum(-1), X[:, 0] * X[:, 1]], -1)[:, :outputs]
    return DataLoader(TensorDataset(X, y), batch_size=8), X


def head_first(seed: int = 0) -> HeadFirst:
    torch.manual_seed(seed)
    return HeadFirst().to(DT)


# ------------------------------------------------------------ layer at fit
@pytest.mark.parametrize("structure", STRUCTURES)
def test_head_registered_before_body(structure):
    """The auto-found head gives the same posterior as naming it, and a per-parameter
    prior sized for the head is accepted at construction (checked at fit)."""
    loader, X = regression_loader()
    prior = torch.linspace(0.5, 2.0, 18, dtype=DT) if structure != "kron" else 1.5
    la = Laplace(head_first(), "regression", "last_layer", structure, prior_precision=prior,
                 sigma_noise=0.3)
    assert la.n_params is None and la.n_layers is None and la.mean is None and la.H is None
    la.fit(loader)
    assert la.model.last_layer is la.model.model.head and la.model.last_layer_name == "head"
    assert la.n_params == 18 and la.n_layers == 2
    named = Laplace(head_first(), "regression", "last_layer", structure, prior_precision=prior,
                    sigma_noise=0.3, last_layer_name="head")
    named.fit(loader)
    for a, b in zip(la(X[:5]), named(X[:5])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(la.log_marginal_likelihood(), named.log_marginal_likelihood())


def test_prior_length_checked_against_found_layer_at_fit():
    loader, _ = regression_loader()
    la = Laplace(head_first(), "regression", "last_layer", "diag",
                 prior_precision=torch.ones(32, dtype=DT))  # the body's Linear(3, 8) size
    assert la.prior_precision.shape == (32,)
    with pytest.raises(ValueError, match=r"prior_precision of shape \(32,\)"):
        la.fit(loader)
    la = Laplace(head_first(), "regression", "last_layer", "diag",
                 prior_mean=torch.zeros(7, dtype=DT))
    assert la.prior_mean.shape == (7,)
    with pytest.raises(ValueError, match=r"prior_mean of shape \(7,\) must be a scalar or a "
                       r"vector of one value per parameter \(18,\)"):
        la.fit(loader)


def test_deferred_prior_values_checked_at_construction():
    with pytest.raises(ValueError, match=r"prior_precision"):
        Laplace(head_first(), "regression", "last_layer", "full",
                prior_precision=torch.tensor([1.0, -1.0, 2.0], dtype=DT))
    with pytest.raises(ValueError, match=r"prior_precision"):
        Laplace(head_first(), "regression", "last_layer", "full",
                prior_precision=torch.tensor([1.0, float("nan"), 2.0], dtype=DT))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_named_last_layer_state_before_fit(structure):
    """laplace-torch: with ``last_layer_name`` the sizes are known and the mean is the
    prior mean (here the prior mean vector, as for every parametric LA, built on access);
    a prior of the wrong length fails at once."""
    la = Laplace(head_first(), "regression", "last_layer", structure, prior_mean=0.25,
                 last_layer_name="head")
    assert la.n_params == 18 and la.n_layers == 2 and la.__dict__["_H"] is None
    assert la.__dict__["_mean"] is None  # nothing of the posterior's size stored
    torch.testing.assert_close(la.mean, torch.full((18,), 0.25, dtype=DT), rtol=0, atol=0)
    if structure != "kron":  # the prior's zero curvature, allocated on first access
        shape = (18, 18) if structure == "full" else (18,)
        torch.testing.assert_close(la.H, torch.zeros(shape, dtype=DT), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"prior_precision of shape \(5,\)"):
        Laplace(head_first(), "regression", "last_layer", structure,
                prior_precision=torch.ones(5, dtype=DT), last_layer_name="head")


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("name", [None, "2"])
def test_large_head_constructs_without_posterior_storage(structure, name):
    """A 2048×1000 head (2,049,000 parameters): a dense posterior would hold 4·10¹²
    numbers. Construction allocates no tensor of the posterior's size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2048), nn.ReLU(), nn.Linear(2048, 1000))
    la = Laplace(model, "classification", "last_layer", structure, last_layer_name=name)
    P = 2048 * 1000 + 1000
    assert la.n_params == (None if name is None else P)
    tensors = [v for v in vars(la).values() if isinstance(v, torch.Tensor)]
    assert la.__dict__["_H"] is None and all(t.numel() < P for t in tensors)


def test_last_linear_whose_output_is_the_model_output():
    torch.manual_seed(0)
    model = AuxAfterHead().to(DT)
    loader, X = regression_loader()
    la = Laplace(model, "regression", "last_layer", "full")
    la.fit(loader)
    assert la.model.last_layer is model.head
    with torch.no_grad():
        torch.testing.assert_close(la(X[:3])[0], model(X[:3]))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_first_fit_without_override(structure):
    loader, X = regression_loader()
    a = Laplace(head_first(), "regression", "last_layer", structure)
    a.fit(loader, override=False)
    b = Laplace(head_first(), "regression", "last_layer", structure)
    b.fit(loader)
    for u, v in zip(a(X[:4]), b(X[:4])):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)


def test_state_dict_restores_found_layer_and_refuses_another():
    loader, X = regression_loader()
    la = Laplace(head_first(), "regression", "last_layer", "full")
    la.fit(loader)
    fresh = Laplace(head_first(), "regression", "last_layer", "full")
    fresh.load_state_dict(la.state_dict())
    assert fresh.model.last_layer_name == "head"
    for a, b in zip(la(X[:4]), fresh(X[:4])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    other = Laplace(head_first(), "regression", "last_layer", "full", last_layer_name="body.0")
    with pytest.raises(ValueError, match=r"saved for last layer 'head'.*'body.0'"):
        other.load_state_dict(la.state_dict())


def test_set_last_layer_keyword():
    model = head_first()
    fe = FeatureExtractor(model)
    assert fe.last_layer is None
    fe.set_last_layer(last_layer_name="head")
    assert fe.last_layer is model.head and fe.last_layer_name == "head"


# ------------------------------------------------- functional_variance_fast
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_functional_variance_fast(structure, likelihood):
    loader, X = regression_loader()
    if likelihood == "classification":
        loader = DataLoader(TensorDataset(X, (X[:, 0] > 0).long()), batch_size=8)
    la = Laplace(head_first(), likelihood, "last_layer", structure, prior_precision=0.7)
    la.fit(loader)
    f_mu, f_var = la.functional_variance_fast(X[:6])
    assert f_var.shape == (6, 2)
    with torch.no_grad():
        torch.testing.assert_close(f_mu, la.model.model(X[:6]))
    _, full = la._glm_predictive_distribution(X[:6])
    torch.testing.assert_close(f_var, full.diagonal(dim1=-2, dim2=-1), rtol=1e-12, atol=1e-14)
    _, diag = la._glm_predictive_distribution(X[:6], diagonal_output=True)
    torch.testing.assert_close(f_var, diag, rtol=1e-12, atol=1e-14)


# -------------------------------------------------------- feature reduction
def test_reduce_features_every_middle_dimension():
    phi = torch.randn(3, 7, 8, 5, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(reduce_features(phi, "pick_first"), phi[:, 0, 0])
    torch.testing.assert_close(reduce_features(phi, "pick_last"), phi[:, -1, -1])
    torch.testing.assert_close(reduce_features(phi, "average"), phi.mean(dim=(1, 2)))
    one = phi[:1]
    assert reduce_features(one, "average").shape == (1, 5)  # the batch stays


class GridModel(nn.Module):
    """Inputs ``(b, 7, 8, 3)`` → features ``(b, 7, 8, D)`` → head per cell → mean pool."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x))).mean(dim=(1, 2))


def head_jacobian(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``∂f/∂[vec_row(W), b]`` of the model's own forward: ``(n, K, K·D + K)``."""
    W, b = model.head.weight.detach(), model.head.bias.detach()
    K, D = W.shape

    def f(W_, b_):
        return functional_call(model, {"head.weight": W_, "head.bias": b_}, (X,))

    JW, Jb = jacrev(f, argnums=(0, 1))(W, b)
    return torch.cat([JW.reshape(len(X), K, K * D), Jb], dim=-1)


def test_feature_reduction_four_dimensional_features():
    torch.manual_seed(1)
    model = GridModel().to(DT)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(10, 7, 8, 3, generator=g, dtype=DT)
    y = torch.randn(10, 2, generator=g, dtype=DT)
    la = Laplace(model, "regression", "last_layer", "full", feature_reduction="average",
                 prior_precision=0.5)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=4))
    f_mu, f_var = la(X[:3])
    J = head_jacobian(model, X[:3])
    expected = J @ torch.linalg.inv(la.posterior_precision) @ J.transpose(-1, -2)
    torch.testing.assert_close(f_var, expected, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(f_mu, model(X[:3]))


# ---------------------------------------------- the model's own output (15)
VOCAB, SEQ = 9, 6


class LastTokenClassifier(nn.Module):
    """Pools the head's outputs at each sequence's last non-padding token (0 pads)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 5)
        self.body = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens):
        logits = self.head(torch.tanh(self.body(self.embed(tokens))))  # (b, s, K)
        last = (tokens != 0).sum(1) - 1
        return logits[torch.arange(len(tokens)), last]


def token_problem():
    torch.manual_seed(3)
    model = LastTokenClassifier().to(DT)
    g = torch.Generator().manual_seed(4)
    X = torch.randint(1, VOCAB, (16, SEQ), generator=g)
    lengths = torch.randint(2, SEQ + 1, (16,), generator=g)
    X[torch.arange(SEQ)[None] >= lengths[:, None]] = 0
    y = torch.randint(0, 3, (16,), generator=g)
    return model, DataLoader(TensorDataset(X, y), batch_size=6), X


@pytest.mark.parametrize("structure", STRUCTURES)
def test_reduction_at_another_position_uses_model_output(structure):
    """``pick_last`` takes the last (padding) position, the model its last real token:
    the mean is ``model(x)`` and the fit's output Hessians come from ``model(x)``; the
    Jacobian is the declared ``I ⊗ φ_lastᵀ``."""
    model, loader, X = token_problem()
    la = Laplace(model, "classification", "last_layer", structure, feature_reduction="pick_last")
    la.fit(loader)
    with torch.no_grad():
        f = model(X)
        phi = torch.tanh(model.body(model.embed(X)))[:, -1]  # the declared reduction
    f_mu, _ = la._glm_predictive_distribution(X)
    torch.testing.assert_close(f_mu, f, rtol=0, atol=0)
    p = torch.softmax(f, -1)
    Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    eye = torch.eye(3, dtype=DT)
    J = torch.cat([torch.einsum("kl,nd->nkld", eye, phi).reshape(16, 3, 12),
                   eye.expand(16, 3, 3)], dim=-1)
    ggn = torch.einsum("nkp,nkl,nlq->pq", J, Lam, J)
    if structure == "kron":  # KFAC: [Σ Λₙ, φᵀφ / N] and the bias block Σ Λₙ
        (B, A), (B_bias,) = la.H_facs.kfacs
        torch.testing.assert_close(B, Lam.sum(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(A, phi.T @ phi / 16, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(B_bias, Lam.sum(0), rtol=1e-10, atol=1e-12)
    else:
        H = la.H if structure == "full" else torch.diag(la.H)
        expected = ggn if structure == "full" else torch.diag(ggn.diagonal())
        torch.testing.assert_close(H, expected, rtol=1e-10, atol=1e-12)
    probs = la(X[:5], link_approx="probit")
    _, f_var = la._glm_predictive_distribution(X[:5])
    kappa = (1 + torch.pi / 8 * f_var.diagonal(dim1=-2, dim2=-1)).rsqrt()
    torch.testing.assert_close(probs, torch.softmax(kappa * f[:5], -1), rtol=1e-9, atol=1e-12)


def test_reduction_kron_empirical_fisher_uses_model_output():
    from laplace.curvature.torchfunc import TorchFuncEF

    model, loader, X = token_problem()
    la = Laplace(model, "classification", "last_layer", "kron", feature_reduction="pick_last",
                 backend=TorchFuncEF)
    la.fit(loader)
    y = loader.dataset.tensors[1]
    with torch.no_grad():
        g = torch.softmax(model(X), -1) - nn.functional.one_hot(y, 3).to(DT)
        phi = torch.tanh(model.body(model.embed(X)))[:, -1]
    (B, A), (B_bias,) = la.H_facs.kfacs
    torch.testing.assert_close(B, g.T @ g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(A, phi.T @ phi / 16, rtol=1e-10, atol=1e-12)


def test_unknown_feature_reduction_named():
    with pytest.raises(ValueError, match=r"Unknown feature_reduction 'max'; choose one of"):
        Laplace(head_first(), "regression", "last_layer", "full", feature_reduction="max")


def test_a_head_followed_by_squeeze_is_the_same_last_layer_posterior():
    """``head(φ).squeeze(-1)`` for ``(n,)`` regression targets (laplace-torch fits it): the
    output is the layer's, reshaped; every structure gives the unsqueezed model's numbers."""

    class Head(nn.Module):
        def __init__(self, squeeze: bool) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.squeeze = squeeze
            self.body = nn.Sequential(nn.Linear(2, 5), nn.Tanh())
            self.head = nn.Linear(5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.head(self.body(x))
            return out.squeeze(-1) if self.squeeze else out

    g = torch.Generator().manual_seed(3)
    X = torch.randn(20, 2, generator=g, dtype=torch.float64)
    y = torch.randn(20, generator=g, dtype=torch.float64)
    for structure in ("full", "kron", "diag"):
        las = []
        for squeeze, targets in ((True, y), (False, y[:, None])):
            la = Laplace(Head(squeeze).double(), "regression", "last_layer", structure)
            la.fit(DataLoader(TensorDataset(X, targets), batch_size=5))
            las.append(la)
        assert float(las[0].log_marginal_likelihood()) == float(
            las[1].log_marginal_likelihood())
        for a, b in zip(las[0](X[:3]), las[1](X[:3])):
            assert torch.equal(a, b)
