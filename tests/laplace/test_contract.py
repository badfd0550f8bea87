"""One contract every Laplace variant satisfies (GPyTorch-style inherited test case).

Each concrete ``Test*`` class only says how to build its variant; the checks are
inherited: fit and predict in float32 and float64, joint vs marginal consistency,
sample shapes, ``state_dict`` round trips, pickling and ``la.to(device)``.
"""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import laplace

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def regression_problem(dtype: torch.dtype, n: int = 30, outputs: int = 2):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 3, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.stack([X.sin().sum(-1), X[:, 0] * X[:, 1]], -1)[:, :outputs]
    y = y + 0.1 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, outputs)).to(dtype)
    X, y = X.to(dtype), y.to(dtype)
    return model, DataLoader(TensorDataset(X, y), batch_size=8), X[:5]


class LaplaceContract:
    """Inherited checks; subclasses define ``cls`` and ``kwargs``."""

    cls: type
    kwargs: dict = {}
    parametric = True

    def make(self, dtype: torch.dtype = torch.float64):
        model, loader, X = regression_problem(dtype)
        la = self.cls(model, "regression", sigma_noise=0.3, prior_precision=2.0, **self.kwargs)
        la.fit(loader)
        return la, X

    def predict(self, la, X, **kwargs):
        pred_type = "glm" if self.parametric else "gp"
        return la(X, pred_type=pred_type, **kwargs)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_fit_and_predict(self, dtype):
        la, X = self.make(dtype)
        f_mu, f_var = self.predict(la, X)
        assert f_mu.dtype == f_var.dtype == dtype
        assert f_mu.shape == (5, 2) and f_var.shape == (5, 2, 2)
        torch.testing.assert_close(f_var, f_var.transpose(-1, -2))
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        assert bool((torch.linalg.eigvalsh(f_var) > -tol * f_var.abs().max()).all())
        lml = la.log_marginal_likelihood()
        assert lml.dtype == dtype and torch.isfinite(lml)

    def test_float32_agrees_with_float64(self):
        (la32, X32), (la64, X64) = self.make(torch.float32), self.make(torch.float64)
        v32, v64 = self.predict(la32, X32)[1], self.predict(la64, X64)[1]
        torch.testing.assert_close(v32.double(), v64, rtol=2e-3, atol=1e-5)

    def test_joint_matches_marginal(self):
        la, X = self.make()
        f_mu, f_var = self.predict(la, X)
        j_mu, j_cov = self.predict(la, X, joint=True)
        torch.testing.assert_close(j_mu, f_mu.reshape(-1))
        blocks = torch.stack([j_cov[2 * i:2 * i + 2, 2 * i:2 * i + 2] for i in range(5)])
        torch.testing.assert_close(blocks, f_var, rtol=1e-9, atol=1e-12)
        diag = self.predict(la, X, diagonal_output=True)[1]
        torch.testing.assert_close(diag, f_var.diagonal(dim1=-2, dim2=-1))

    def test_sample_shapes(self):
        la, X = self.make()
        gen = torch.Generator().manual_seed(1)
        draws = la.predictive_samples(X, n_samples=7, generator=gen)
        assert draws.shape == (7, 5, 2) and bool(torch.isfinite(draws).all())
        again = la.predictive_samples(X, n_samples=7, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(draws, again)
        if self.parametric:
            thetas = la.sample(6, generator=gen)
            assert thetas.shape == (6, la.mean.numel())

    def test_state_dict_round_trip(self):
        la, X = self.make()
        buffer = io.BytesIO()
        torch.save(la.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        model, _, _ = regression_problem(torch.float64)
        fresh = self.cls(model, "regression", **self.kwargs)
        fresh.load_state_dict(state)
        for a, b in zip(self.predict(la, X), self.predict(fresh, X)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fresh.log_marginal_likelihood(), la.log_marginal_likelihood())

    def test_pickle(self):
        la, X = self.make()
        clone = pickle.loads(pickle.dumps(la))
        for a, b in zip(self.predict(la, X), self.predict(clone, X)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)

    @pytest.mark.parametrize("device", DEVICES)
    def test_to_device(self, device):
        la, X = self.make()
        expected = self.predict(la, X)
        la.to(device)
        f_mu, f_var = self.predict(la, X.to(device))
        assert f_mu.device.type == device
        torch.testing.assert_close(f_var.cpu(), expected[1], rtol=1e-9, atol=1e-12)


    @pytest.mark.parametrize("device", DEVICES)
    def test_fit_on_device(self, device):
        """Fitting on ``device`` gives the CPU posterior (float64)."""
        expected, X = self.make()
        model, loader, _ = regression_problem(torch.float64)
        model.to(device)
        moved = DataLoader(TensorDataset(*(t.to(device) for t in loader.dataset.tensors)),
                           batch_size=8)
        la = self.cls(model, "regression", sigma_noise=0.3, prior_precision=2.0, **self.kwargs)
        la.fit(moved)
        f_mu, f_var = self.predict(la, X.to(device))
        assert f_var.device.type == device
        torch.testing.assert_close(f_var.cpu(), self.predict(expected, X)[1], rtol=1e-8,
                                   atol=1e-10)
        torch.testing.assert_close(la.log_marginal_likelihood().cpu(),
                                   expected.log_marginal_likelihood(), rtol=1e-8, atol=0)


class TestFullLaplace(LaplaceContract):
    cls = laplace.FullLaplace


class TestKronLaplace(LaplaceContract):
    cls = laplace.KronLaplace


class TestDiagLaplace(LaplaceContract):
    cls = laplace.DiagLaplace


class TestLowRankLaplace(LaplaceContract):
    cls = laplace.baselaplace.LowRankLaplace
    kwargs = {"n_eigenvalues": 10}


class TestFullLLLaplace(LaplaceContract):
    cls = laplace.lllaplace.FullLLLaplace


class TestKronLLLaplace(LaplaceContract):
    cls = laplace.lllaplace.KronLLLaplace


class TestDiagLLLaplace(LaplaceContract):
    cls = laplace.lllaplace.DiagLLLaplace


class TestFullSubnetLaplace(LaplaceContract):
    cls = laplace.subnetlaplace.FullSubnetLaplace
    kwargs = {"subnetwork_indices": torch.tensor([0, 3, 7, 20, 33, 40, 49])}


class TestDiagSubnetLaplace(LaplaceContract):
    cls = laplace.subnetlaplace.DiagSubnetLaplace
    kwargs = {"subnetwork_indices": torch.tensor([1, 2, 30, 44, 48])}


class TestFunctionalLaplace(LaplaceContract):
    cls = laplace.FunctionalLaplace
    kwargs = {"n_subset": 20}
    parametric = False


class TestFunctionalLLLaplace(LaplaceContract):
    cls = laplace.FunctionalLLLaplace
    kwargs = {"n_subset": 30}
    parametric = False
