"""``likelihood="reward_modeling"`` and last-layer ``feature_reduction`` for sequence models.

Reward modeling fits like classification (same loss and curvature) but predicts like
regression: ``la(x)`` returns the latent ``(f_mu, f_var)``; only ``fitting=True`` (used
by validation during tuning) gives class probabilities.

Feature reduction: a tiny token model ``Embedding → Linear → tanh`` gives features
``(batch, seq, D)``; its ``Linear`` head runs on every token and the model's own forward
pools the head's output the same way (``pick_first``, ``pick_last`` or ``average`` —
for an affine head pooling outputs equals the head on pooled features), as Hugging Face
sequence classifiers do. The LA's mean must equal the model output, and its variance
``J Σ Jᵀ`` with ``J`` the head-parameter Jacobian of the model's own forward
(``torch.func.jacrev``), its curvature ``Σₙ Jₙᵀ Λₙ Jₙ``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.utils import FeatureReduction, RunningNLLMetric, validate

torch.set_num_threads(1)
DT = torch.float64


# ----------------------------------------------------------- reward modeling
def reward_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(DT)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=g, dtype=DT)
    y = torch.randint(0, 2, (40,), generator=g)
    return model, DataLoader(TensorDataset(X, y), batch_size=16), X


def dense_precision(la) -> torch.Tensor:
    """``posterior_precision`` as a matrix: dense (full), ``KronDecomposed`` (kron) or
    the diagonal vector (diag), as in laplace-torch."""
    P = la.posterior_precision
    if hasattr(P, "to_matrix"):
        return P.to_matrix()
    return torch.diag(P) if P.ndim == 1 else P


STRUCTURES = [(s, h) for s in ("all", "last_layer") for h in ("full", "kron", "diag")]


@pytest.mark.parametrize("subset,structure", STRUCTURES, ids=["-".join(c) for c in STRUCTURES])
def test_reward_modeling_fits_as_classification_predicts_as_regression(subset, structure):
    model, loader, X = reward_problem()
    rm = Laplace(model, "reward_modeling", subset, structure, prior_precision=0.7)
    cls = Laplace(model, "classification", subset, structure, prior_precision=0.7)
    rm.fit(loader)
    cls.fit(loader)
    # fitting: classification loss and curvature
    assert rm.loss.item() == pytest.approx(cls.loss.item(), rel=1e-14)
    torch.testing.assert_close(dense_precision(rm), dense_precision(cls), rtol=1e-13,
                               atol=1e-13)
    assert rm.log_marginal_likelihood().item() == pytest.approx(
        cls.log_marginal_likelihood().item(), rel=1e-12)
    # prediction: regression-style latent Gaussian
    x = X[:5]
    f_mu, f_var = rm(x)
    mu_c, var_c = cls._glm_predictive_distribution(x)
    assert f_mu.shape == (5, 2) and f_var.shape == (5, 2, 2)
    torch.testing.assert_close(f_mu, mu_c, rtol=0, atol=0)
    torch.testing.assert_close(f_var, var_c, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(f_mu, model(x), rtol=1e-12, atol=1e-12)
    _, f_diag = rm(x, diagonal_output=True)
    torch.testing.assert_close(f_diag, var_c.diagonal(dim1=-2, dim2=-1), rtol=1e-13, atol=0)
    joint_mu, joint_cov = rm(x, joint=True)
    assert joint_mu.shape == (10,) and joint_cov.shape == (10, 10)
    torch.testing.assert_close(joint_cov.reshape(5, 2, 5, 2).diagonal(dim1=0, dim2=2)
                               .permute(2, 0, 1), var_c, rtol=1e-12, atol=1e-14)
    # fitting=True: class probabilities, identical to the classification LA
    for link in ("probit", "bridge"):
        torch.testing.assert_close(rm(x, link_approx=link, fitting=True),
                                   cls(x, link_approx=link), rtol=0, atol=0)


def test_reward_modeling_nn_predictive_is_regression_style():
    model, loader, X = reward_problem()
    rm = Laplace(model, "reward_modeling", "last_layer", "full")
    cls = Laplace(model, "classification", "last_layer", "full")
    rm.fit(loader)
    cls.fit(loader)
    x = X[:4]
    mean, var = rm(x, pred_type="nn", n_samples=50, generator=torch.Generator().manual_seed(3))
    samples = cls._nn_samples(x, 50, torch.Generator().manual_seed(3))
    torch.testing.assert_close(mean, samples.mean(0), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(var, samples.var(0), rtol=1e-13, atol=1e-14)
    probs = rm(x, pred_type="nn", link_approx="mc", n_samples=50, fitting=True,
               generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(probs, torch.softmax(samples, -1).mean(0), rtol=1e-13, atol=0)


def test_reward_modeling_validate_uses_class_probabilities():
    model, loader, _ = reward_problem()
    rm = Laplace(model, "reward_modeling", "last_layer", "kron")
    cls = Laplace(model, "classification", "last_layer", "kron")
    rm.fit(loader)
    cls.fit(loader)
    got = validate(rm, loader, RunningNLLMetric())
    assert got == pytest.approx(validate(cls, loader, RunningNLLMetric()), rel=1e-13)


def test_reward_modeling_gridsearch_tunes_like_classification():
    model, loader, _ = reward_problem()
    rm = Laplace(model, "reward_modeling", "last_layer", "kron")
    cls = Laplace(model, "classification", "last_layer", "kron")
    for la in (rm, cls):
        la.fit(loader)
        la.optimize_prior_precision(method="gridsearch", val_loader=loader, grid_size=5)
    assert rm.prior_precision.item() == pytest.approx(cls.prior_precision.item())


# -------------------------------------------------------- feature reduction
VOCAB, EMB, D, K, SEQ = 11, 5, 4, 3, 6


def pool(t: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "pick_first":
        return t[:, 0]
    if reduction == "pick_last":
        return t[:, -1]
    return t.mean(dim=1)


class TokenClassifier(nn.Module):
    """Embedding → Linear → tanh features ``(b, s, D)``; head per token; pooled output."""

    def __init__(self, reduction: str) -> None:
        super().__init__()
        self.reduction = reduction
        self.embed = nn.Embedding(VOCAB, EMB)
        self.body = nn.Linear(EMB, D)
        self.head = nn.Linear(D, K)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return pool(self.head(torch.tanh(self.body(self.embed(tokens)))), self.reduction)


def token_problem(reduction: str):
    torch.manual_seed(2)
    model = TokenClassifier(reduction).to(DT)
    g = torch.Generator().manual_seed(4)
    X = torch.randint(0, VOCAB, (24, SEQ), generator=g)
    y = torch.randint(0, K, (24,), generator=g)
    return model, DataLoader(TensorDataset(X, y), batch_size=10), X, y


def head_jacobian(model: TokenClassifier, X: torch.Tensor) -> torch.Tensor:
    """``∂f/∂[vec_row(W), b]`` of the model's own forward: ``(n, K, K·D + K)``."""
    W, b = model.head.weight.detach(), model.head.bias.detach()

    def f(W_, b_):
        return functional_call(model, {"head.weight": W_, "head.bias": b_}, (X,))

    JW, Jb = jacrev(f, argnums=(0, 1))(W, b)
    return torch.cat([JW.reshape(len(X), K, K * D), Jb], dim=-1)


