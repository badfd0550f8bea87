"""Bad input at the entry points after ``fit``: validation loaders, the function-space
fit, ``marglik_training``, state loading and arguments that laplace-torch turns into a
silent no-op or NaN. Each raises a ``ValueError`` (or ``NotPositiveDefiniteError``) that
names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.marglik_training import marglik_training
from laplace.utils.errors import NotPositiveDefiniteError

DT = torch.float64


def mlp(n_out: int = 2, width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, n_out)).to(DT)


def X(n: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=DT)


def loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=10)


def reg_loader(n: int = 20) -> DataLoader:
    x = X(n)
    return loader(x, torch.stack([x[:, 0].sin(), x[:, 1].cos()], -1))


def cls_loader(n: int = 20) -> DataLoader:
    x = X(n)
    return loader(x, (x[:, 0] > 0).long())


@pytest.fixture(scope="module")
def fitted_full() -> Laplace:
    la = Laplace(mlp(), "regression", "all", "full")
    la.fit(reg_loader())
    return la


# ------------------------------------------------------------ validation targets
@pytest.mark.parametrize(("likelihood", "targets", "message"), [
    ("regression", torch.zeros(20, dtype=DT),
     r"Validation batch 0: targets of shape \(10,\) do not match predictions of shape \(10, 2\)"),
    ("regression", torch.full((20, 2), float("nan"), dtype=DT),
     "Validation batch 0: targets contain NaN or inf"),
    ("classification", torch.full((20,), 5),
     r"Validation batch 0: class labels must lie in \[0, 1\]"),
])
def test_gridsearch_checks_the_validation_targets(likelihood, targets, message):
    la = Laplace(mlp(), likelihood, "all", "kron")
    la.fit(reg_loader() if likelihood == "regression" else cls_loader())
    bad = loader(X(20, seed=2), targets)
    with pytest.raises(ValueError, match=message):
        la.optimize_prior_precision(method="gridsearch", grid_size=3, val_loader=bad)


# ---------------------------------------------------- function-space fit targets
@pytest.mark.parametrize(("likelihood", "subset", "targets", "message"), [
    ("regression", "all", torch.zeros(30, dtype=DT),
     r"Batch 0: targets of shape \(10,\) do not match model outputs of shape \(10, 2\)"),
    ("classification", "all", torch.full((30,), 5), r"Batch 0: class labels must lie in \[0, 1\]"),
    ("classification", "last_layer", torch.zeros(30, dtype=DT),
     "classification targets must be integer class indices"),
])
def test_function_space_fit_checks_targets(likelihood, subset, targets, message):
    la = Laplace(mlp(), likelihood, subset, "gp", n_subset=8)
    with pytest.raises(ValueError, match=message):
        la.fit(loader(X(30), targets))


def test_function_space_state_of_another_model_is_refused():
    la = Laplace(mlp(), "regression", "all", "gp", n_subset=8)
    la.fit(reg_loader())
    other = Laplace(mlp(width=12), "regression", "all", "gp", n_subset=8)
    with pytest.raises(ValueError, match="State has 50 parameters, this LA 74"):
        other.load_state_dict(la.state_dict())
    same = Laplace(mlp(), "regression", "all", "gp", n_subset=8)
    same.load_state_dict(la.state_dict())  # the same architecture still loads
    x = X(4, seed=3)
    assert torch.allclose(same(x)[1], la(x)[1])


def test_function_space_zero_prior_precision_is_not_positive_definite():
    la = Laplace(mlp(), "regression", "all", "gp", n_subset=8)
    la.fit(reg_loader())
    with pytest.raises(NotPositiveDefiniteError, match="positive, finite prior precision"):
        la.log_marginal_likelihood(prior_precision=torch.tensor(0.0, dtype=DT))


# ------------------------------------------------------------ marglik_training
@pytest.mark.parametrize(("targets", "message"), [
    (torch.full((20,), 5), r"Batch 0: class labels must lie in \[0, 1\]"),
    (torch.zeros(20, dtype=DT), "classification targets must be integer class indices"),
])
def test_marglik_training_checks_targets_before_training(targets, message):
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        marglik_training(model, loader(X(20), targets), likelihood="classification",
                         n_epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# --------------------------------------------- silent no-ops of laplace-torch
def test_nn_predictive_variance_needs_two_samples(fitted_full):
    with pytest.raises(ValueError, match="needs n_samples >= 2"):
        fitted_full(X(3), pred_type="nn", n_samples=1)
    mean, var = fitted_full(X(3), pred_type="nn", n_samples=2)
    assert bool(torch.isfinite(var).all())


def test_predictive_flags_are_bools_and_unused_keywords_are_named(fitted_full):
    # "no" is truthy: it used to give the joint covariance
    for name in ("joint", "diagonal_output"):
        with pytest.raises(ValueError, match=f"{name} must be a bool"):
            fitted_full(X(3), **{name: "no"})
    mu, var = fitted_full(X(3), joint=1)  # 0 and 1 are bools enough
    torch.testing.assert_close(var, fitted_full(X(3), joint=True)[1], rtol=0, atol=0)
    # a misspelt keyword (n_sample) fell back to the default silently
    with pytest.warns(UserWarning, match=r"ignores the keyword arguments \['n_sample'\]"):
        fitted_full(X(3), pred_type="nn", n_sample=10)


def test_lowrank_rank_zero_is_refused():
    with pytest.raises(ValueError, match="n_eigenvalues must be a positive integer"):
        Laplace(mlp(), "regression", "all", "lowrank", n_eigenvalues=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr": 0.0}, "lr must be positive"),
    ({"method": "gridsearch", "log_prior_prec_base": 1.0}, "log_prior_prec_base must not be 1"),
    ({"method": "gridsearch", "log_prior_prec_base": -10.0},
     "log_prior_prec_base must be positive"),
])
def test_tuning_arguments_that_would_not_move(fitted_full, kwargs, message):
    if kwargs.get("method") == "gridsearch":
        kwargs = {**kwargs, "val_loader": reg_loader(10), "grid_size": 3}
    with pytest.raises(ValueError, match=message):
        fitted_full.optimize_prior_precision(**kwargs)


def test_backend_must_be_a_class():
    with pytest.raises(ValueError, match="backend must be a curvature class"):
        Laplace(mlp(), "regression", "all", "full", backend="asdl")


# --------------------------------------------------------- states and inputs
@pytest.mark.parametrize(("state", "message"), [
    (None, "state_dict must be a dict saved by state_dict"),
    ({}, r"The state lacks \['cls_name'"),
])
@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_loading_something_that_is_no_state(state, message, structure):
    with pytest.raises(ValueError, match=message):
        Laplace(mlp(), "regression", "all", structure).load_state_dict(state)


def test_a_non_subnetwork_state_into_a_subnetwork_laplace(fitted_full):
    sub = Laplace(mlp(), "regression", "subnetwork", "full",
                  subnetwork_indices=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="it has no subnetwork_indices"):
        sub.load_state_dict(fitted_full.state_dict())


@pytest.mark.parametrize(("subset", "structure"), [
    ("all", "full"), ("last_layer", "kron"), ("all", "gp"),
])
def test_an_empty_input_batch(subset, structure):
    la = Laplace(mlp(), "regression", subset, structure,
                 **({"n_subset": 8} if structure == "gp" else {}))
    la.fit(reg_loader())
    with pytest.raises(ValueError, match="Input x has no points"):
        la(torch.zeros(0, 3, dtype=DT))


def test_gridsearch_where_every_grid_point_fails_says_why(fitted_full):
    # prior precision 10^-400 = 0 on a GGN of rank <= 40 < 50 parameters: each point's
    # posterior is singular
    with pytest.raises(ValueError, match="every one of the 2 grid points failed"):
        fitted_full.optimize_prior_precision(
            method="gridsearch", grid_size=2, val_loader=reg_loader(10),
            log_prior_prec_min=-400.0, log_prior_prec_max=-399.0)


def test_marglik_tuning_names_its_own_arguments(fitted_full):
    # laplace-torch reports both as a non-finite prior precision
    with pytest.raises(ValueError, match=r"init_prior_prec must be positive and finite"):
        fitted_full.optimize_prior_precision(init_prior_prec=0.0, n_steps=5)
    with pytest.raises(ValueError, match=r"optimisation diverged \(adam, 5 steps, lr=1000000"):
        fitted_full.optimize_prior_precision(lr=1e6, n_steps=5)


def test_marglik_training_names_lr_hyp_when_the_hyperparameters_diverge():
    # laplace-torch carries on with an infinite prior precision; the next fit then
    # reports the precision, not the step size that caused it.
    torch.manual_seed(0)
    X = torch.randn(64, 3)
    y = X.sum(1, keepdim=True) + 0.1 * torch.randn(64, 1)
    loader = DataLoader(TensorDataset(X, y), batch_size=16)
    net = nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 1))
    with pytest.raises(RuntimeError, match=r"diverged at epoch 2.*Lower lr_hyp \(now 100000\)"):
        marglik_training(net, loader, likelihood="regression", n_epochs=6, n_epochs_burnin=2,
                         marglik_frequency=2, lr_hyp=1e5)
