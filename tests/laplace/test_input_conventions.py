"""Inputs laplace-torch handles differently or not at all, each checked against the
supported route: recurrent layers with the native backend, 1-D inputs, ``(n,)``
regression targets and BackPACK on models with frozen parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.curvature import BackPackGGN
from laplace.utils.errors import MissingKeyError

torch.set_num_threads(1)
DT = torch.float64


# ------------------------------------------------------------ recurrent layers
class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = cell(2, 3, batch_first=True)
        self.head = nn.Linear(3, 1)
        self.to(DT)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def per_sample_jacobians(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``(n, 1, P)`` by ``jacrev`` on one sample at a time (no ``vmap``)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    rows = []
    for x in X:
        jac = jacrev(lambda p, x=x: functional_call(model, p, (x[None],))[0])(params)
        rows.append(torch.cat([j.reshape(1, -1) for j in jac.values()], dim=1))
    return torch.stack(rows)


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM, nn.RNN], ids=lambda c: c.__name__)
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_recurrent_layers_with_the_native_backend(cell, structure):
    model = Recurrent(cell)
    g = torch.Generator().manual_seed(1)
    X, Xs = torch.randn(6, 4, 2, generator=g, dtype=DT), torch.randn(3, 4, 2, generator=g,
                                                                       dtype=DT)
    y = torch.randn(6, 1, generator=g, dtype=DT)
    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure=structure,
                 sigma_noise=0.5, prior_precision=2.0)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=3))
    J = per_sample_jacobians(model, X)[:, 0]  # (n, P)
    H = J.T @ J  # GGN of ½‖f − y‖²
    if structure == "diag":
        H = torch.diag(H.diagonal())
    precision = H / 0.25 + 2.0 * torch.eye(la.n_params, dtype=DT)
    got = la.posterior_precision
    torch.testing.assert_close(torch.diag(got) if got.ndim == 1 else got, precision)
    f_mu, f_var = la(Xs)
    Js = per_sample_jacobians(model, Xs)[:, 0]
    torch.testing.assert_close(f_mu, model(Xs))
    torch.testing.assert_close(f_var[:, 0, 0], torch.einsum(
        "np,pq,nq->n", Js, torch.linalg.inv(precision), Js))


def test_recurrent_layers_with_kron_are_refused_by_name():
    X, y = torch.randn(4, 3, 2, dtype=DT), torch.randn(4, 1, dtype=DT)
    la = Laplace(Recurrent(nn.GRU), "regression", subset_of_weights="all",
                 hessian_structure="kron")
    with pytest.raises(ValueError, match=r"module 'rnn' of type GRU has trainable parameters"):
        la.fit(DataLoader(TensorDataset(X, y), batch_size=2))


# ------------------------------------------------------------------ 1-D inputs
class ScalarInputs(nn.Module):
    """Takes ``(n,)`` scalar inputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x[:, None])


