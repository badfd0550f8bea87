"""BoTorch's pathwise sampling (``draw_matheron_paths`` and what builds on it) with
``LaplaceBNN``: shapes in BoTorch's convention, paths equal to ``lapbo``'s own, moments
equal to the posterior's, and the acquisition functions that use them."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition.joint_entropy_search import qJointEntropySearch
from botorch.acquisition.thompson_sampling import PathwiseThompsonSampling
from botorch.acquisition.utils import get_optimal_samples
from botorch.models import ModelListGP
from botorch.models.transforms.input import Normalize
from botorch.optim import optimize_acqf
from botorch.sampling.pathwise import draw_matheron_paths, get_matheron_path_model
from botorch.sampling.pathwise.paths import PathList
from torch import Tensor

from lapbo import LaplaceBNN
from lapbo.matheron import LinearizedSamplePath, MixtureSamplePath
from lapbo.sampling import PathwiseSamples
from tests.lapbo.test_acquisition import BOUNDS, SMALL, _one_thread, objective  # noqa: F401


@pytest.fixture(scope="module")
def train() -> tuple[Tensor, Tensor]:
    X = 2 * torch.rand(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return X, objective(X)


@pytest.fixture(scope="module")
def model1(train: tuple[Tensor, Tensor]) -> LaplaceBNN:
    X, Y = train  # inputs in [0, 2]²: the paths must apply the input transform
    return LaplaceBNN(X, Y[:, :1], input_transform=Normalize(d=2, bounds=2 * BOUNDS),
                      seed=0, **SMALL).fit()


@pytest.fixture(scope="module")
def model2(train: tuple[Tensor, Tensor]) -> LaplaceBNN:
    X, Y = train
    return LaplaceBNN(X, Y, input_transform=Normalize(d=2, bounds=2 * BOUNDS), seed=0,
                      **SMALL).fit()


def points(*shape: int) -> Tensor:
    return 2 * torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_paths_are_lapbos_own_in_botorchs_shapes(model1: LaplaceBNN) -> None:
    """The same weight draws give the same values as ``lapbo.sampling.PathwiseSamples``
    (which prepends the sample dimension); here it broadcasts with X's batch."""
    torch.manual_seed(0)
    paths = draw_matheron_paths(model1, sample_shape=torch.Size([2, 3]))
    assert isinstance(paths, LinearizedSamplePath)
    X = points(5, 2)
    values = paths(X)
    assert values.shape == (2, 3, 5)
    own = PathwiseSamples(model1, paths.offsets.reshape(6, -1))(X)  # (6, 5, 1)
    torch.testing.assert_close(values.reshape(6, 5), own[..., 0], rtol=0, atol=1e-12)
    # X with a batch of 3 aligns with the last sample dimension: draw j at X[j]
    Xb = points(3, 4, 2)
    batched = paths(Xb)
    assert batched.shape == (2, 3, 4)
    for j in range(3):
        torch.testing.assert_close(batched[:, j], paths(Xb[j])[:, j], rtol=0, atol=1e-12)


def test_path_moments_are_the_posteriors(model1: LaplaceBNN) -> None:
    torch.manual_seed(0)
    X = points(4, 2)
    values = draw_matheron_paths(model1, sample_shape=torch.Size([20000]))(X)  # (S, 4)
    post = model1.posterior(X)
    mean, cov = post.mean.squeeze(-1), post.distribution.covariance_matrix
    sd = cov.diagonal().sqrt()
    assert ((values.mean(0) - mean).abs() / sd).max() < 0.05  # MC error ~0.007 sd
    emp = torch.cov(values.T)
    torch.testing.assert_close(emp / (sd[:, None] * sd), cov / (sd[:, None] * sd),
                               rtol=0, atol=0.04)


def test_multi_output_path_model(model2: LaplaceBNN) -> None:
    """BoTorch's ``MatheronPathModel`` puts the outputs last, as the posterior does."""
    torch.manual_seed(0)
    path_model = get_matheron_path_model(model2, sample_shape=torch.Size([3]))
    X = points(6, 2)
    values = path_model(X)
    assert values.shape == (3, 6, 2)
    own = PathwiseSamples(model2, path_model._path.offsets)(X)  # (3, 6, 2)
    torch.testing.assert_close(values, own, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="outputs on the last batch dimension"):
        path_model._path(points(4, 6, 2))


