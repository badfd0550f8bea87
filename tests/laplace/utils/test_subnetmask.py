"""Subnetwork masks (``laplace.utils.subnetmask``) and diagonal SWAG (``laplace.utils.swag``)."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, TensorDataset

from laplace import DiagLaplace
from laplace.utils.subnetmask import (
    LargestMagnitudeSubnetMask,
    LargestVarianceDiagLaplaceSubnetMask,
    LargestVarianceSWAGSubnetMask,
    LastLayerSubnetMask,
    ModuleNameSubnetMask,
    ParamNameSubnetMask,
    RandomSubnetMask,
    ScoreBasedSubnetMask,
    SubnetMask,
)
from laplace.utils.swag import fit_diagonal_swag_var

DT = torch.float64
# Sequential(Linear(3, 4), ReLU, Linear(4, 2)): parameter vector layout
#   0.weight [0, 12)  0.bias [12, 16)  2.weight [16, 24)  2.bias [24, 26)
N_PARAMS = 26


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DT)


def cls_loader(n: int = 16, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, generator=g, dtype=DT)
    y = torch.randint(0, 2, (n,), generator=g)
    return DataLoader(TensorDataset(X, y), batch_size=batch_size)


def r(a: int, b: int) -> torch.Tensor:
    return torch.arange(a, b)


def top_indices(scores: torch.Tensor, n: int) -> torch.Tensor:
    return torch.topk(scores, n).indices.sort().values


def assert_top(idx: torch.Tensor, scores: torch.Tensor, n: int) -> None:
    """``idx`` are ``n`` sorted positions of the largest scores (any tie order)."""
    assert idx.dtype == torch.long and len(idx) == n
    assert torch.equal(idx, idx.sort().values) and len(torch.unique(idx)) == n
    rest = torch.ones_like(scores, dtype=torch.bool)
    rest[idx] = False
    assert scores[idx].min() >= scores[rest].max()
    # ties are broken towards lower positions
    assert torch.equal(idx, torch.argsort(scores, descending=True, stable=True)[:n].sort().values)


# ------------------------------------------------------------------- base
def test_largest_magnitude_exact_indices():
    model = mlp()
    mask = LargestMagnitudeSubnetMask(model, n_params_subnet=7)
    idx = mask.select()
    expected = top_indices(parameters_to_vector(model.parameters()).detach().abs(), 7)
    assert idx.dtype == torch.long
    assert torch.equal(idx, expected)
    assert torch.equal(mask.indices, idx)
    assert mask.n_params_subnet == 7
    with pytest.raises(ValueError, match="already selected"):
        mask.select()


def test_random_mask_distinct_sorted_and_seeded():
    torch.manual_seed(3)
    idx = RandomSubnetMask(mlp(), 10).select()
    assert len(idx) == 10 and len(torch.unique(idx)) == 10
    assert torch.equal(idx, idx.sort().values)
    assert 0 <= int(idx.min()) and int(idx.max()) < N_PARAMS
    torch.manual_seed(3)
    assert torch.equal(RandomSubnetMask(mlp(), 10).select(), idx)
    assert len(RandomSubnetMask(mlp(), N_PARAMS).select()) == N_PARAMS


@pytest.mark.parametrize("n", [0, -1, N_PARAMS + 1, None, 2.5])
def test_score_based_bad_sizes(n):
    with pytest.raises(ValueError):
        LargestMagnitudeSubnetMask(mlp(), n)


def test_indices_before_select_and_abstract_methods():
    mask = LargestMagnitudeSubnetMask(mlp(), 3)
    with pytest.raises(AttributeError, match="not selected"):
        _ = mask.indices
    with pytest.raises(NotImplementedError):
        SubnetMask(mlp()).select()
    with pytest.raises(NotImplementedError):
        ScoreBasedSubnetMask(mlp(), 3).select()


def test_convert_subnet_mask_to_indices():
    mask = SubnetMask(mlp())
    m = torch.zeros(N_PARAMS, dtype=torch.bool)
    m[[1, 5, 20]] = True
    assert torch.equal(mask.convert_subnet_mask_to_indices(m), torch.tensor([1, 5, 20]))
    assert torch.equal(mask.convert_subnet_mask_to_indices(m.long()), torch.tensor([1, 5, 20]))
    for bad in (
        [1, 0],  # not a tensor
        m.float(),  # not integral
        m.reshape(2, 13),  # not 1-d
        m[:-1],  # wrong length
        m.long() * 2,  # not 0/1
        torch.zeros(N_PARAMS, dtype=torch.bool),  # empty
    ):
        with pytest.raises(ValueError):
            mask.convert_subnet_mask_to_indices(bad)


# ------------------------------------------------------------- name-based
@pytest.mark.parametrize(
    "names, expected",
    [
        (["2.weight"], r(16, 24)),
        (["2.bias", "0.bias"], torch.cat([r(12, 16), r(24, 26)])),
        ("0.weight", r(0, 12)),
    ],
)
def test_param_name_mask(names, expected):
    assert torch.equal(ParamNameSubnetMask(mlp(), names).select(), expected)


def test_param_name_mask_errors():
    # refused where the names enter (laplace-torch: only at select())
    with pytest.raises(ValueError, match="empty"):
        ParamNameSubnetMask(mlp(), [])
    with pytest.raises(ValueError, match="do not exist"):
        ParamNameSubnetMask(mlp(), ["0.weight", "3.weight"])


def test_module_name_mask():
    assert torch.equal(ModuleNameSubnetMask(mlp(), ["2"]).select(), r(16, 26))
    assert torch.equal(ModuleNameSubnetMask(mlp(), ["0", "2"]).select(), r(0, N_PARAMS))
    # containers select all parameters below them
    torch.manual_seed(0)
    nested = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3)),
                           nn.Linear(3, 1))  # 9 + 12 + 4 parameters
    assert torch.equal(ModuleNameSubnetMask(nested, ["0"]).select(), r(0, 21))
    assert torch.equal(ModuleNameSubnetMask(nested, ["0.2", "1"]).select(), r(9, 25))


def test_module_name_mask_errors():
    with pytest.raises(ValueError, match="empty"):
        ModuleNameSubnetMask(mlp(), [])
    with pytest.raises(ValueError, match="do not exist"):
        ModuleNameSubnetMask(mlp(), ["5"])
    with pytest.raises(ValueError, match="does not have any parameters"):
        ModuleNameSubnetMask(mlp(), ["1"])


def test_last_layer_mask():
    model = mlp()
    model.train()
    assert torch.equal(LastLayerSubnetMask(model).select(cls_loader()), r(16, 26))
    assert model.training  # the search for the last layer leaves the mode alone
    assert torch.equal(LastLayerSubnetMask(mlp(), "2").select(), r(16, 26))
    assert torch.equal(LastLayerSubnetMask(mlp(), "0").select(), r(0, 16))
    with pytest.raises(ValueError, match="train loader"):
        LastLayerSubnetMask(mlp()).select()
    with pytest.raises(ValueError):
        LastLayerSubnetMask(mlp(), "1")  # ReLU is no nn.Linear
    with pytest.raises(ValueError):
        LastLayerSubnetMask(mlp(), "9")


# ------------------------------------------------------------ variance-based
def test_diag_laplace_variance_mask():
    model = mlp()
    la = DiagLaplace(model, "classification", prior_precision=0.5)
    mask = LargestVarianceDiagLaplaceSubnetMask(model, 5, la)
    unfitted = DiagLaplace(model, "classification")
    with pytest.raises(ValueError, match="train loader"):
        LargestVarianceDiagLaplaceSubnetMask(model, 5, unfitted).select()
    idx = mask.select(cls_loader())
    var = la.posterior_variance
    assert var.shape == (N_PARAMS,)
    assert torch.equal(mask.param_scores, var)
    assert_top(idx, var, 5)  # (dead ReLU units tie at variance 1 / prior)
    # an already fitted DiagLaplace is used as is
    assert torch.equal(LargestVarianceDiagLaplaceSubnetMask(model, 5, la).select(), idx)
    # one fitted on a copy of the network scores the same weights: accepted, same choice
    twin = DiagLaplace(deepcopy(model), "classification", prior_precision=0.5)
    twin.fit(cls_loader())
    assert torch.equal(LargestVarianceDiagLaplaceSubnetMask(model, 5, twin).select(), idx)


def test_diag_laplace_variance_mask_of_another_network_is_refused():
    # same architecture, other weights: its variances describe other parameters
    other = DiagLaplace(mlp(seed=1), "classification")
    other.fit(cls_loader())
    with pytest.raises(ValueError, match="another network"):
        LargestVarianceDiagLaplaceSubnetMask(mlp(), 5, other)
    with pytest.raises(ValueError, match="diag_laplace_model must be"):
        LargestVarianceDiagLaplaceSubnetMask(mlp(), 5, mlp())


def test_swag_variance_mask():
    model = mlp()
    before = parameters_to_vector(model.parameters()).detach().clone()
    mask = LargestVarianceSWAGSubnetMask(model, 6, swag_n_snapshots=4, swag_lr=0.1)
    with pytest.raises(ValueError, match="train loader"):
        mask.select()
    idx = mask.select(cls_loader())
    var = mask.param_scores
    assert var.shape == (N_PARAMS,) and bool((var > 0).all())
    assert_top(idx, var, 6)
    assert torch.equal(parameters_to_vector(model.parameters()), before)  # model untouched
    with pytest.raises(ValueError, match="likelihood"):
        LargestVarianceSWAGSubnetMask(model, 6, likelihood="poisson")


def test_swag_matches_explicit_snapshots():
    model, loader = mlp(), cls_loader()
    kw = dict(lr=0.05, momentum=0.9, weight_decay=3e-4)
    var = fit_diagonal_swag_var(model, loader, nn.CrossEntropyLoss(), n_snapshots_total=3,
                                snapshot_freq=2, **kw)
    copy = deepcopy(model)
    opt = torch.optim.SGD(copy.parameters(), **kw)
    snapshots = []
    for epoch in range(5):  # snapshots after epochs 0, 2, 4
        for X, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(copy(X), y).backward()
            opt.step()
        if epoch % 2 == 0:
            snapshots.append(parameters_to_vector(copy.parameters()).detach())
    expected = torch.stack(snapshots).var(dim=0, unbiased=False).clamp(min=1e-30)
    torch.testing.assert_close(var, expected, rtol=1e-8, atol=1e-20)


def test_swag_zero_variance_cases():
    model, loader, ce = mlp(), cls_loader(), nn.CrossEntropyLoss()
    # lr = 0: the weights never move
    var = fit_diagonal_swag_var(model, loader, ce, n_snapshots_total=3, lr=0.0, min_var=1e-12)
    assert torch.equal(var, torch.full((N_PARAMS,), 1e-12, dtype=DT))
    # one snapshot has no spread
    var = fit_diagonal_swag_var(model, loader, ce, n_snapshots_total=1, lr=0.1)
    assert torch.equal(var, torch.full((N_PARAMS,), 1e-30, dtype=DT))
    # frozen parameters do not move; the others do
    model[0].weight.requires_grad_(False)
    var = fit_diagonal_swag_var(model, loader, ce, n_snapshots_total=3, lr=0.1)
    assert torch.equal(var[:12], torch.full((12,), 1e-30, dtype=DT))
    assert bool((var[12:] > 1e-30).all())
    with pytest.raises(ValueError):
        fit_diagonal_swag_var(model, loader, ce, n_snapshots_total=0)


def test_swag_regression_targets_do_not_broadcast():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).to(DT)
    X = torch.randn(12, 2, dtype=DT)
    y = torch.randn(12, dtype=DT)
    flat = LargestVarianceSWAGSubnetMask(model, 3, "regression", swag_n_snapshots=3)
    col = LargestVarianceSWAGSubnetMask(model, 3, "regression", swag_n_snapshots=3)
    flat.select(DataLoader(TensorDataset(X, y), batch_size=6))
    col.select(DataLoader(TensorDataset(X, y[:, None]), batch_size=6))
    torch.testing.assert_close(flat.param_scores, col.param_scores)