@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_one_dimensional_inputs_are_a_batch_of_scalars(structure):
    """``x`` of shape ``(n,)`` is ``n`` scalar inputs: the same numbers as ``x[:, None]``
    into the same network."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).to(DT)
    x = torch.linspace(-2, 2, 8, dtype=DT)
    y = torch.sin(x)[:, None]
    scalar = Laplace(ScalarInputs(net), "regression", "all", structure)
    column = Laplace(net, "regression", "all", structure)
    scalar.fit(DataLoader(TensorDataset(x, y), batch_size=4))
    column.fit(DataLoader(TensorDataset(x[:, None], y), batch_size=4))
    xs = torch.tensor([-0.3, 0.7, 1.5], dtype=DT)
    for got, want in zip(scalar(xs), column(xs[:, None])):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(scalar.log_marginal_likelihood(),
                               column.log_marginal_likelihood())


def test_a_point_without_batch_dimension_is_refused():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    X = torch.randn(6, 3, dtype=DT)
    la = Laplace(net, "regression", "last_layer", "full")
    la.fit(DataLoader(TensorDataset(X, X[:, :2]), batch_size=3))
    with pytest.raises(ValueError, match=r"Input x of shape \(3,\) gave a model output of "
                                         r"shape \(2,\).*Pass one point as x\[None\]"):
        la(X[0])
    with pytest.raises(ValueError, match=r"Input x of shape \(3,\)"):
        la(X[0], pred_type="nn")


# -------------------------------------------------------- (n,) targets, BackPACK
@pytest.mark.parametrize("subset,structure", [("all", "full"), ("all", "kron"),
                                              ("last_layer", "diag")])
def test_vector_targets_equal_column_targets(subset, structure):
    """laplace-torch refuses ``(n,)`` targets for an ``(n, 1)`` output; they are reshaped
    to ``(n, 1)`` here, with the numbers of the ``(n, 1)`` route."""
    torch.manual_seed(0)
    X = torch.randn(10, 3, dtype=DT)
    y = torch.sin(X[:, 0])
    las = []
    for targets in (y, y[:, None]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(DT)
        la = Laplace(net, "regression", subset, structure, sigma_noise=0.4)
        la.fit(DataLoader(TensorDataset(X, targets), batch_size=5))
        las.append(la)
    torch.testing.assert_close(las[0].log_marginal_likelihood(),
                               las[1].log_marginal_likelihood(), rtol=1e-13, atol=0)
    for got, want in zip(las[0](X[:3]), las[1](X[:3])):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_backpack_with_frozen_parameters_equals_native(structure):
    """laplace-torch refuses BackPACK when some parameters are frozen; here the Laplace
    approximation covers the trainable ones, as the native backend does."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    net[0].weight.requires_grad_(False)
    X = torch.randn(8, 3, dtype=DT)
    y = torch.randint(0, 2, (8,))
    las = []
    for backend in (BackPackGGN, None):
        la = Laplace(net, "classification", "all", structure, backend=backend)
        la.fit(DataLoader(TensorDataset(X, y), batch_size=4))
        las.append(la)
    assert las[0].n_params == 4 + 8 + 2
    torch.testing.assert_close(las[0].log_marginal_likelihood(),
                               las[1].log_marginal_likelihood(), rtol=1e-10, atol=0)
    torch.testing.assert_close(las[0](X[:3]), las[1](X[:3]), rtol=1e-10, atol=0)


# ------------------------------------------------------------- error classes
def test_missing_key_error_is_a_key_error_and_a_value_error():
    with pytest.raises(MissingKeyError) as info:
        Laplace(nn.Sequential(nn.Linear(3, 1)), "regression", "last_layer", "full",
                last_layer_name="head")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    # str() is the message itself, not KeyError's quoted repr of it
    assert str(info.value) == "The model has no module named 'head' (last_layer_name)."


# ----------------------------------------------- loaders that yield part of the data
def _regression_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).to(DT)


@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_a_loader_over_part_of_the_data_counts_the_points_it_yields(structure):
    """A sampler over 20 of 40 points, or ``drop_last`` leaving 32: the posterior is the
    one of those points alone (laplace-torch counts ``len(dataset)``, 40, against a
    curvature of 20 or 32 points)."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(40, 2, generator=g, dtype=DT)
    y = torch.sin(3 * X.sum(-1, keepdim=True))
    data = TensorDataset(X, y)
    net = _regression_net()
    for loader, rows in (
        (DataLoader(data, batch_size=8, sampler=list(range(0, 40, 2))), slice(0, 40, 2)),
        (DataLoader(data, batch_size=16, drop_last=True), slice(0, 32)),
    ):
        la = Laplace(net, "regression", hessian_structure=structure, sigma_noise=0.3)
        la.fit(loader)
        alone = Laplace(net, "regression", hessian_structure=structure, sigma_noise=0.3)
        alone.fit(DataLoader(TensorDataset(X[rows], y[rows]), batch_size=8))
        assert la.n_data == alone.n_data == len(X[rows])
        torch.testing.assert_close(la.log_marginal_likelihood(),
                                   alone.log_marginal_likelihood(), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="drops its only, partial batch"):
        Laplace(net, "regression", subset_of_weights="all", hessian_structure=structure).fit(
            DataLoader(data, batch_size=64, drop_last=True))
