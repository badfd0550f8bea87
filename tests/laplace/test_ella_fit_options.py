"""laplace-torch 0.3's ``ELLA.fit`` keywords: ``val_loader``/``val_steps`` (validation NLL
recorded during the fit) and ``balanced`` (a class-balanced subset), and its per-batch
``fit_history_["processed_examples"]``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import ELLA
from laplace.curvature.curvature import output_hessian_sqrt
from laplace.posterior.validation_search import predictive_nll

torch.set_num_threads(1)
DT = torch.float64


def problem(likelihood: str):
    g = torch.Generator().manual_seed(1)
    C = 2 if likelihood == "regression" else 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, C)).to(DT)
    X = torch.randn(20, 3, generator=g, dtype=DT)
    if likelihood == "regression":
        y = torch.randn(20, C, generator=g, dtype=DT)
    else:  # 12, 5 and 3 points of the three classes
        y = torch.cat([torch.zeros(12), torch.ones(5), torch.full((3,), 2.0)]).long()
    X_val = torch.randn(7, 3, generator=g, dtype=DT)
    y_val = (torch.randn(7, C, generator=g, dtype=DT) if likelihood == "regression"
             else torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    return (model, DataLoader(TensorDataset(X, y), batch_size=4),
            DataLoader(TensorDataset(X_val, y_val), batch_size=3))


def ella(model, likelihood: str) -> ELLA:
    kw = {"sigma_noise": 0.5} if likelihood == "regression" else {}
    return ELLA(model, likelihood, 8, n_eigenvalues=5, prior_precision=0.7, **kw)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize("val_steps", [None, 2, 5])
def test_validation_nll_during_the_fit(likelihood, val_steps):
    """Every ``val_steps`` batches (five batches here) the NLL of the posterior of the
    batches so far, and the final posterior's NLL once more unless the last batch just
    recorded it; the fit itself is unchanged."""
    model, train, val = problem(likelihood)
    la = ella(model, likelihood)
    la.fit(train, val_loader=val, val_steps=val_steps)
    plain = ella(model, likelihood)
    plain.fit(train)
    torch.testing.assert_close(la.G, plain.G, rtol=1e-12, atol=1e-14)
    history = la.fit_history_
    assert history["processed_examples"] == [4.0, 8.0, 12.0, 16.0, 20.0]
    steps = {None: [5], 2: [2, 4, 5], 5: [5]}[val_steps]
    assert len(history["val_nll"]) == len(steps)
    assert history["val_nll"][-1] == pytest.approx(predictive_nll(la, val), rel=1e-12)
    # an intermediate entry: the NLL with G summed over the first batches only
    reference = ella(model, likelihood)
    reference.fit(train)
    for step, recorded in zip(steps[:-1], history["val_nll"][:-1]):
        G = torch.zeros_like(la.G)
        for X, _ in list(train)[:step]:
            J, f = reference._jacobians(X)
            phi = output_hessian_sqrt(f, likelihood, reference.backend.factor) \
                @ (J @ reference._Psi)
            G += torch.einsum("nck,ncl->kl", phi, phi)
        reference.G = G
        reference._decompose()
        assert recorded == pytest.approx(predictive_nll(reference, val), rel=1e-10)
        assert recorded != pytest.approx(history["val_nll"][-1], rel=1e-6)


def test_balanced_subset_takes_the_classes_in_turn():
    """Twelve, five and three points of classes 0, 1, 2 and a subset of eight: three,
    three and two of each, each class's points in a random order from one generator
    seeded with ``seed`` (laplace-torch's draw)."""
    model, train, _ = problem("classification")
    la = ella(model, "classification")
    la.fit(train, balanced=True)
    labels = train.dataset.tensors[1]
    drawn = torch.as_tensor(la.sod_indices)
    assert labels[drawn].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    generator = torch.Generator().manual_seed(la.seed)
    orders = [torch.where(labels == c)[0] for c in range(3)]
    orders = [o[torch.randperm(len(o), generator=generator)] for o in orders]
    assert drawn.tolist() == [int(orders[c][t]) for t, c in
                              [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]]
    plain = ella(model, "classification")
    plain.fit(train)
    assert sorted(plain.sod_indices.tolist()) != sorted(drawn.tolist())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"val_steps": 0}, "val_steps must be a positive integer"),
    ({"val_steps": True}, "val_steps must be a positive integer"),
    ({"balanced": "yes"}, "balanced"),
    ({"val_loader": torch.zeros(3)}, "val_loader must be a DataLoader"),
    ({"val_loader": 3}, "val_loader must be a DataLoader"),
])
def test_fit_options_are_checked(kwargs, message):
    model, train, val = problem("classification")
    la = ella(model, "classification")
    with pytest.raises(ValueError, match=message):
        la.fit(train, **{"val_loader": val, **kwargs})
    assert la.n_outputs is None


def test_balanced_needs_classes():
    model, train, _ = problem("regression")
    with pytest.raises(ValueError, match="classification only"):
        ella(model, "regression").fit(train, balanced=True)
