"""Classification predictives and fits at their edges, and laplace-torch's behaviour there.

The Laplace bridge is checked against its formula evaluated row by row in float64
(``α_k = (1 − 2/C + e^{f_k} Σ_l e^{−f_l} / C²) / Σ_kk`` after the zero-sum projection),
the predictive's gradients against finite differences, and ASDL's curvature of a layer
that sees a sequence against the native (exact) route.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.curvature import AsdlEF, AsdlGGN, TorchFuncEF, TorchFuncGGN
from laplace.marglik_training import marglik_training
from laplace.predictive import links
from laplace.utils import RunningNLLMetric

torch.set_num_threads(1)
DT = torch.float64


def classifier(classes: int = 3, dtype: torch.dtype = DT) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, classes)).to(dtype)


def loader(n: int = 24, classes: int = 3, dtype: torch.dtype = DT,
           label_dtype: torch.dtype = torch.long) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 2, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g).to(label_dtype)
    return DataLoader(TensorDataset(X, y), batch_size=8)


def fitted(structure: str = "full", subset: str = "all", **kwargs) -> Laplace:
    la = Laplace(classifier(), "classification", subset, structure, **kwargs)
    la.fit(loader())
    return la


# ------------------------------------------------------------------ the bridge
def bridge_reference(f_mu: torch.Tensor, f_var: torch.Tensor) -> torch.Tensor:
    """The bridge's Dirichlet mean, row by row, by its formula in float64."""
    rows = []
    for mu, S in zip(f_mu.double(), f_var.double()):
        s, t = S.sum(-1), S.sum()
        mu = mu - s * mu.sum() / t
        S = S - torch.outer(s, S.sum(0)) / t
        C = len(mu)
        alpha = torch.stack([(1 - 2 / C + math.exp(mu[k]) * torch.exp(-mu).sum() / C**2)
                             / S[k, k] for k in range(C)])
        rows.append(alpha / alpha.sum())
    return torch.stack(rows)