def test_a_multi_output_path_takes_q_points_as_a_gps_path_does(model2: LaplaceBNN) -> None:
    """A ``(q, d)`` X is one set of points for every output: ``(samples, k, q)``, as a
    batched multi-output ``SingleTaskGP``'s path returns, equal to the path at X expanded
    over the outputs."""
    torch.manual_seed(0)
    paths = draw_matheron_paths(model2, sample_shape=torch.Size([4]))
    X = points(3, 2)
    values = paths(X)
    assert values.shape == (4, 2, 3)
    torch.testing.assert_close(values, paths(X.expand(2, 3, 2)), rtol=0, atol=1e-12)
    torch.testing.assert_close(values, paths(X.unsqueeze(0)), rtol=0, atol=0)


def test_thompson_sampling_and_optimal_samples(model1: LaplaceBNN) -> None:
    torch.manual_seed(0)
    ts = PathwiseThompsonSampling(model1)
    X = points(3, 2, 2).requires_grad_(True)
    value = ts(X)
    assert value.shape == (3,)
    value.sum().backward()
    assert torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0
    torch.manual_seed(1)
    X_opt, f_opt = get_optimal_samples(model1, 2 * BOUNDS, num_optima=4, raw_samples=64,
                                       num_restarts=2)
    assert X_opt.shape == (4, 2) and f_opt.shape == (4, 1)
    assert ((X_opt >= 0) & (X_opt <= 2)).all()
    torch.manual_seed(1)  # the same draws: each optimum is its own path's value there
    paths = draw_matheron_paths(model1, sample_shape=torch.Size([4]))
    torch.testing.assert_close(paths(X_opt.unsqueeze(-2)), f_opt, rtol=0, atol=1e-10)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 2, 21, dtype=torch.float64)] * 2,
                                      indexing="ij"), -1).reshape(-1, 2)
    assert (f_opt[:, 0] >= paths(grid).max(-1).values - 0.05).float().mean() >= 0.75
    jes = qJointEntropySearch(model1, optimal_inputs=X_opt, optimal_outputs=f_opt)
    candidate, acq = optimize_acqf(jes, 2 * BOUNDS, q=1, num_restarts=2, raw_samples=16,
                                   options={"maxiter": 10})
    assert candidate.shape == (1, 2) and torch.isfinite(acq)


def test_model_list_and_conditioned_models(model1: LaplaceBNN, model2: LaplaceBNN) -> None:
    torch.manual_seed(0)
    paths = draw_matheron_paths(ModelListGP(model1, model1), sample_shape=torch.Size([2]))
    assert isinstance(paths, PathList) and [p.shape for p in paths(points(5, 2))] == [(2, 5)] * 2
    fantasy = model1.condition_on_observations(points(2, 1, 2), torch.zeros(2, 1, 1))
    assert fantasy.batch_shape == (2,)
    values = draw_matheron_paths(fantasy, sample_shape=torch.Size([3]))(points(4, 2))
    assert values.shape == (3, 2, 4)


def test_mixture_draws_belong_to_one_component(train: tuple[Tensor, Tensor]) -> None:
    X, Y = train
    model = LaplaceBNN(X, Y[:, :1], input_transform=Normalize(d=2, bounds=2 * BOUNDS),
                       seed=0, model_averaging=True,
                       candidates=[{}, {"reference_dim": 1.0, "sigma_noise": 1.0}],
                       **SMALL).fit()
    assert model._mixture is not None
    torch.manual_seed(0)
    paths = draw_matheron_paths(model, sample_shape=torch.Size([40]))
    assert isinstance(paths, MixtureSamplePath)
    Xt = points(5, 2)
    values, parts = paths(Xt), [p(Xt) for p in paths.parts]
    for s in range(40):
        assert torch.equal(values[s], parts[int(paths.component[s])][s])
    assert 0 < int(paths.component.sum()) < 40  # both components drawn (weights 0.64, 0.36)
