"""Function-space Laplace: arguments checked where they enter, states that carry what
their numbers mean, and tuning that leaves the hyperparameters alone when it fails.

Found by a sweep of the gp / low-rank / serialization paths (session 20): a gp state
saved with ``independent_outputs=True`` loaded silently into a default LA and mixed its
``K_MM`` with the loader's cross-kernel, a state of another architecture with the same
parameter count loaded, and a failed tuning run left its last iterate (requiring grad).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.utils.errors import MissingKeyError, NotFittedError

DT = torch.float64


def mlp(hidden: int = 5, outputs: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, outputs)).to(DT)


def loader(outputs: int = 2, n: int = 20, classes: int | None = None) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 2, generator=g, dtype=DT)
    y = (torch.randint(0, classes, (n,), generator=g) if classes
         else torch.randn(n, outputs, generator=g, dtype=DT))
    return DataLoader(TensorDataset(X, y), batch_size=7)


def gp(model: nn.Module | None = None, **kwargs) -> Laplace:
    la = Laplace(model or mlp(), "regression", "all", "gp", **{"n_subset": 8, **kwargs})
    la.fit(loader())
    return la


XT = torch.randn(4, 2, generator=torch.Generator().manual_seed(9), dtype=DT)


@pytest.mark.parametrize("saved, loading, option", [
    ({"independent_outputs": True}, {}, "independent_outputs"),
    ({}, {"independent_outputs": True}, "independent_outputs"),
    ({"diagonal_kernel": True}, {}, "independent_outputs"),
])
def test_a_state_loads_only_with_the_kernel_options_it_was_saved_with(saved, loading, option):
    state = gp(**saved).state_dict()
    target = Laplace(mlp(), "regression", "all", "gp", n_subset=8, **loading)
    with pytest.raises(ValueError, match=f"saved with {option}="):
        target.load_state_dict(state)
    same = Laplace(mlp(), "regression", "all", "gp", n_subset=8, **saved)
    same.load_state_dict(state)
    torch.testing.assert_close(same(XT)[1], gp(**saved)(XT)[1], rtol=0, atol=0)


def test_output_hessian_and_seed_travel_with_the_state():
    model = mlp(outputs=3)
    la = Laplace(model, "classification", "all", "gp", n_subset=8, output_hessian="block",
                 seed=4)
    la.fit(loader(classes=3))
    other = Laplace(model, "classification", "all", "gp", n_subset=8)
    with pytest.raises(ValueError, match="output_hessian='block'"):
        other.load_state_dict(la.state_dict())
    other = Laplace(model, "classification", "all", "gp", n_subset=8, output_hessian="block")
    other.load_state_dict(la.state_dict())
    assert other.seed == 4  # the seed of the saved subset, not the constructor's 0
    torch.testing.assert_close(other(XT), la(XT), rtol=0, atol=0)


def test_a_state_of_another_architecture_with_as_many_parameters_is_refused():
    state = gp(mlp(hidden=5)).state_dict()  # 2-5-2: 27 parameters
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(),
                          nn.Linear(3, 2, bias=False)).to(DT)  # 9 + 12 + 6 = 27
    la = Laplace(other, "regression", "all", "gp", n_subset=8)
    with pytest.raises(ValueError, match="a different architecture"):
        la.load_state_dict(state)


def test_malformed_states_are_refused_before_anything_is_set():
    la = gp()
    state = la.state_dict()
    fresh = Laplace(mlp(), "regression", "all", "gp", n_subset=8)
    for key in ("K_MM", "mu", "X_M", "sod_indices", "prior_precision"):
        broken = {k: v for k, v in state.items() if k != key}
        with pytest.raises(MissingKeyError, match=key):
            fresh.load_state_dict(broken)
    with pytest.raises(ValueError, match="kernel quantities do not fit"):
        fresh.load_state_dict({**state, "K_MM": state["K_MM"][:-2, :-2]})
    with pytest.raises(NotFittedError):  # nothing was loaded
        fresh(XT)
    full = Laplace(mlp(), "regression", "all", "full")
    full.fit(loader())
    with pytest.raises(MissingKeyError, match="'loss'"):
        Laplace(mlp(), "regression", "all", "full").load_state_dict(
            {k: v for k, v in full.state_dict().items() if k != "loss"})


def test_state_dict_before_fit_and_a_hidden_last_layer():
    with pytest.raises(NotFittedError):
        Laplace(mlp(), "regression", "all", "gp", n_subset=8).state_dict()
    la = Laplace(mlp(), "regression", "last_layer", "gp", n_subset=8, last_layer_name="0")
    with pytest.raises(ValueError, match="not the output of its last layer '0'"):
        la.fit(loader())


@pytest.mark.parametrize("kwargs, match", [
    ({"n_subset": 2.7}, "n_subset must be a positive integer"),
    ({"n_subset": True}, "n_subset must be a positive integer"),
    ({"n_subset": "5"}, "n_subset must be a positive integer"),
    ({"seed": 1.5}, "seed must be a non-negative integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"independent_outputs": "no"}, "independent_outputs must be a bool"),
    ({"diagonal_kernel": 1}, "diagonal_kernel must be a bool"),
    ({"output_hessian": "full"}, "output_hessian must be 'diag' or 'block'"),
    ({"prior_precision": torch.ones(4)}, "scalar prior precision only"),
])
def test_constructor_arguments_are_checked_where_they_enter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Laplace(mlp(), "regression", "all", "gp", **{"n_subset": 8, **kwargs})


def test_a_refused_prior_leaves_the_previous_one():
    la = gp(prior_precision=0.5)
    with pytest.raises(ValueError, match="scalar prior precision only"):
        la.prior_precision = torch.ones(4, dtype=DT)
    with pytest.raises(ValueError, match="scalar prior precision only"):
        la.log_marginal_likelihood(prior_precision=torch.ones(4, dtype=DT))
    with pytest.raises(ValueError, match="scalar prior precision only"):
        la.optimize_marginal_likelihood(prior_structure="layerwise")
    assert la.prior_precision.tolist() == [0.5]
    la(XT)  # still usable


@pytest.mark.parametrize("structure", ["full", "diag", "kron", "gp"])
def test_a_diverging_tuning_run_leaves_the_hyperparameters_as_they_were(structure):
    kwargs = {"n_subset": 20} if structure == "gp" else {}
    la = Laplace(mlp(), "regression", "all", structure, prior_precision=0.5, **kwargs)
    la.fit(loader())
    with pytest.raises(ValueError, match="diverged|not positive definite"):
        la.optimize_prior_precision(method="marglik", lr=1e4, n_steps=50)
    assert la.prior_precision.tolist() == [0.5] and not la.prior_precision.requires_grad
    with pytest.raises(ValueError, match="diverged|not positive definite"):
        la.optimize_marginal_likelihood(method="adam", lr=1e4, n_steps=50,
                                        tune_sigma_noise=True)
    assert la.prior_precision.tolist() == [0.5] and not la.prior_precision.requires_grad
    assert float(la.sigma_noise) == 1.0 and not la.sigma_noise.requires_grad


def test_classification_evidence_at_a_tiny_prior_precision_is_computed():
    model = mlp(outputs=3)
    la = Laplace(model, "classification", "all", "gp", n_subset=12, prior_precision=1e-12)
    la.fit(loader(classes=3))
    value = la.log_marginal_likelihood()  # a raw LinAlgError before
    # reference: the same terms through eigendecompositions (no Cholesky)
    v = la.prior_factor_sod / 1e-12
    S = torch.diag(la._Lambda.diagonal(dim1=-2, dim2=-1).reshape(-1).clamp(min=0).sqrt())
    eye = torch.eye(len(S), dtype=DT)
    logdet = torch.linalg.eigvalsh(eye + S @ la.K_MM @ S * v).log().sum()
    lam, Q = torch.linalg.eigh(la.K_MM * v + 1e-5 * eye)
    m = la.mu.reshape(-1)
    scatter = ((Q.T @ m).square() / lam).sum()
    expected = la.log_likelihood - 0.5 * (logdet + scatter)
    assert torch.isfinite(value)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)


def test_low_rank_refuses_a_rank_above_the_parameter_count_when_built():
    with pytest.raises(ValueError, match="n_eigenvalues=28 exceeds the model's 27"):
        Laplace(mlp(outputs=2), "regression", "all", "lowrank", n_eigenvalues=28)
