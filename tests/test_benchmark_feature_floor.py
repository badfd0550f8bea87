"""The bookkeeping of ``benchmarks/feature_floor.py``: its Bayesian linear regression on
a model's features, given that model's own hyperparameters, is the model's posterior mean;
one run gives a row for the GP and two per feature count."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import feature_floor as bench  # noqa: E402
from lapbo import LaplaceBNN  # noqa: E402
from lapbo.networks import random_feature_layer  # noqa: E402


def test_regression_on_the_features_is_the_models_posterior_mean() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(25, 3, generator=g, dtype=torch.float64)
    Y = torch.sin(5 * X[:, :1]) + X[:, 1:2]
    model = LaplaceBNN(X, Y, candidates=None, net="random_features", random_features=128,
                       trend=None, prior_structure="layerwise", seed=0).fit()
    X_test = torch.rand(7, 3, generator=g, dtype=torch.float64)
    lengthscale = random_feature_layer(model.net).lengthscale.detach()
    delta = model.prior_precision.tolist()
    mean = bench.features_at_gp(model, lengthscale, float(model.sigma_noise) ** 2, X, Y,
                                X_test, precision=(delta[0], delta[1]))
    expected = model.posterior(X_test).mean.detach()
    assert torch.allclose(mean, expected, rtol=1e-8, atol=1e-10)


def test_run_gives_the_gp_and_two_rows_per_feature_count() -> None:
    rows = bench.run("branin", n=20, seed=0, features=[64])
    assert [(r["model"], r["features"]) for r in rows] == [
        ("SingleTaskGP", None), ("laplace", 64), ("features_at_gp", 64)]
    assert all(0 < r["rmse"] < 2 for r in rows)
    assert bench.markdown(rows, {"command": "c", "commit": "x"}).count("\n| ") == 4
