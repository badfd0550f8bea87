"""``fit`` and ``load_state_dict`` that raise leave the Laplace approximation as it was.

Before, an error in a later fit batch (here NaN targets in the second batch) left the
number of outputs, part of the loss and part of the curvature behind: a first fit that
failed gave an evidence and predictions from the batches before the error, and a refit
that failed mixed two data sets. A state with a refused entry left the entries before it
loaded, and a NaN loss or a wrong count loaded silently. All fail loudly now and leave
the earlier state intact.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import ELLA, Laplace, VaLLA
from laplace.curvature import AsdlHessian
from laplace.utils.errors import NotFittedError

torch.set_num_threads(1)
DT = torch.float64

VARIANTS = [
    ("all", "full"), ("all", "kron"), ("all", "diag"), ("all", "lowrank"), ("all", "gp"),
    ("last_layer", "full"), ("last_layer", "kron"), ("last_layer", "diag"),
    ("last_layer", "gp"), ("subnetwork", "full"), ("subnetwork", "diag"),
]
IDS = ["-".join(v) for v in VARIANTS]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).to(DT)


def make(subset: str, structure: str, **kwargs) -> object:
    model = net()
    if structure == "gp":
        kwargs["n_subset"] = 10
    if subset == "subnetwork":
        kwargs["subnetwork_indices"] = torch.arange(0, 31, 2)
    return Laplace(model, "regression", subset_of_weights=subset, hessian_structure=structure,
                   **kwargs)


def loader(seed: int, nan_in_second_batch: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(10, 3, generator=g, dtype=DT)
    y = torch.sin(X[:, :1]) + 0.1 * torch.randn(10, 1, generator=g, dtype=DT)
    if nan_in_second_batch:
        y[7] = float("nan")
    return DataLoader(TensorDataset(X, y), batch_size=5)


X_TEST = torch.randn(4, 3, generator=torch.Generator().manual_seed(9), dtype=DT)


def summary(la) -> list[torch.Tensor]:
    pred_type = "glm" if hasattr(la, "H") else "gp"
    mean, var = la(X_TEST, pred_type=pred_type)
    return [la.log_marginal_likelihood().detach(), mean, var,
            torch.as_tensor(float(la.n_data), dtype=DT)]


@pytest.mark.parametrize(("subset", "structure"), VARIANTS, ids=IDS)
def test_a_failed_first_fit_leaves_the_approximation_unfitted(subset, structure):
    la = make(subset, structure)
    with pytest.raises(ValueError, match="NaN"):
        la.fit(loader(1, nan_in_second_batch=True))
    assert la.n_data == 0 and la.n_outputs is None
    with pytest.raises(NotFittedError):
        la.log_marginal_likelihood()
    with pytest.raises(NotFittedError):
        la.state_dict()
    la.fit(loader(1))  # and a correct fit afterwards is the fit of a fresh object
    fresh = make(subset, structure)
    fresh.fit(loader(1))
    for a, b in zip(summary(la), summary(fresh)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("subset", "structure"), VARIANTS, ids=IDS)
def test_a_failed_refit_keeps_the_earlier_fit(subset, structure):
    la = make(subset, structure)
    la.fit(loader(1))
    before = summary(la)
    with pytest.raises(ValueError, match="NaN"):
        la.fit(loader(2, nan_in_second_batch=True))
    for a, b in zip(summary(la), before):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


ACCUMULATING = [(subset, structure, form) for subset, structure in VARIANTS
                for form in (("dense", "sample") if structure == "full" else (None,))
                if structure in ("full", "kron", "diag")]


@pytest.mark.parametrize(("subset", "structure", "precision_form"), ACCUMULATING,
                         ids=["-".join(filter(None, case)) for case in ACCUMULATING])
def test_a_failed_accumulating_fit_keeps_the_earlier_curvature(subset, structure,
                                                               precision_form):
    """``fit(override=False)`` adds to the stored curvature in place (the dense ``H`` and
    the sample-space rows of the full structure): the failed addition is undone."""
    kwargs = {"precision_form": precision_form} if precision_form else {}
    la = make(subset, structure, **kwargs)
    la.fit(loader(1))
    before = summary(la)
    with pytest.raises(ValueError, match="NaN"):
        la.fit(loader(2, nan_in_second_batch=True), override=False)
    for a, b in zip(summary(la), before):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    la.fit(loader(2), override=False)  # the same sum as two clean fits
    twice = make(subset, structure, **kwargs)
    twice.fit(loader(1))
    twice.fit(loader(2), override=False)
    for a, b in zip(summary(la), summary(twice)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_a_backend_that_cannot_fit_leaves_the_approximation_unfitted():
    """ASDL has no Kronecker-factored Hessian: the error comes from the backend, after the
    number of outputs was set (which used to mark the object as fitted)."""
    la = make("all", "kron", backend=AsdlHessian)
    with pytest.raises(NotImplementedError, match="Kronecker"):
        la.fit(loader(1))
    assert la.n_outputs is None
    with pytest.raises(NotFittedError):
        la.state_dict()


class NaNAbove(nn.Module):
    """A network whose output is NaN where the first input exceeds 1.5 (finite inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return torch.where(x[:, :1] > 1.5, torch.full_like(out, float("nan")), out)


@pytest.mark.parametrize("n_eigenvalues", [2, 30], ids=["products", "dense"])
def test_low_rank_refuses_outputs_that_are_not_finite(n_eigenvalues):
    """Both eigensolver routes (curvature-vector products for a small rank, the dense
    curvature for a large one) refuse a NaN loss, as the other structures do per batch."""
    X = torch.zeros(10, 3, dtype=DT)
    X[7, 0] = 2.0
    data = DataLoader(TensorDataset(X, torch.zeros(10, 1, dtype=DT)), batch_size=5)
    la = Laplace(NaNAbove(), "regression", hessian_structure="lowrank",
                 subset_of_weights="all", n_eigenvalues=n_eigenvalues)
    with pytest.raises(ValueError, match="loss is nan"):
        la.fit(data)
    assert la.n_outputs is None


# ------------------------------------------------------------ load_state_dict
BAD_ENTRIES = {
    "loss": (torch.tensor(float("nan"), dtype=DT), "loss must be a finite scalar"),
    "n_data": (0, "n_data must be a positive integer"),
    "n_outputs": (-1, "n_outputs must be a positive integer"),
    "prior_precision": (torch.tensor([float("nan")], dtype=DT), "prior_precision"),
    "sigma_noise": (torch.tensor(-1.0, dtype=DT), "sigma_noise"),
    "temperature": (-2.0, "temperature"),
}


@pytest.mark.parametrize("entry", list(BAD_ENTRIES))
@pytest.mark.parametrize(("subset", "structure"), VARIANTS, ids=IDS)
def test_a_refused_state_leaves_the_approximation_as_it_was(subset, structure, entry):
    source = make(subset, structure)
    source.fit(loader(1))
    state = dict(source.state_dict())
    value, message = BAD_ENTRIES[entry]
    state[entry] = value
    la = make(subset, structure)
    la.fit(loader(2))
    before = summary(la)
    with pytest.raises(ValueError, match=message):
        la.load_state_dict(state)
    for a, b in zip(summary(la), before):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("subset", "structure"), [v for v in VARIANTS if v[1] != "gp"],
                         ids=[i for v, i in zip(VARIANTS, IDS) if v[1] != "gp"])
def test_an_output_shape_that_disagrees_with_n_outputs_is_refused(subset, structure):
    source = make(subset, structure)
    source.fit(loader(1))
    state = {**source.state_dict(), "output_shape": [2]}
    la = make(subset, structure)
    with pytest.raises(ValueError, match="output_shape"):
        la.load_state_dict(state)
    assert la.n_outputs is None


@pytest.mark.parametrize("cls", [ELLA, VaLLA])
def test_a_function_space_state_of_another_model_leaves_the_approximation_as_it_was(cls):
    """ELLA and VaLLA check their feature basis after the common entries are set."""
    def build(model):
        kwargs = {"n_eigenvalues": 3} if cls is ELLA else {}
        return cls(model, "regression", 10, prior_precision=0.5, **kwargs)

    source = build(net())
    source.fit(loader(1))
    state = source.state_dict()
    key = "Psi" if cls is ELLA else "V"
    state = {**state, key: state[key][:-1]}
    la = build(net())
    la.fit(loader(2))
    before = summary(la)
    with pytest.raises(ValueError, match="parameters"):
        la.load_state_dict(state)
    for a, b in zip(summary(la), before):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
