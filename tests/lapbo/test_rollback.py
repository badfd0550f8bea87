"""A ``LaplaceBNN.fit`` that raises leaves the model as it was (BoTorch's
``fit_gpytorch_mll`` rolls a model back the same way).

Each test makes the fit fail after it has changed the model: the network trained in
place (the single-network and random-feature routes), or the chosen candidate adopted
(the default evidence selection). The posterior afterwards is the one before the call.
"""

from __future__ import annotations

import pytest
import torch

import lapbo.lengthscales
import lapbo.training
from lapbo import LaplaceBNN

torch.set_num_threads(1)
DT = torch.float64
X = torch.rand(12, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
Y = torch.sin(6 * X[:, :1]) + X[:, 1:] ** 2
X_TEST = torch.rand(5, 2, generator=torch.Generator().manual_seed(1), dtype=DT)

ROUTES = {  # options of the model, and the function to break after it has run
    "network": ({"candidates": None, "n_epochs": 30}, lapbo.training,
                "fit_network_and_laplace"),
    "random_features": ({"candidates": None, "net": "random_features"}, lapbo.lengthscales,
                        "fit_random_feature_network"),
    "selection": ({"n_epochs": 30}, LaplaceBNN, "_adopt"),
}


def breaking(monkeypatch, module, name, error):
    """Replace ``module.name`` by a function that runs it and then raises ``error``; an
    adopted candidate's weights are moved first, so that a refit that kept the adopted
    model (the same data and seed would otherwise refit the same one) would show."""
    original = getattr(module, name)

    def run_then_fail(*args, **kwargs):
        if name == "_adopt":
            with torch.no_grad():
                next(args[1].net.parameters()).add_(0.1)
        original(*args, **kwargs)
        raise error

    monkeypatch.setattr(module, name, run_then_fail)


def moments(model):
    posterior = model.posterior(X_TEST)
    return posterior.mean.detach().clone(), posterior.variance.detach().clone()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()],
                         ids=["error", "interrupt"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_a_failed_refit_keeps_the_earlier_fit(monkeypatch, route, error):
    options, module, name = ROUTES[route]
    model = LaplaceBNN(X, Y, seed=0, **options).fit()
    before = moments(model)
    weights = [p.detach().clone() for p in model.net.parameters()]
    model.user_note = "kept"  # set before the failed fit: restored with the rest
    breaking(monkeypatch, module, name, error)
    with pytest.raises(type(error)):
        model.fit()
    for a, b in zip(moments(model), before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for p, w in zip(model.net.parameters(), weights):
        assert torch.equal(p, w)
    assert model.user_note == "kept"


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_failed_first_fit_leaves_the_model_unfitted(monkeypatch, route):
    options, module, name = ROUTES[route]
    model = LaplaceBNN(X, Y, seed=0, **options)
    weights = [p.detach().clone() for p in model.net.parameters()]
    breaking(monkeypatch, module, name, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        model.fit()
    assert not bool(model.is_fitted)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.posterior(X_TEST)
    for p, w in zip(model.net.parameters(), weights):
        assert torch.equal(p, w)
    monkeypatch.undo()
    refit, fresh = model.fit(), LaplaceBNN(X, Y, seed=0, **options).fit()
    for a, b in zip(moments(refit), moments(fresh)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
