"""``laplace.utils.utils`` and ``laplace.utils.metrics`` against real values.

Linear algebra against dense references, sampling moments, the subset-of-data draw
against the fixtures' ``sod_indices``, and ``validate`` against a hand computation and
the fixtures' grid-search losses (``diagnostic_per_point_loss``: a fresh metric per grid
point; ``trace``: one metric never reset, laplace-torch's quirk 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import laplace.utils as U
from laplace import Laplace
from laplace.utils import metrics, parameters
from laplace.utils import utils as UU
from laplace.utils.metrics import RunningNLLMetric, get_nll, validate
from laplace.utils.utils import (
    SoDSampler,
    _is_batchnorm,
    _is_valid_scalar,
    block_diag,
    diagonal_add_scalar,
    invsqrt_precision,
    kron,
    normal_samples,
    symeig,
)
from tests.laplace import reference as R
from tests.laplace.test_reference_parity import close

torch.set_num_threads(1)
DT = torch.float64


def spd(n: int, seed: int = 0, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, n, n, generator=g, dtype=DT)
    return A @ A.transpose(-1, -2) + 0.5 * torch.eye(n, dtype=DT)


# ----------------------------------------------------------------- exports
def test_single_definitions_reexported():
    assert UU.get_nll is metrics.get_nll is U.get_nll
    assert UU.validate is metrics.validate is U.validate
    assert UU.RunningNLLMetric is metrics.RunningNLLMetric is U.RunningNLLMetric
    assert UU.expand_prior_precision is parameters.expand_prior_precision
    assert UU.fix_prior_prec_structure is parameters.fix_prior_prec_structure
    assert UU.parameters_per_layer is parameters.parameters_per_layer
    for name in ("SoDSampler", "kron", "normal_samples", "symeig", "invsqrt_precision"):
        assert getattr(U, name) is getattr(UU, name)


def test_parameters_per_layer_and_expand_prior_precision():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert UU.parameters_per_layer(model) == [12, 4, 8, 2]
    prior = UU.expand_prior_precision(torch.tensor([1.0, 2.0, 3.0, 4.0]), model)
    assert torch.equal(prior, torch.tensor([1.0] * 12 + [2.0] * 4 + [3.0] * 8 + [4.0] * 2))
    assert torch.equal(UU.fix_prior_prec_structure(0.5, "layerwise", 4, 26), torch.full((4,), 0.5))
    assert torch.equal(UU.expand_prior_precision(torch.tensor(2.0), model), torch.full((26,), 2.0))
    # a (1, 4) or (4, 1) tensor is no vector (laplace-torch asserts ndim == 1): refused,
    # where (1, 4) used to index out of range and (4, 1) to pass as layerwise
    for shape in [(1, 4), (4, 1), (1, 26)]:
        with pytest.raises(ValueError, match="scalar or a vector"):
            UU.expand_prior_precision(torch.ones(shape), model)


# ------------------------------------------------------------ linear algebra
@pytest.mark.parametrize("shapes", [((3, 4), (2, 5)), ((1, 1), (3, 3)), ((4, 2), (1, 3))])
def test_kron_equals_torch_kron(shapes):
    g = torch.Generator().manual_seed(1)
    t1, t2 = (torch.randn(*s, generator=g, dtype=DT) for s in shapes)
    out = kron(t1, t2)
    assert out.shape == torch.kron(t1, t2).shape
    torch.testing.assert_close(out, torch.kron(t1, t2), rtol=0, atol=0)
    # the defining entry: (A ⊗ B)[i·c + k, j·d + l] = A[i, j] B[k, l]
    c, d = t2.shape
    i, j, k, m = t1.shape[0] - 1, t1.shape[1] - 1, c - 1, d - 1
    assert out[i * c + k, j * d + m] == t1[i, j] * t2[k, m]


def test_kron_rejects_non_matrices():
    with pytest.raises(ValueError, match="matrices"):
        kron(torch.ones(3), torch.ones(2, 2))


def test_invsqrt_precision_is_cholesky_of_the_covariance():
    M = spd(6)
    L = invsqrt_precision(M)
    Sigma = torch.linalg.inv(M)
    assert torch.equal(L, L.tril())
    torch.testing.assert_close(L @ L.T, Sigma, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(L, torch.linalg.cholesky(Sigma), rtol=1e-9, atol=1e-12)
    # same covariance as the symmetric inverse square root M^{-1/2} = Q Λ^{-1/2} Qᵀ
    lam, Q = torch.linalg.eigh(M)
    S = (Q * lam.rsqrt()) @ Q.T
    torch.testing.assert_close(L @ L.T, S @ S, rtol=1e-10, atol=1e-12)
    # L⁻¹ whitens M's covariance: Lᵀ M L = I
    torch.testing.assert_close(L.T @ M @ L, torch.eye(6, dtype=DT), rtol=0, atol=1e-10)


def test_invsqrt_precision_batched():
    M = spd(4, seed=3, batch=(2,))
    L = invsqrt_precision(M)
    torch.testing.assert_close(L @ L.transpose(-1, -2), torch.linalg.inv(M), rtol=1e-10,
                               atol=1e-12)


def test_diagonal_add_scalar_leaves_input_unchanged():
    X = spd(5)
    before = X.clone()
    out = diagonal_add_scalar(X, 2.5)
    torch.testing.assert_close(out, X + 2.5 * torch.eye(5, dtype=DT), rtol=0, atol=0)
    assert torch.equal(X, before)


def test_symeig_matches_eigh_and_clamps():
    M = spd(5)
    lam, W = symeig(M)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(M), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((W * lam) @ W.T, M, rtol=1e-10, atol=1e-10)
    # a rank-1 PSD matrix: round-off may give slightly negative eigenvalues → clamped to 0
    v = torch.linspace(-1, 2, 6, dtype=DT)
    lam, W = symeig(torch.outer(v, v))
    assert bool((lam >= 0).all())
    torch.testing.assert_close(lam[-1], v @ v, rtol=1e-12, atol=0)
    torch.testing.assert_close(lam[:-1], torch.zeros(5, dtype=DT), rtol=0, atol=1e-12)


def test_symeig_retries_with_jitter(monkeypatch):
    M = spd(4, seed=5)
    real_eigh = torch.linalg.eigh
    calls = []

    def flaky_eigh(A, UPLO="L"):
        calls.append(A.clone())
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("did not converge")
        return real_eigh(A, UPLO=UPLO)

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    lam, W = symeig(M)
    assert len(calls) == 2
    torch.testing.assert_close(calls[1], M + torch.eye(4, dtype=DT), rtol=0, atol=0)
    monkeypatch.undo()
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(M), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((W * lam) @ W.T, M, rtol=1e-10, atol=1e-10)


def test_block_diag():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0]])
    expected = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 5.0]])
    assert torch.equal(block_diag([a, b]), expected)


def test_is_batchnorm_and_is_valid_scalar():
    assert _is_batchnorm(nn.BatchNorm1d(3)) and _is_batchnorm(nn.BatchNorm2d(3))
    assert _is_batchnorm(nn.BatchNorm3d(3))
    assert not _is_batchnorm(nn.LayerNorm(3)) and not _is_batchnorm(nn.Linear(2, 2))
    for ok in (1, 2.5, np.float64(0.3), np.int32(4), torch.tensor(1.0), torch.tensor([2.0])):
        assert _is_valid_scalar(ok), ok
    for bad in ("1.0", 1j, [1.0], None, torch.ones(2), torch.ones(1, 1), np.ones(1)):
        assert not _is_valid_scalar(bad), bad


# ----------------------------------------------------------------- sampling
def test_normal_samples_diagonal_moments():
    mean = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.5, 0.0]], dtype=DT)
    var = torch.tensor([[1.0, 0.25, 4.0], [0.01, 2.0, 0.5]], dtype=DT)
    g = torch.Generator().manual_seed(0)
    s = normal_samples(mean, var, 40_000, generator=g)
    assert s.shape == (40_000, 2, 3)
    torch.testing.assert_close(s.mean(0), mean, rtol=0, atol=4 * (var.max() / 40_000) ** 0.5)
    torch.testing.assert_close(s.var(0), var, rtol=0.03, atol=0)
    # rows draw their own noise (laplace-torch reuses one draw for all rows)
    z = (s - mean) / var.sqrt()
    assert abs(float(torch.corrcoef(z[:, :, 0].T)[0, 1])) < 0.03
    again = normal_samples(mean, var, 40_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


def test_normal_samples_full_covariance():
    mean = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, 3.0]], dtype=DT)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.3, 0.4]], dtype=DT)
    cov = torch.stack([A @ A.T, torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=DT))])
    s = normal_samples(mean, cov, 50_000, generator=torch.Generator().manual_seed(1))
    assert s.shape == (50_000, 2, 3)
    torch.testing.assert_close(s.mean(0), mean, rtol=0, atol=0.03)
    for i in range(2):
        emp = torch.cov(s[:, i].T)
        torch.testing.assert_close(emp, cov[i], rtol=0, atol=0.04)


def test_normal_samples_singular_covariance_and_bad_shapes():
    v = torch.tensor([1.0, -2.0], dtype=DT)
    cov = torch.outer(v, v)[None]  # rank 1: Cholesky fails, eigen-factor fallback
    s = normal_samples(torch.zeros(1, 2, dtype=DT), cov, 2000,
                       generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(s[:, 0, 1], -2 * s[:, 0, 0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="neither diagonal"):
        normal_samples(torch.zeros(2, 3), torch.ones(2, 2), 4)
    with pytest.raises(ValueError, match="2-d"):
        normal_samples(torch.zeros(3), torch.ones(3), 4)


def test_normal_samples_refuses_an_indefinite_covariance():
    """A full covariance with a clearly negative eigenvalue is refused (its eigen-factor
    fallback set the eigenvalue to zero: samples of another distribution); negative
    rounding of a singular one is still accepted."""
    mean = torch.zeros(1, 2, dtype=DT)
    indefinite = torch.tensor([[[1.0, 2.0], [2.0, 1.0]]], dtype=DT)  # eigenvalues 3, -1
    with pytest.raises(ValueError, match=r"not positive semi-definite \(smallest eigenvalue -1"):
        normal_samples(mean, indefinite, 3)
    with pytest.raises(ValueError, match=r"not positive semi-definite"):
        normal_samples(torch.zeros(1, 1), -torch.ones(1, 1, 1), 3)
    v = torch.tensor([1.0, -2.0], dtype=DT)
    rounded = torch.outer(v, v)[None] - 1e-15 * torch.eye(2, dtype=DT)  # λ = 5, −1e-15
    s = normal_samples(mean, rounded, 100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s[:, 0, 1], -2 * s[:, 0, 0], rtol=1e-6, atol=1e-6)


def test_normal_samples_refuses_what_would_give_nan_samples():
    mean = torch.zeros(2, 1, dtype=DT)
    with pytest.raises(ValueError, match="negative variances"):
        normal_samples(mean, torch.tensor([[1.0], [-0.5]], dtype=DT), 3)
    with pytest.raises(ValueError, match="var has NaN"):
        normal_samples(mean, torch.tensor([[1.0], [float("nan")]], dtype=DT), 3)
    with pytest.raises(ValueError, match="mean has NaN"):
        normal_samples(mean.fill_(float("inf")), torch.ones(2, 1, dtype=DT), 3)
    with pytest.raises(ValueError, match="n_samples"):
        normal_samples(torch.zeros(2, 1), torch.ones(2, 1), 0)
    # rounding below zero is clamped: those rows are exactly their mean
    s = normal_samples(torch.ones(2, 1, dtype=DT), torch.tensor([[1.0], [-1e-14]], dtype=DT), 5)
    assert torch.equal(s[:, 1], torch.ones(5, 1, dtype=DT))


def test_symeig_refuses_non_finite_and_non_square():
    with pytest.raises(ValueError, match="NaN or infinite"):
        U.symeig(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="square"):
        U.symeig(torch.ones(2, 3))


@pytest.mark.parametrize("name", ["reg1", "cls3"])
def test_sod_sampler_reproduces_fixture_indices(name):
    rec = R.combo(name, "all.gp.BackPackGGN")["posterior"]
    expected = R.decode(name, rec["sod_indices"])
    N = len(R.data(name)["X_train"])
    sampler = SoDSampler(N, N, seed=0)
    assert len(sampler) == N
    assert torch.equal(torch.tensor(list(sampler)), expected)
    assert list(sampler) == list(sampler)  # the same order on every pass


def test_sod_sampler_subset_in_a_dataloader():
    N, M = 50, 7
    X = torch.arange(N, dtype=DT)[:, None] * 10
    loader = DataLoader(TensorDataset(X, torch.arange(N)), batch_size=3,
                        sampler=SoDSampler(N, M, seed=4))
    seen = torch.cat([y for _, y in loader])
    expected = np.random.default_rng(4).choice(list(range(N)), M, replace=False)
    assert seen.tolist() == expected.tolist()
    assert len(set(seen.tolist())) == M
    with pytest.raises(ValueError):
        SoDSampler(5, 6)


# ------------------------------------------------------------------ metrics
def test_running_nll_metric_hand_computation():
    probs1 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=DT)
    probs2 = torch.tensor([[0.25, 0.5, 0.25], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]], dtype=DT)
    metric = RunningNLLMetric()
    assert math.isnan(metric.compute().item())
    metric.update(probs1, torch.tensor([0, 2]))
    metric.update(probs2, torch.tensor([1, -100, 2]))  # the second target is ignored
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.5) + math.log(0.1)) / 4
    assert metric.compute().item() == pytest.approx(expected, rel=1e-14)
    assert int(metric.n_valid_labels) == 4
    metric.reset()
    metric.update(probs1, torch.tensor([1, 1]))
    assert metric.compute().item() == pytest.approx(-(math.log(0.2) + math.log(0.1)) / 2)
    custom = RunningNLLMetric(ignore_index=2)
    custom.update(probs1, torch.tensor([0, 2]))
    assert custom.compute().item() == pytest.approx(-math.log(0.7))
    # get_nll is the mean NLL of one batch
    assert get_nll(probs1, torch.tensor([0, 2])).item() == pytest.approx(
        -(math.log(0.7) + math.log(0.8)) / 2, rel=1e-14)


def test_running_nll_metric_sequence_shapes_and_float32():
    probs = torch.softmax(torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)), -1)
    y = torch.tensor([[0, 1, 2], [3, -100, 0]])
    metric = RunningNLLMetric()
    metric.update(probs.float(), y)
    mask = y != -100
    expected = -probs.log().gather(-1, y.clamp(min=0)[..., None])[..., 0][mask].mean()
    assert metric.compute().dtype == DT
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-6)


def fitted_fixture_la(name: str):
    kw = {"sigma_noise": 0.5} if R.likelihood(name) == "regression" else {}
    la = Laplace(R.build_model(name), R.likelihood(name), "last_layer", "kron",
                 prior_precision=1.0, **kw)
    train, val = R.loaders(name)
    la.fit(train)
    return la, val


@pytest.fixture(scope="module")
def cls3():
    return fitted_fixture_la("cls3")


def test_validate_classification_equals_manual_and_fixture(cls3):
    la, val = cls3
    rec = R.combo("cls3", "last_layer.kron.default")["optimize_prior_precision"]["gridsearch"]
    per_point = R.decode("cls3", rec["diagnostic_per_point_loss"])
    X, y = R.data("cls3")["X_test"], R.data("cls3")["y_test"]
    grid = torch.logspace(-2, 2, 21, dtype=DT)
    for k in (0, 10, 20):
        la.prior_precision = float(grid[k])
        probs = la(X, link_approx="probit")
        manual = -probs.log()[torch.arange(len(y)), y].mean().item()
        metric = RunningNLLMetric()
        metric.update(torch.ones(1, 3) / 3, torch.tensor([0]))  # stale state: validate resets
        got = validate(la, val, metric, pred_type="glm", link_approx="probit")
        assert got == pytest.approx(manual, rel=1e-12)
        assert validate(la, val, get_nll) == pytest.approx(manual, rel=1e-12)
        close(got, per_point[k])


def test_running_metric_never_reset_reproduces_fixture_trace(cls3):
    """laplace-torch's grid search feeds one metric through all grid points."""
    la, val = cls3
    rec = R.combo("cls3", "last_layer.kron.default")["optimize_prior_precision"]["gridsearch"]
    trace = R.decode("cls3", rec["trace"])
    metric, values = RunningNLLMetric(), []
    for prior_prec in torch.logspace(-2, 2, 21, dtype=DT):
        la.prior_precision = float(prior_prec)
        for X, y in val:
            metric.update(la(X, link_approx="probit"), y)
        values.append(metric.compute().item())
    close(torch.tensor(values), trace)


