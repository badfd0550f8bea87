"""States saved by laplace-torch 0.3 load here and give its numbers.

The fixtures in ``tests/fixtures/laplace_torch_0.3_states`` were written by laplace-torch
0.3 itself (``la.state_dict()`` after ``fit`` of a 2→3→2 tanh network on 20 regression
points, prior precision 0.7), with its log marginal likelihood and GLM predictive
variances at four inputs. laplace-torch's states have no ``output_shape``, and its
last-layer states keep a batch (``data``) instead of the layer's name. ``functional_gp.pt``
is laplace-torch's state of a ``FunctionalLaplace`` (30 points, ``n_subset=30``), which
pickles its training loader: refused by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from laplace import Laplace

torch.set_num_threads(1)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "laplace_torch_0.3_states"
VARIANTS = [(s, h) for s in ("all", "last_layer") for h in ("full", "kron", "diag")]


@pytest.mark.parametrize(("subset", "structure"), VARIANTS, ids=lambda v: str(v))
def test_a_laplace_torch_state_loads_with_its_numbers(subset, structure):
    problem = torch.load(FIXTURES / "problem.pt", weights_only=True)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    model.load_state_dict(problem["model"])
    state = torch.load(FIXTURES / f"{subset}_{structure}.pt", weights_only=True)
    assert "output_shape" not in state
    la = Laplace(model, "regression", subset, structure)
    la.load_state_dict(state)
    expected = problem["results"][f"{subset}_{structure}"]
    assert float(la.prior_precision) == pytest.approx(0.7)
    assert float(la.log_marginal_likelihood()) == pytest.approx(float(expected["lml"]),
                                                                  rel=1e-10)
    _, f_var = la(problem["X"][:4])
    torch.testing.assert_close(f_var, expected["f_var"], rtol=1e-8, atol=1e-12)


def test_a_laplace_torch_function_space_state_is_named():
    """laplace-torch's function-space state (``functional_gp.pt``, written by it after a
    ``FunctionalLaplace`` fit) pickles its training loader instead of the subset's inputs:
    refused as what it is, not as "not a state_dict()"."""
    from laplace import FunctionalLaplace

    state = torch.load(FIXTURES / "functional_gp.pt", weights_only=False)  # a DataLoader
    assert "train_loader" in state and "X_M" not in state
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    la = FunctionalLaplace(model, "regression", n_subset=30)
    with pytest.raises(ValueError, match="function-space state saved by laplace-torch"):
        la.load_state_dict(state)


@pytest.mark.parametrize("structure", ("full", "kron", "diag"))
def test_a_last_layer_state_carries_what_laplace_torch_loads_it_by(structure):
    """laplace-torch 0.3 loads a last-layer state by ``_last_layer_name`` (the constructor's
    argument, compared with its own) and ``data`` (a batch whose ``data[0][:1]`` finds the
    layer). Ours carries both: ``data`` is one input row, a copy that does not keep the
    batch alive, and a loader that knows only ``data`` (laplace-torch's rule: the name
    removed) finds the same layer and gives the same predictive."""
    torch.manual_seed(0)
    X, y = torch.randn(20, 2, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    la = Laplace(model, "regression", "last_layer", structure)
    la.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8))
    state = la.state_dict()
    assert state["_last_layer_name"] is None
    probe, labels = state["data"]
    assert labels is None
    torch.testing.assert_close(probe, X[:1], rtol=0, atol=0)
    assert probe.untyped_storage().data_ptr() != X.untyped_storage().data_ptr()
    del state["last_layer_name"]  # what laplace-torch's loader reads: data and the rest
    fresh = Laplace(model, "regression", "last_layer", structure)
    fresh.load_state_dict(state)
    assert fresh.model.last_layer_name == "2"
    for a, b in zip(fresh(X[:4]), la(X[:4])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    again = fresh.state_dict()  # the loaded LA saves the same row again
    torch.testing.assert_close(again["data"][0], X[:1], rtol=0, atol=0)


def test_a_named_last_layer_state_keeps_the_argument_and_a_dict_row():
    """With ``last_layer_name`` given, ``_last_layer_name`` is that argument (laplace-torch
    compares it with its own LA's); with dict batches ``data`` is a dict of one row."""

    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()

        def forward(self, batch):
            return self.net(batch["input_ids"])

    torch.manual_seed(0)
    X, y = torch.randn(12, 2, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64)
    rows = [{"input_ids": X[i], "labels": y[i]} for i in range(12)]
    la = Laplace(DictModel(), "regression", "last_layer", "diag", last_layer_name="net.2")
    la.fit(torch.utils.data.DataLoader(rows, batch_size=4))
    state = la.state_dict()
    assert state["_last_layer_name"] == "net.2"
    torch.testing.assert_close(state["data"][0]["input_ids"], X[:1], rtol=0, atol=0)


def test_a_sample_form_state_can_be_saved_dense_for_laplace_torch():
    """A full LA on fewer curvature rows than weights keeps its rows ``(M, P)``;
    ``state_dict(dense=True)`` stores ``H`` ``(P, P)`` (the form laplace-torch 0.3 loads),
    which loads here with the same evidence and predictive; the option is a checked bool
    of full LAs only."""
    torch.manual_seed(0)
    X, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()  # P = 13
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=5)
    la = Laplace(model, "regression", "all", "full")
    la.fit(loader)
    assert la.uses_sample_space
    rows, dense = la.state_dict(), la.state_dict(dense=True)
    assert rows["precision_form"] == "sample" and rows["H"].shape == (10, 13)
    assert dense["precision_form"] == "dense" and dense["H"].shape == (13, 13)
    torch.testing.assert_close(dense["H"], rows["H"].T @ rows["H"])
    fresh = Laplace(model, "regression", "all", "full")
    fresh.load_state_dict(dense)
    assert float(fresh.log_marginal_likelihood()) == pytest.approx(
        float(la.log_marginal_likelihood()), rel=1e-10)
    for a, b in zip(fresh(X[:3]), la(X[:3])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="dense"):
        la.state_dict(dense="yes")
    kron = Laplace(model, "regression", "all", "kron")
    kron.fit(loader)
    with pytest.raises(TypeError):
        kron.state_dict(dense=True)
