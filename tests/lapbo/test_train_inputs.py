"""``train_inputs`` as BoTorch's GPs hold them, so that BoTorch code reading them gets
what it gets from a ``SingleTaskGP``: input-transformed in eval mode (the originals in
``_original_train_inputs``), original in train mode, and ``(k, n, d)`` for ``k`` outputs."""

from __future__ import annotations

import torch
from botorch.acquisition.analytic import UpperConfidenceBound
from botorch.acquisition.multi_objective.predictive_entropy_search import (
    qMultiObjectivePredictiveEntropySearch,
)
from botorch.acquisition.multi_objective.utils import (
    random_search_optimizer,
    sample_optimal_points,
)
from botorch.acquisition.proximal import ProximalAcquisitionFunction
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.optim.utils.acquisition_utils import get_X_baseline
from botorch.sampling.pathwise.utils import get_train_inputs

from lapbo import LaplaceBNN
from tests.lapbo.test_acquisition import SMALL, _one_thread, objective  # noqa: F401

BOX = torch.tensor([[-1.0, -1.0], [3.0, 3.0]], dtype=torch.float64)


def _data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    X = BOX[0] + (BOX[1] - BOX[0]) * torch.rand(
        n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return X, objective((X - BOX[0]) / (BOX[1] - BOX[0]))


def test_train_inputs_are_transformed_in_eval_mode_as_a_gps() -> None:
    X, Y = _data()
    model = LaplaceBNN(X, Y[:, :1], input_transform=Normalize(d=2, bounds=BOX), seed=0,
                       **SMALL).fit()
    gp = SingleTaskGP(X, Y[:, :1], input_transform=Normalize(d=2, bounds=BOX))
    for m in (model, gp):
        m.eval()
    expected = (X - BOX[0]) / (BOX[1] - BOX[0])
    for m in (model, gp):
        torch.testing.assert_close(m.train_inputs[0], expected)
        assert m._has_transformed_inputs
        torch.testing.assert_close(m._original_train_inputs, X)
        torch.testing.assert_close(get_train_inputs(m)[0], X)
        torch.testing.assert_close(get_train_inputs(m, transformed=True)[0], expected)
    model.train()
    assert not model._has_transformed_inputs and model._original_train_inputs is None
    torch.testing.assert_close(model.train_inputs[0], X)
    model.eval()
    acqf = UpperConfidenceBound(model, beta=2.0)
    torch.testing.assert_close(get_X_baseline(acqf), X)  # optimize_acqf's sample_around_best


def test_proximal_weighting_centres_on_the_last_observation() -> None:
    """BoTorch's ``ProximalAcquisitionFunction`` reads the last training input as the
    transformed point (a GP's layout): the weighting is exp(−½‖T(x) − T(x_last)‖²/w²)."""
    X, Y = _data()
    model = LaplaceBNN(X, Y[:, :1], input_transform=Normalize(d=2, bounds=BOX), seed=0,
                       **SMALL).fit()
    ucb = UpperConfidenceBound(model, beta=2.0)
    weights = torch.tensor([0.3, 0.5], dtype=torch.float64)
    proximal = ProximalAcquisitionFunction(ucb, proximal_weights=weights, beta=1.0)
    Xq = BOX[0] + (BOX[1] - BOX[0]) * torch.rand(
        6, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = model.input_transform
    distance = ((t.transform(Xq) - t.transform(X[-1:])) / weights).square().sum(-1).squeeze(-1)
    expected = torch.nn.functional.softplus(ucb(Xq), beta=1.0) * torch.exp(-0.5 * distance)
    torch.testing.assert_close(proximal(Xq), expected)


def test_multi_output_train_inputs_and_predictive_entropy_search() -> None:
    """``(k, n, d)`` as ``train_targets``' ``(k, n)``: BoTorch's multi-objective PES reads
    ``train_inputs[0][0]`` for a model of several outputs."""
    X, Y = _data(12)
    model = LaplaceBNN(X, Y, input_transform=Normalize(d=2, bounds=BOX), seed=0,
                       **SMALL).fit()
    model.eval()
    assert model.train_inputs[0].shape == (2, 12, 2)
    assert model.train_targets.shape == (2, 12)
    assert model.subset_output([1]).train_inputs[0].shape == (12, 2)
    torch.manual_seed(0)
    pareto_sets, _ = sample_optimal_points(
        model=model, bounds=BOX, num_samples=2, num_points=3,
        optimizer=random_search_optimizer, optimizer_kwargs={"pop_size": 200, "max_tries": 3})
    pes = qMultiObjectivePredictiveEntropySearch(model=model, pareto_sets=pareto_sets)
    values = pes(BOX[0] + (BOX[1] - BOX[0]) * torch.rand(4, 1, 2, dtype=torch.float64))
    assert values.shape == (4,) and bool(torch.isfinite(values).all())


def test_a_conditioned_models_train_inputs_follow_its_targets() -> None:
    """As a conditioned GP's: the observed inputs broadcast to the batch of the targets
    (fantasies, batched conditioning) and joined along the points, the conditioning points
    last, built only when read."""
    X, Y = _data()
    model = LaplaceBNN(X, Y[:, :1], seed=0, **SMALL).fit()
    Xq = torch.rand(3, 2, dtype=torch.float64)
    from botorch.sampling import SobolQMCNormalSampler

    fantasy = model.fantasize(Xq, SobolQMCNormalSampler(torch.Size([4]), seed=0))
    (inputs,) = fantasy.train_inputs
    assert inputs.shape == (4, 13, 2) and fantasy.train_targets.shape == (4, 13)
    torch.testing.assert_close(inputs[2, :10], X)
    torch.testing.assert_close(inputs[2, 10:], Xq)
    Xb = torch.rand(5, 2, 2, dtype=torch.float64)
    batched = model.condition_on_observations(Xb, torch.zeros(5, 2, 1, dtype=torch.float64))
    (inputs,) = batched.train_inputs
    assert inputs.shape == (5, 12, 2)
    torch.testing.assert_close(inputs[3, 10:], Xb[3])
    again = batched.condition_on_observations(Xq[:1], torch.zeros(1, 1, dtype=torch.float64))
    assert again.train_inputs[0].shape == (5, 13, 2)
    torch.testing.assert_close(again.train_inputs[0][:, -1], Xq[:1].expand(5, 2))