REDUCTIONS = [r.value for r in FeatureReduction]
CASES = [(r, h) for r in REDUCTIONS for h in ("full", "kron", "diag")]


@pytest.mark.parametrize("reduction,structure", CASES, ids=["-".join(c) for c in CASES])
def test_feature_reduction_last_layer_predictive(reduction, structure):
    model, loader, X, y = token_problem(reduction)
    la = Laplace(model, "classification", "last_layer", structure, prior_precision=0.5,
                 feature_reduction=reduction)
    la.fit(loader)
    assert la.model.last_layer is model.head and la.n_params == K * D + K
    x = X[:7]
    f_mu, f_var = la._glm_predictive_distribution(x)
    with torch.no_grad():
        torch.testing.assert_close(f_mu, model(x), rtol=1e-12, atol=1e-12)
    J = head_jacobian(model, x)
    Sigma = torch.linalg.inv(dense_precision(la))
    expected = J @ Sigma @ J.transpose(-1, -2)
    torch.testing.assert_close(f_var, expected, rtol=1e-9, atol=1e-12)
    # the curvature is the GGN Σₙ Jₙᵀ (diag p − p pᵀ) Jₙ of the reduced model
    with torch.no_grad():
        p = torch.softmax(model(X), -1)
    Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    J_all = head_jacobian(model, X)
    ggn = torch.einsum("nkp,nkl,nlq->pq", J_all, Lam, J_all)
    if structure == "full":
        torch.testing.assert_close(la.H, ggn, rtol=1e-10, atol=1e-12)
    elif structure == "diag":
        torch.testing.assert_close(la.H, ggn.diagonal(), rtol=1e-10, atol=1e-12)
    # the classification predictive is probit on exactly these moments
    probs = la(x, link_approx="probit")
    kappa = (1 + torch.pi / 8 * expected.diagonal(dim1=-2, dim2=-1)).rsqrt()
    torch.testing.assert_close(probs, torch.softmax(kappa * f_mu, -1), rtol=1e-9, atol=1e-12)


def test_feature_reduction_variants_differ_and_are_needed():
    """Pooled features are what the head sees: different reductions, different LAs;
    without ``feature_reduction`` the token-level features do not give the output."""
    variances = {}
    for reduction in REDUCTIONS:
        model, loader, X, _ = token_problem(reduction)
        la = Laplace(model, "classification", "last_layer", "full",
                     feature_reduction=FeatureReduction(reduction))
        la.fit(loader)
        variances[reduction] = la._glm_predictive_distribution(X[:4])[1]
    assert not torch.allclose(variances["pick_first"], variances["pick_last"])
    assert not torch.allclose(variances["pick_last"], variances["average"])
    model, loader, _, _ = token_problem("average")
    with pytest.raises(ValueError, match="not the output of its last layer"):
        Laplace(model, "classification", "last_layer", "full").fit(loader)


def test_feature_reduction_nn_predictive_matches_weight_samples():
    model, loader, X, _ = token_problem("pick_last")
    la = Laplace(model, "classification", "last_layer", "kron", feature_reduction="pick_last")
    la.fit(loader)
    x = X[:3]
    thetas = la.sample(20, generator=torch.Generator().manual_seed(5))
    outs = []
    for theta in thetas:
        W, b = theta[: K * D].reshape(K, D), theta[K * D:]
        with torch.no_grad():
            outs.append(functional_call(model, {"head.weight": W, "head.bias": b}, (x,)))
    expected = torch.softmax(torch.stack(outs), -1).mean(0)
    got = la(x, pred_type="nn", link_approx="mc", n_samples=20,
             generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
