"""``fit(override=False)`` accumulates exactly (float64).

Fitting data set ``A`` and then ``B`` with ``override=False`` equals one fit on the
concatenation ``A ∪ B`` — in particular fitting the same data twice equals one fit on
the data concatenated with itself (for KFAC: ``kron(2B, A)``, twice the curvature, not
``kron(2B, 2A)``) — for every structure and subset, also when the first fit comes
back through ``state_dict`` (and ``torch.save``/``torch.load``).
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.utils.matrix import KronDecomposed

DT = torch.float64
VARIANTS = [("all", s) for s in ("full", "kron", "diag")] + [
    ("last_layer", s) for s in ("full", "kron", "diag")] + [
    ("subnetwork", s) for s in ("full", "diag")]
IDS = [f"{a}-{b}" for a, b in VARIANTS]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, generator=g, dtype=DT), torch.randn(n, 2, generator=g, dtype=DT))


def loader(X: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(X, y), batch_size=4)


def make(model: nn.Module, subset: str, structure: str):
    kwargs = {}
    if subset == "subnetwork":
        kwargs["subnetwork_indices"] = torch.tensor([0, 3, 7, 20, 25])
    return Laplace(model, "regression", subset_of_weights=subset, hessian_structure=structure,
                   sigma_noise=0.4, prior_precision=0.7, **kwargs)


def precision(la) -> torch.Tensor:
    """The dense posterior precision ``(P, P)``."""
    P = la.posterior_precision
    if isinstance(P, KronDecomposed):
        return P.to_matrix()
    return torch.diag(P) if P.ndim == 1 else P


def assert_same_posterior(la, ref) -> None:
    assert la.n_data == ref.n_data
    assert torch.allclose(torch.as_tensor(la.loss), torch.as_tensor(ref.loss), rtol=1e-12)
    assert torch.allclose(precision(la), precision(ref), rtol=1e-10, atol=1e-12)
    assert torch.allclose(la.log_marginal_likelihood(), ref.log_marginal_likelihood(),
                          rtol=1e-10)
    X = data(3, 9)[0]
    assert torch.allclose(la(X)[1], ref(X)[1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("subset,structure", VARIANTS, ids=IDS)
def test_same_data_twice_equals_the_doubled_data(subset, structure):
    model = mlp()
    X, y = data(12, 1)
    la = make(model, subset, structure)
    la.fit(loader(X, y))
    once = precision(la).clone()
    la.fit(loader(X, y), override=False)
    ref = make(model, subset, structure)
    ref.fit(loader(torch.cat([X, X]), torch.cat([y, y])))
    assert_same_posterior(la, ref)
    # Twice the curvature of one fit (the prior counted once).
    prior = 0.7 * torch.eye(once.shape[0], dtype=DT)
    assert torch.allclose(precision(la) - prior, 2 * (once - prior), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("subset,structure", VARIANTS, ids=IDS)
def test_two_data_sets_equal_their_union(subset, structure):
    model = mlp()
    (XA, yA), (XB, yB) = data(8, 1), data(20, 2)  # unequal sizes: A rescaled by 8/28
    la = make(model, subset, structure)
    la.fit(loader(XA, yA))
    la.fit(loader(XB, yB), override=False)
    ref = make(model, subset, structure)
    ref.fit(loader(torch.cat([XA, XB]), torch.cat([yA, yB])))
    assert_same_posterior(la, ref)


@pytest.mark.parametrize("subset,structure", VARIANTS, ids=IDS)
def test_accumulation_after_a_state_dict_round_trip(subset, structure):
    model = mlp()
    (XA, yA), (XB, yB) = data(8, 1), data(12, 2)
    first = make(model, subset, structure)
    first.fit(loader(XA, yA))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    la = make(model, subset, structure)
    la.load_state_dict(torch.load(buffer, weights_only=True))
    la.fit(loader(XB, yB), override=False)
    ref = make(model, subset, structure)
    ref.fit(loader(torch.cat([XA, XB]), torch.cat([yA, yB])))
    assert_same_posterior(la, ref)


def test_kron_factors_of_a_repeated_fit():
    """The raw factors: ``B`` doubles, ``A`` (a data-set average) stays."""
    model = mlp()
    X, y = data(12, 1)
    la = make(model, "all", "kron")
    la.fit(loader(X, y))
    once = [[f.clone() for f in F] for F in la.H_facs.kfacs]
    la.fit(loader(X, y), override=False)
    for F, G in zip(la.H_facs.kfacs, once):
        assert torch.allclose(F[0], 2 * G[0], rtol=1e-12)
        if len(F) == 2:
            assert torch.allclose(F[1], G[1], rtol=1e-12)
