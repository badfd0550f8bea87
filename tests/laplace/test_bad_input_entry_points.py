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


# ------------------------------------------------------------ types at construction
@pytest.mark.parametrize(("subset", "structure"), [
    ("last_layer", "kron"), ("all", "full"), ("all", "gp"), ("last_layer", "gp")])
def test_a_model_that_is_no_module_is_refused(subset, structure):
    extra = {"n_subset": 4} if structure == "gp" else {}
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        Laplace("net", "regression", subset, structure, **extra)


@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_enable_backprop_is_a_bool_in_the_constructor_and_the_setter(subset):
    with pytest.raises(ValueError, match="enable_backprop must be a bool, got 'yes'"):
        Laplace(mlp(), "regression", subset, "full", enable_backprop="yes")
    la = Laplace(mlp(), "regression", subset, "full")
    with pytest.raises(ValueError, match="enable_backprop must be a bool, got 'no'"):
        la.enable_backprop = "no"
    la.enable_backprop = True
    la.fit(reg_loader())
    x = X(4).requires_grad_(True)
    mean, var = la(x)
    (mean.sum() + var.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("key", ["dict_key_x", "dict_key_y"])
def test_dict_keys_are_strings(key):
    with pytest.raises(ValueError, match=f"{key} must be a string"):
        Laplace(mlp(), "regression", "all", "full", **{key: 3})


_PARAMETRIC = [("all", "full"), ("all", "kron"), ("last_layer", "kron"), ("all", "lowrank")]
_FUNCTION_SPACE = [("all", "gp"), ("last_layer", "gp")]


@pytest.mark.parametrize(("subset", "structure", "flag"), [
    *[(s, h, f) for s, h in _PARAMETRIC for f in ("override", "progress_bar")],
    *[(s, h, "progress_bar") for s, h in _FUNCTION_SPACE]])  # gp: no override (laplace-torch)
def test_fit_flags_are_bools(subset, structure, flag):
    extra = {"n_subset": 4} if structure == "gp" else {}
    la = Laplace(mlp(), "regression", subset, structure, **extra)
    with pytest.raises(ValueError, match=f"{flag} must be a bool, got 'no'"):
        la.fit(reg_loader(), **{flag: "no"})


@pytest.mark.parametrize("name", ["backend_kwargs", "asdl_fisher_kwargs"])
def test_keyword_dicts_must_be_dicts(name):
    with pytest.raises(ValueError, match=f"{name} must be a dict of keyword arguments"):
        Laplace(mlp(), "regression", "all", "kron", **{name: "x"})


@pytest.mark.parametrize("flag", ["verbose", "progress_bar"])
def test_tuning_flags_are_bools(fitted_full, flag):
    before = fitted_full.prior_precision.clone()
    with pytest.raises(ValueError, match=f"{flag} must be a bool, got 'x'"):
        fitted_full.optimize_prior_precision(n_steps=2, **{flag: "x"})
    assert torch.equal(fitted_full.prior_precision, before)


def test_log_prob_normalized_and_kron_damping_are_bools(fitted_full):
    with pytest.raises(ValueError, match="normalized must be a bool, got 'no'"):
        fitted_full.log_prob(fitted_full.mean, normalized="no")
    with pytest.raises(ValueError, match="damping must be a bool, got 'x'"):
        Laplace(mlp(), "regression", "all", "kron", damping="x")


def test_a_subnetwork_mask_of_no_module_is_refused():
    from laplace.utils import RandomSubnetMask

    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        RandomSubnetMask("net", n_params_subnet=3)


def test_a_backend_that_is_no_curvature_class_is_refused():
    with pytest.raises(ValueError, match="backend must be a curvature class"):
        Laplace(mlp(), "regression", "all", "full", backend=nn.Linear)


def test_utilities_name_what_they_refuse():
    from laplace.utils import FeatureExtractor, Kron
    from laplace.utils.metrics import RunningNLLMetric

    with pytest.raises(ValueError, match="factors of parameter tensor 0 must be one or two square"):
        Kron([[torch.randn(2, 3)]])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        FeatureExtractor("net")
    with pytest.raises(ValueError, match="ignore_index must be an integer label, got 'a'"):
        RunningNLLMetric(ignore_index="a")


def test_batches_of_more_than_a_pair_are_refused():
    x = X()
    la = Laplace(mlp(), "regression", "all", "full")
    weighted = DataLoader(TensorDataset(x, x[:, :2], torch.ones(20, dtype=DT)), batch_size=10)
    with pytest.raises(ValueError, match="must be an \\(X, y\\) pair; got 3 elements"):
        la.fit(weighted)


def test_inputs_that_are_neither_tensors_nor_dicts_are_refused(fitted_full):
    with pytest.raises(TypeError, match="x must be a tensor or a dict-like batch, got list"):
        fitted_full([[0.0, 1.0, 2.0]])


def test_marglik_training_refuses_a_model_that_is_no_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        marglik_training("net", reg_loader(), likelihood="regression", n_epochs=1)


@pytest.mark.parametrize("backend", ["TorchFuncGGN", "BackPackGGN", "CurvlinopsGGN", "AsdlGGN"])
def test_curvature_backends_check_their_own_arguments(backend):
    import laplace.curvature as curvature

    cls = getattr(curvature, backend)
    with pytest.raises(ValueError, match="Unknown likelihood 'regresion'"):
        cls(mlp(), "regresion")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        cls("net", "regression")
    with pytest.raises(ValueError, match="last_layer must be a bool, got 'yes'"):
        cls(mlp(), "regression", last_layer="yes")
    with pytest.raises(ValueError, match="dict_key_y must be a string"):
        cls(mlp(), "regression", dict_key_y=1)
    if backend != "TorchFuncGGN":
        with pytest.raises(ValueError, match="stochastic must be a bool, got 'yes'"):
            cls(mlp(), "regression", stochastic="yes")
        with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
            cls(mlp(), "regression", num_samples=0)


def test_swag_names_a_criterion_or_model_of_the_wrong_kind():
    from laplace.utils import fit_diagonal_swag_var

    with pytest.raises(TypeError, match="criterion must be a callable loss"):
        fit_diagonal_swag_var(mlp(), reg_loader(), "mse")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        fit_diagonal_swag_var("net", reg_loader(), nn.MSELoss())