def random_covariances(n: int, C: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    A = torch.randn(n, C, C, generator=g, dtype=DT)
    return scale * (A @ A.mT + 0.1 * torch.eye(C, dtype=DT))


def test_bridge_equals_its_formula():
    g = torch.Generator().manual_seed(3)
    f_mu = 3 * torch.randn(5, 4, generator=g, dtype=DT)
    f_var = random_covariances(5, 4, 0.5)
    for normalize in (False, True):
        got = links.bridge(f_mu, f_var, normalize=normalize)
        assert torch.allclose(got.sum(-1), torch.ones(5, dtype=DT))
    assert torch.allclose(links.bridge(f_mu, f_var), bridge_reference(f_mu, f_var),
                          rtol=1e-10, atol=1e-14)


def test_bridge_in_float32_with_logits_that_overflow_exp():
    """Logits spanning ~180: e^{f_k} Σ_l e^{−f_l} overflows float32 (rows of ones before)."""
    f_mu = torch.tensor([[74.0, 106.8, -68.1, -20.7], [241.3, 151.8, -96.8, 15.2]])
    f_var = random_covariances(2, 4, 2.0)
    for normalize in (False, True):
        single = links.bridge(f_mu, f_var.float(), normalize=normalize)
        double = links.bridge(f_mu.double(), f_var, normalize=normalize)
        assert single.dtype == torch.float32
        assert torch.allclose(single.sum(-1), torch.ones(2))
        assert torch.allclose(single.double(), double, atol=1e-6)
    assert torch.allclose(links.bridge(f_mu.double(), f_var),
                          bridge_reference(f_mu, f_var), rtol=1e-8, atol=1e-300)


def test_bridge_without_variance_is_the_softmax():
    f_mu = torch.tensor([[0.3, -0.1, -0.5], [1.0, 2.0, 3.0]], dtype=DT)
    f_var = torch.zeros(2, 3, 3, dtype=DT)
    f_var[1] = random_covariances(1, 3, 1.0)[0]
    for normalize in (False, True):
        got = links.bridge(f_mu, f_var, normalize=normalize)
        assert torch.allclose(got[0], torch.softmax(f_mu[0], -1), rtol=1e-14)
        assert torch.allclose(got[1], links.bridge(f_mu[1:], f_var[1:], normalize)[0])


# --------------------------------------------------------- non-finite outputs
class SquareRoot(nn.Module):
    """Finite on x ≥ 0 only."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 3).to(DT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.sqrt())


def test_nan_outputs_at_finite_inputs_are_named_at_fit_and_prediction():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(8, 2, generator=g, dtype=DT)
    y = torch.randint(0, 3, (8,), generator=g)
    for structure in ("full", "kron", "diag"):
        la = Laplace(SquareRoot(), "classification", "all", structure)
        with pytest.raises(ValueError, match="Batch 0: the loss is nan"):
            la.fit(DataLoader(TensorDataset(-X, y), batch_size=8))
    la = Laplace(SquareRoot(), "classification", "all", "full")
    la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
    for link in ("probit", "bridge", "bridge_norm", "mc"):
        with pytest.raises(ValueError, match="output at x contains NaN or inf"):
            la(-X, link_approx=link)
    with pytest.raises(ValueError, match="NaN or inf"):
        la(-X, pred_type="nn", link_approx="mc", n_samples=3)


# ------------------------------------------------------------------ labels
def test_integer_labels_of_any_width_fit_as_long_labels():
    reference = Laplace(classifier(), "classification", "all", "full")
    reference.fit(loader())
    for dtype in (torch.int32, torch.int16, torch.uint8):
        la = Laplace(classifier(), "classification", "all", "full")
        la.fit(loader(label_dtype=dtype))
        assert torch.equal(la.H, reference.H) and la.loss == reference.loss
    with pytest.raises(ValueError, match="torch.bool"):
        Laplace(classifier(2), "classification").fit(
            loader(classes=2, label_dtype=torch.bool))


def test_a_single_logit_is_refused():
    for subset, structure in (("all", "full"), ("last_layer", "kron"), ("all", "gp")):
        extra = {"n_subset": 8} if structure == "gp" else {}
        la = Laplace(classifier(1), "classification", subset, structure, **extra)
        with pytest.raises(ValueError, match="one logit per class"):
            la.fit(loader(classes=1))


def test_one_hot_validation_targets_are_named():
    metric = RunningNLLMetric()
    with pytest.raises(ValueError, match=r"one-hot targets are not class labels"):
        metric.update(torch.full((8, 4), 0.25), torch.eye(4)[torch.arange(8) % 4])


# --------------------------------------------------- laplace-torch's argument rules
def test_the_nn_predictive_of_a_classifier_needs_the_mc_link():
    la = fitted()
    X = torch.randn(4, 2, dtype=DT)
    for link in ("probit", "bridge", "bridge_norm"):
        with pytest.raises(ValueError, match="Only mc link approximation"):
            la(X, pred_type="nn", link_approx=link)
    probs = la(X, pred_type="nn", link_approx="mc", n_samples=5)
    assert torch.allclose(probs.sum(-1), torch.ones(4, dtype=DT))


@pytest.mark.parametrize("generator", [3, "seed", torch.Generator().manual_seed(0).seed()])
def test_a_generator_that_is_not_one_is_named(generator):
    la = fitted()
    X = torch.randn(4, 2, dtype=DT)
    calls = [lambda: la(X, link_approx="mc", generator=generator),
             lambda: la.sample(3, generator=generator),
             lambda: la.predictive_samples(X, n_samples=3, generator=generator)]
    for call in calls:
        with pytest.raises(ValueError, match="Invalid random generator"):
            call()


# --------------------------------------------------------- autograd in predictions
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_nn_predictive_is_differentiable_in_x_with_enable_backprop(subset):
    la = fitted("full", subset, enable_backprop=True)
    X = torch.randn(3, 2, dtype=DT)

    def mean_prob(x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(7)
        return la(x, pred_type="nn", link_approx="mc", n_samples=4, generator=g)[:, 0].sum()

    x = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mean_prob(x), x)
    h = 1e-6
    fd = torch.zeros_like(X)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            e = torch.zeros_like(X)
            e[i, j] = h
            fd[i, j] = (mean_prob(X + e) - mean_prob(X - e)) / (2 * h)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_predictions_are_detached_without_enable_backprop(subset):
    """A loop that tunes the prior precision by autograd leaves it requiring grad:
    laplace-torch's predictions are plain tensors nevertheless (its regression example
    calls ``.numpy()`` on them)."""
    la = fitted("full", subset)
    la.prior_precision = torch.tensor(1.0, dtype=DT, requires_grad=True)
    x = torch.randn(3, 2, dtype=DT, requires_grad=True)
    for out in (la(x), la(x, link_approx="bridge"), la(x, pred_type="nn", link_approx="mc",
                                                       n_samples=3)):
        assert not out.requires_grad
    la.enable_backprop = True
    assert la(x).requires_grad


# ---------------------------------------------------------- ASDL and sequences
class SequenceClassifier(nn.Module):
    """``Linear`` layers on every position of ``(n, T, d)``, then the mean over positions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = nn.Linear(3, 4).to(DT), nn.Linear(4, 2).to(DT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x))).mean(1)


