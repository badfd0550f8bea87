"""laplace-torch 0.3's ``laplace.utils`` helpers (``laplace.utils.functional_utils``):
their documented behaviour on known inputs, and their import paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
)

import laplace
import laplace.baselaplace
import laplace.utils
from laplace.utils import (
    batch_size,
    classification_targets,
    concatenate_rows,
    draw_gaussian,
    preserve_model_gradients,
    regression_targets,
    same_configuration,
    select_rows,
    split_batch,
    subset_loader,
    to_device,
    training_indices,
)

DT = torch.float64
NAMES = ("batch_size", "classification_targets", "concatenate_rows", "draw_gaussian",
         "preserve_model_gradients", "regression_targets", "same_configuration",
         "select_rows", "split_batch", "subset_loader", "to_device", "training_indices")


def test_import_paths():
    for name in NAMES:
        assert name in laplace.utils.__all__
        if name != "batch_size":  # laplace-torch's baselaplace imports the others
            assert getattr(laplace.baselaplace, name) is getattr(laplace.utils, name)
    assert laplace.BaseFunctionalLaplace is laplace.FunctionalLaplace


def covariances() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 2, 2, generator=g, dtype=DT)
    full = A @ A.mT + 0.1 * torch.eye(2, dtype=DT)
    v = torch.randn(3, 2, 1, generator=g, dtype=DT)
    return full, v @ v.mT  # positive definite, and rank one (singular)


@pytest.mark.parametrize("singular", [False, True])
def test_draw_gaussian_per_point_moments(singular):
    cov = covariances()[int(singular)]
    mean = torch.tensor([[1.0, -2.0], [0.0, 3.0], [0.5, 0.5]], dtype=DT)
    draws = draw_gaussian(mean, cov, 200_000, torch.Generator().manual_seed(1))
    assert draws.shape == (200_000, 3, 2)
    centred = draws - mean
    empirical = torch.einsum("sbi,sbj->bij", centred, centred) / draws.shape[0]
    torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.02)
    torch.testing.assert_close(empirical, cov, rtol=0.03, atol=0.01)
    again = draw_gaussian(mean, cov, 200_000, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)


def test_draw_gaussian_joint_and_singular():
    g = torch.Generator().manual_seed(2)
    V = torch.randn(6, 2, generator=g, dtype=DT)
    cov = V @ V.T  # (6, 6) of rank 2
    mean = torch.arange(6, dtype=DT)
    draws = draw_gaussian(mean, cov, 100_000, torch.Generator().manual_seed(3))
    assert draws.shape == (100_000, 6)
    centred = draws - mean
    torch.testing.assert_close(centred.T @ centred / 100_000, cov, rtol=0.05, atol=0.03)
    # rank 2: every draw lies in the column space of V
    residual = centred - centred @ V @ torch.linalg.pinv(V)
    assert residual.abs().max() < 1e-6  # square roots of rounding-size eigenvalues


def test_draw_gaussian_checks_its_arguments():
    mean, cov = torch.zeros(3, 2, dtype=DT), covariances()[0]
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="n_samples"):
            draw_gaussian(mean, cov, bad, None)
    with pytest.raises(ValueError, match=r"covariance of shape \(3, 2, 2\) does not match"):
        draw_gaussian(torch.zeros(6, dtype=DT), cov, 2, None)


def test_draw_gaussian_refuses_an_indefinite_covariance():
    cov = torch.tensor([[1.0, 0.0], [0.0, -0.5]], dtype=DT)
    with pytest.raises(torch.linalg.LinAlgError, match="not positive semi-definite"):
        draw_gaussian(torch.zeros(2, dtype=DT), cov, 3, None)


def test_draw_gaussian_is_differentiable_at_a_singular_covariance():
    v = torch.tensor([[1.0], [2.0]], dtype=DT, requires_grad=True)
    mean = torch.zeros(1, 2, dtype=DT, requires_grad=True)
    draws = draw_gaussian(mean, (v @ v.T)[None], 50, torch.Generator().manual_seed(0))
    draws.square().sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    torch.testing.assert_close(mean.grad, 2 * draws.sum(0))


def test_preserve_model_gradients():
    class Estimator:
        def __init__(self):
            self.model = nn.Linear(2, 1)

        @preserve_model_gradients
        def fit(self, fail: bool) -> str:
            self.model(torch.ones(1, 2)).sum().backward()
            if fail:
                raise RuntimeError("boom")
            return "done"

    est = Estimator()
    est.model.weight.grad = torch.full((1, 2), 7.0)
    assert est.fit(False) == "done"
    assert torch.equal(est.model.weight.grad, torch.full((1, 2), 7.0))
    assert est.model.bias.grad is None
    with pytest.raises(RuntimeError, match="boom"):
        est.fit(True)
    assert torch.equal(est.model.weight.grad, torch.full((1, 2), 7.0))
    assert est.model.bias.grad is None
    assert Estimator.fit.__name__ == "fit"


def test_same_configuration():
    a = {"n": 3, "x": torch.tensor([1.0, 2.0]), "l": [1, (2, "a")]}
    assert same_configuration(a, {"n": 3, "x": torch.tensor([1.0, 2.0]), "l": [1, (2, "a")]})
    assert not same_configuration(a, {**a, "x": torch.tensor([1.0, 2.5])})
    assert not same_configuration(a, {**a, "l": (1, (2, "a"))})  # list against tuple
    assert not same_configuration(a, {"n": 3})
    assert not same_configuration(torch.tensor(1.0), 1.0)
    assert same_configuration(None, None) and not same_configuration(1, 2)


def test_to_device_keeps_integer_dtypes():
    value = {"x": torch.ones(2, dtype=torch.float32), "ids": torch.arange(2),
             "pair": (torch.zeros(1, dtype=torch.float32), "tag")}
    moved = to_device(value, torch.device("cpu"), DT)
    assert moved["x"].dtype == DT and moved["ids"].dtype == torch.long
    assert moved["pair"][0].dtype == DT and moved["pair"][1] == "tag"
    assert isinstance(moved["pair"], tuple)


def test_split_batch_and_batch_size():
    X, y = torch.zeros(4, 3), torch.ones(4)
    assert split_batch((X, y), "labels")[1] is y
    batch = {"input_ids": X, "labels": y}
    inputs, targets = split_batch(batch, "labels")
    assert inputs is batch and targets is y
    assert batch_size(X, "input_ids") == 4 and batch_size(batch, "input_ids") == 4


def test_regression_and_classification_targets():
    out = torch.zeros(5, 1)
    assert regression_targets(torch.arange(5.0), out).shape == (5, 1)
    with pytest.raises(ValueError, match=r"shape \(5, 2\) do not match .* \(5, 1\)"):
        regression_targets(torch.zeros(5, 2), out)
    with pytest.raises(ValueError, match="do not match"):
        regression_targets(torch.zeros(5), torch.zeros(5, 3))
    onehot = torch.eye(3)[[2, 0, 1]]
    assert torch.equal(classification_targets(onehot), torch.tensor([2, 0, 1]))
    assert torch.equal(classification_targets(torch.tensor([[1], [0]])), torch.tensor([1, 0]))
    assert classification_targets(torch.tensor([1.0, 2.0])).dtype == torch.long
    with pytest.raises(ValueError, match="shape"):
        classification_targets(torch.zeros(2, 2, 2))


def test_training_indices():
    data = TensorDataset(torch.arange(10.0))
    assert torch.equal(training_indices(DataLoader(data, batch_size=3)), torch.arange(10))
    dropped = DataLoader(data, batch_size=3, drop_last=True)
    assert torch.equal(training_indices(dropped), torch.arange(9))
    g = torch.Generator().manual_seed(0)
    shuffled = DataLoader(data, batch_size=3, shuffle=True, generator=g)
    state = g.get_state()
    assert torch.equal(training_indices(shuffled), torch.arange(10))
    assert torch.equal(g.get_state(), state)  # the loader's generator is not consumed
    subset = DataLoader(data, sampler=SubsetRandomSampler([7, 2, 5]))
    assert sorted(training_indices(subset).tolist()) == [2, 5, 7]
    custom = DataLoader(data, batch_sampler=BatchSampler(range(4, 8), 2, False))
    assert training_indices(custom).tolist() == [4, 5, 6, 7]
    with_replacement = DataLoader(data, sampler=RandomSampler(data, replacement=True,
                                                              num_samples=4))
    assert len(training_indices(with_replacement)) == 4
    with pytest.raises(ValueError, match="visits no rows"):
        training_indices(DataLoader(data, sampler=SubsetRandomSampler([])))
    with pytest.raises(ValueError, match="outside its dataset"):
        training_indices(DataLoader(data, sampler=[0, 11]))


def test_subset_loader():
    data = TensorDataset(torch.arange(10.0), torch.arange(10))
    loader = subset_loader(DataLoader(data, batch_size=2, shuffle=True),
                           torch.tensor([9, 1, 4]))
    batches = list(loader)
    assert [b[0].tolist() for b in batches] == [[9.0, 1.0], [4.0]]


def test_concatenate_and_select_rows():
    a = {"x": torch.zeros(2, 3), "tags": ["a", "b"], "mode": "train"}
    b = {"x": torch.ones(1, 3), "tags": ["c"], "mode": "train"}
    joined = concatenate_rows([a, b])
    assert joined["x"].shape == (3, 3) and joined["tags"] == ["a", "b", "c"]
    assert joined["mode"] == "train"
    with pytest.raises(ValueError, match="differs"):
        concatenate_rows([a, {**b, "mode": "eval"}])
    with pytest.raises(ValueError, match="different keys"):
        concatenate_rows([a, {"x": b["x"]}])
    picked = select_rows(joined, torch.tensor([2, 0]), 3)
    assert torch.equal(picked["x"], joined["x"][[2, 0]])
    assert picked["tags"] == ["c", "a"] and picked["mode"] == "train"
    constant = torch.zeros(5)  # leading length differs from the batch: kept
    assert select_rows(constant, torch.tensor([0]), 3) is constant
