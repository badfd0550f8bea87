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