class _MeanSquaredError:
    """A torchmetrics-like MSE whose ``update`` takes ``(preds, target)`` only."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sse, self.n = torch.zeros((), dtype=DT), 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.sse = self.sse + (preds - target.reshape(preds.shape)).square().sum()
        self.n += target.numel()

    def compute(self) -> torch.Tensor:
        return self.sse / self.n


def test_validate_regression_metric_and_callables():
    la, val = fitted_fixture_la("reg1")
    rec = R.combo("reg1", "last_layer.kron.default")["optimize_prior_precision"]["gridsearch"]
    X, y = R.data("reg1")["X_test"], R.data("reg1")["y_test"]
    f_mu, f_var = la(X)
    mse = (f_mu - y.reshape(f_mu.shape)).square().mean().item()
    # metric.update(f_mu, f_var, y) raises TypeError → update(f_mu, y), as laplace-torch
    assert validate(la, val, _MeanSquaredError()) == pytest.approx(mse, rel=1e-12)
    close(validate(la, val, _MeanSquaredError()),
          R.decode("reg1", rec["diagnostic_per_point_loss"])[0])
    # a two-argument callable gets (f_mu, y); a three-argument one (f_mu, f_var, y)
    assert validate(la, val, lambda m, t: (m - t).square().mean()) == pytest.approx(mse)

    def gaussian_nll(mean, var, target):
        v = var.reshape(mean.shape) + la.sigma_noise.square()
        return 0.5 * ((mean - target) ** 2 / v + v.log() + math.log(2 * math.pi)).mean()

    manual = gaussian_nll(f_mu, f_var, y).item()
    assert validate(la, val, gaussian_nll) == pytest.approx(manual, rel=1e-12)


def test_validate_dict_batches_and_errors(cls3):
    la, _ = cls3
    la.prior_precision = 1.0
    X, y = R.data("cls3")["X_test"], R.data("cls3")["y_test"]

    class DictModel(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, batch):
            return self.inner(batch["x"])

    la_dict = Laplace(DictModel(R.build_model("cls3")), "classification", "last_layer", "kron",
                      dict_key_x="x", dict_key_y="target")
    la_dict.fit(_DictLoader(R.loaders("cls3")[0]))
    batches = _DictLoader(R.loaders("cls3")[1])
    expected = validate(la, R.loaders("cls3")[1], RunningNLLMetric())
    got = validate(la_dict, batches, RunningNLLMetric(), dict_key_y="target")
    assert got == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="no batches"):
        validate(la, DataLoader(TensorDataset(X[:0], y[:0]), batch_size=4), get_nll)
    with pytest.raises(TypeError, match="callable"):
        validate(la, R.loaders("cls3")[1], 3.0)


class _DictLoader:
    """Dict-like batches of a ``(X, y)`` loader, with ``len(loader.dataset)``."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.dataset = loader, loader.dataset

    def __iter__(self):
        for X, y in self.loader:
            yield {"x": X, "target": y}