@pytest.mark.parametrize(("asdl", "native", "structure"), [
    (AsdlGGN, TorchFuncGGN, "diag"), (AsdlEF, TorchFuncEF, "diag"),
    (AsdlEF, TorchFuncEF, "full")])
def test_asdl_on_a_sequence_gives_the_exact_curvature(asdl, native, structure):
    """ASDL's diagonal (and its full EF) of a ``Linear`` that sees ``T`` positions sums
    per-position squares (up to 75% off here); the native route is computed instead."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(10, 4, 3, generator=g, dtype=DT)
    y = torch.randint(0, 2, (10,), generator=g)
    data = DataLoader(TensorDataset(X, y), batch_size=5)
    exact = Laplace(SequenceClassifier(), "classification", "all", structure, backend=native)
    exact.fit(data)
    la = Laplace(SequenceClassifier(), "classification", "all", structure, backend=asdl)
    with pytest.warns(UserWarning, match="cross-position terms"):
        la.fit(data)
    assert torch.allclose(la.H, exact.H, rtol=1e-10, atol=1e-12)


def test_asdl_without_a_sequence_does_not_warn():
    la = Laplace(classifier(), "classification", "all", "diag", backend=AsdlGGN)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        la.fit(loader())
    exact = Laplace(classifier(), "classification", "all", "diag", backend=TorchFuncGGN)
    exact.fit(loader())
    assert torch.allclose(la.H, exact.H, rtol=1e-10)


# ------------------------------------------------------- marglik_training rewards
def test_marglik_training_of_a_reward_model():
    """laplace-torch trains a reward model like a classifier of the preference: the
    same run as ``"classification"`` on the same (batch, 2) outputs, then a reward-model
    LA (which predicts the reward as regression)."""
    results = {}
    for likelihood in ("reward_modeling", "classification"):
        la, model, margliks, losses = marglik_training(
            classifier(2), loader(classes=2), likelihood=likelihood, n_epochs=3,
            n_epochs_burnin=1, n_hypersteps=5)
        results[likelihood] = (la, margliks, losses)
    rm, cls = results["reward_modeling"], results["classification"]
    assert rm[0].likelihood == "reward_modeling"
    assert rm[1] == pytest.approx(cls[1], rel=1e-10)
    assert rm[2] == pytest.approx(cls[2], rel=1e-10)
    mean, var = rm[0](torch.randn(4, 2, dtype=DT))
    assert mean.shape == (4, 2) and bool((var.diagonal(dim1=-2, dim2=-1) > 0).all())
