"""``LaplaceBNN`` through BoTorch acquisition functions and ``optimize_acqf``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from botorch.acquisition import (
    LogExpectedImprovement,
    PosteriorMean,
    UpperConfidenceBound,
    qKnowledgeGradient,
    qLogExpectedImprovement,
    qLogNoisyExpectedImprovement,
    qLowerBoundMaxValueEntropy,
    qMaxValueEntropy,
    qUpperConfidenceBound,
)
from botorch.acquisition.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogConstrainedExpectedImprovement
from botorch.acquisition.cost_aware import InverseCostWeightedUtility
from botorch.acquisition.knowledge_gradient import qMultiFidelityKnowledgeGradient
from botorch.acquisition.max_value_entropy_search import qMultiFidelityMaxValueEntropy
from botorch.acquisition.multi_objective.hypervolume_knowledge_gradient import (
    qHypervolumeKnowledgeGradient,
)
from botorch.acquisition.multi_objective.logei import (
    qLogNoisyExpectedHypervolumeImprovement,
)
from botorch.acquisition.multi_objective.parego import qLogNParEGO
from botorch.acquisition.objective import GenericMCObjective, ScalarizedPosteriorTransform
from botorch.acquisition.predictive_entropy_search import qPredictiveEntropySearch
from botorch.acquisition.utils import get_optimal_samples, project_to_target_fidelity
from botorch.exceptions.errors import UnsupportedError
from botorch.models.cost import AffineFidelityCostModel
from botorch.models.model import ModelList
from botorch.models.transforms.outcome import Log
from botorch.optim import optimize_acqf, optimize_acqf_discrete, optimize_acqf_mixed
from botorch.sampling import SobolQMCNormalSampler
from torch import Tensor

from lapbo import LaplaceBNN, draw_pathwise_samples

SMALL = {"width": 16, "n_epochs": 100, "marglik_every": 50, "marglik_steps": 10,
         "final_marglik_steps": 30}
BOUNDS = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
OPT = {"num_restarts": 2, "raw_samples": 16, "options": {"maxiter": 20}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def objective(X: Tensor) -> Tensor:
    """``(n, 2) → (n, 2)``."""
    y1 = torch.sin(5 * X[:, :1]) + X[:, 1:2].square()
    y2 = torch.cos(3 * X.sum(-1, keepdim=True))
    return torch.cat([y1, y2], dim=-1)


@pytest.fixture(scope="module")
def train() -> tuple[Tensor, Tensor]:
    X = torch.rand(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return X, objective(X)


@pytest.fixture(scope="module")
def model1(train: tuple[Tensor, Tensor]) -> LaplaceBNN:
    X, Y = train
    return LaplaceBNN(X, Y[:, :1], seed=0, **SMALL).fit()


@pytest.fixture(scope="module")
def model2(train: tuple[Tensor, Tensor]) -> LaplaceBNN:
    X, Y = train
    return LaplaceBNN(X, Y, seed=0, **SMALL).fit()


def check(acqf: AcquisitionFunction, q: int = 1, compare_raw: bool = True) -> Tensor:
    """Optimise ``acqf``; assert candidates inside the box and a finite value."""
    cand, value = optimize_acqf(acqf, bounds=BOUNDS, q=q, **OPT)
    assert cand.shape == (q, 2)
    assert torch.isfinite(cand).all() and torch.isfinite(value).all()
    assert (cand >= BOUNDS[0] - 1e-9).all() and (cand <= BOUNDS[1] + 1e-9).all()
    if compare_raw:  # the optimum is no worse than a typical random point
        raw = torch.rand(16, q, 2, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert float(value) >= float(acqf(raw).median()) - 1e-6
    return cand


def test_analytic(model1: LaplaceBNN, train: tuple[Tensor, Tensor]) -> None:
    best = train[1][:, 0].max()
    check(LogExpectedImprovement(model1, best_f=best))
    check(UpperConfidenceBound(model1, beta=2.0))
    cand = check(PosteriorMean(model1))
    # PosteriorMean's optimum beats the best training prediction (it can only improve)
    assert model1.posterior(cand).mean.item() >= model1.posterior(train[0]).mean.max() - 1e-6


def test_mc_single_output(model1: LaplaceBNN, train: tuple[Tensor, Tensor]) -> None:
    X, Y = train
    sampler = SobolQMCNormalSampler(torch.Size([32]), seed=0)
    check(qLogExpectedImprovement(model1, best_f=Y[:, 0].max(), sampler=sampler), q=2)
    check(qLogNoisyExpectedImprovement(model1, X_baseline=X, sampler=sampler,
                                       prune_baseline=True), q=2)
    check(qUpperConfidenceBound(model1, beta=2.0, sampler=sampler), q=2)


def test_knowledge_gradient(model1: LaplaceBNN) -> None:
    acqf = qKnowledgeGradient(model1, num_fantasies=4)
    cand = check(acqf, compare_raw=False)  # one-shot: values are over q + fantasies
    points = torch.rand(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    X_full = torch.cat([cand, points]).unsqueeze(0)
    value = acqf(X_full.expand(3, 5, 2))
    # The one-shot value is a fantasy-averaged posterior mean (it may be negative); it
    # must be finite and the same for every copy of the same batch.
    assert value.shape == (3,) and torch.isfinite(value).all()
    torch.testing.assert_close(value, acqf(X_full).expand(3), rtol=1e-9, atol=1e-12)


def test_max_value_entropy_with_pending(model1: LaplaceBNN) -> None:
    candidate_set = torch.rand(64, 2, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(3))
    X_pending = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    acqf = qMaxValueEntropy(model1, candidate_set, num_fantasies=4, X_pending=X_pending)
    assert acqf.model.batch_shape == torch.Size([4])  # fantasies at the pending point
    assert acqf.posterior_max_values.shape == (10, 1)
    assert torch.isfinite(acqf.posterior_max_values).all()
    check(acqf)
    value = acqf(torch.rand(3, 1, 2, dtype=torch.float64))
    assert value.shape == (3,) and torch.isfinite(value).all()


def test_multi_objective_nehvi(model2: LaplaceBNN, train: tuple[Tensor, Tensor]) -> None:
    X, Y = train
    ref_point = Y.min(0).values - 0.1
    acqf = qLogNoisyExpectedHypervolumeImprovement(
        model2, ref_point=ref_point.tolist(), X_baseline=X, prune_baseline=True,
        sampler=SobolQMCNormalSampler(torch.Size([16]), seed=0),
    )
    check(acqf, q=2)


def test_scalarized_and_constrained(model2: LaplaceBNN, train: tuple[Tensor, Tensor]) -> None:
    X, Y = train
    weights = torch.tensor([0.7, 0.3], dtype=torch.float64)
    transform = ScalarizedPosteriorTransform(weights=weights)
    post = model2.posterior(X[:3], posterior_transform=transform)
    full = model2.posterior(X[:3])
    assert torch.allclose(post.mean[..., 0], full.mean @ weights, atol=1e-10)
    check(UpperConfidenceBound(model2, beta=1.0, posterior_transform=transform))
    check(qLogExpectedImprovement(model2, best_f=(Y @ weights).max(),
                                  posterior_transform=transform), q=2)
    # maximise output 0 subject to output 1 <= 0 (feasible iff the constraint is <= 0)
    feasible = Y[:, 1] <= 0
    best = Y[feasible, 0].max() if feasible.any() else Y[:, 0].min()
    acqf = qLogExpectedImprovement(
        model2, best_f=best, objective=GenericMCObjective(lambda Z, X=None: Z[..., 0]),
        constraints=[lambda Z: Z[..., 1]],
        sampler=SobolQMCNormalSampler(torch.Size([32]), seed=0),
    )
    cand = check(acqf, q=2)
    # the constrained candidates are predicted (mostly) feasible
    assert model2.posterior(cand).mean[:, 1].min() < 0.5


def test_thompson_sampling_paths(model1: LaplaceBNN) -> None:
    paths = draw_pathwise_samples(model1, 3, generator=torch.Generator().manual_seed(0))
    X = torch.rand(64, 1, 2, dtype=torch.float64, requires_grad=True)
    values = paths(X)
    assert values.shape == (3, 64, 1, 1)
    values[0].sum().backward()
    assert torch.isfinite(X.grad).all()


def test_calling_the_model_gives_the_latent_posterior(model1: LaplaceBNN,
                                                      model2: LaplaceBNN) -> None:
    """``model(X)`` as BoTorch calls GPyTorch models: ``posterior(X)``'s Gaussian, batched,
    one output or several, differentiable in ``X``."""
    X = torch.rand(3, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for model in (model1, model2):
        mvn, post = model(X), model.posterior(X)
        assert mvn.mean.shape == post.distribution.mean.shape
        torch.testing.assert_close(mvn.mean, post.distribution.mean, rtol=0, atol=0)
        torch.testing.assert_close(mvn.covariance_matrix, post.distribution.covariance_matrix,
                                   rtol=0, atol=0)
    x = torch.rand(1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model1(x).mean.sum(), x)
    for j in range(2):
        step = torch.zeros_like(x)
        step[0, j] = 1e-6
        with torch.no_grad():
            fd = (model1(x + step).mean - model1(x - step).mean).sum() / 2e-6
        assert float(grad[0, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7)


def test_gibbon_with_pending_points(model1: LaplaceBNN) -> None:
    """GIBBON's repulsion term (``q > 1``) calls ``model(X)``: its value is the ``q = 1``
    value plus ``½ log(1 − aᵀ B⁻¹ a / v)`` from the joint posterior of the candidate and
    the pending point (``a`` latent cross-covariance, ``B``, ``v`` with noise)."""
    candidate_set = torch.rand(64, 2, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(3))
    acqf = qLowerBoundMaxValueEntropy(model1, candidate_set, num_mv_samples=8)
    X = torch.rand(3, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    alone = acqf(X)
    X_pending = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    acqf.set_X_pending(X_pending)
    with_pending = acqf(X)
    joint = model1.posterior(torch.cat([X, X_pending.expand(3, 1, 2)], dim=-2))
    a = joint.distribution.covariance_matrix[:, 0, 1]
    B = model1.posterior(X_pending, observation_noise=True).variance.squeeze()
    v = model1.posterior(X, observation_noise=True).variance.squeeze()
    expected = alone + 0.5 * torch.log(1 - a.square() / B / v)
    torch.testing.assert_close(with_pending, expected, rtol=1e-8, atol=1e-10)
    assert bool((with_pending < alone).all())  # near a pending point is worth less
    candidates, _ = optimize_acqf(qLowerBoundMaxValueEntropy(model1, candidate_set), BOUNDS,
                                  q=2, sequential=True, **OPT)
    assert candidates.shape == (2, 2) and torch.isfinite(candidates).all()
    assert not torch.allclose(candidates[0], candidates[1])


def test_calling_a_model_with_a_non_gaussian_posterior_is_an_error(
        train: tuple[Tensor, Tensor]) -> None:
    X, Y = train
    model = LaplaceBNN(X, Y[:, :1].exp(), outcome_transform=Log(), seed=0, **SMALL).fit()
    with pytest.raises(UnsupportedError, match="TransformedPosterior.*model.posterior"):
        model(X[:2])


def test_multi_fidelity_knowledge_gradient_and_max_value_entropy(model1: LaplaceBNN) -> None:
    """The last input as a fidelity (target 1), a cost-aware utility and a projection."""
    cost = InverseCostWeightedUtility(AffineFidelityCostModel({1: 1.0}, fixed_cost=0.5))

    def project(X: Tensor) -> Tensor:
        return project_to_target_fidelity(X, {1: 1.0}, d=2)

    kg = qMultiFidelityKnowledgeGradient(model1, num_fantasies=4, current_value=torch.tensor(0.0),
                                         cost_aware_utility=cost, project=project)
    check(kg, compare_raw=False)
    candidate_set = torch.rand(64, 2, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(2))
    mes = qMultiFidelityMaxValueEntropy(model1, candidate_set, num_fantasies=4,
                                        cost_aware_utility=cost, project=project)
    check(mes)


def test_predictive_entropy_search_and_constrained_analytic_ei(
        model1: LaplaceBNN, model2: LaplaceBNN, train: tuple[Tensor, Tensor]) -> None:
    torch.manual_seed(0)
    optimal_inputs, _ = get_optimal_samples(model1, BOUNDS, num_optima=4)
    check(qPredictiveEntropySearch(model1, optimal_inputs=optimal_inputs), compare_raw=False)
    acqf = LogConstrainedExpectedImprovement(model2, best_f=train[1][:, 0].max(),
                                             objective_index=0, constraints={1: (None, 0.0)})
    check(acqf)


def test_parego_and_hypervolume_knowledge_gradient(model1: LaplaceBNN, model2: LaplaceBNN,
                                                   train: tuple[Tensor, Tensor]) -> None:
    X, Y = train
    sampler = SobolQMCNormalSampler(torch.Size([16]), seed=0)
    check(qLogNParEGO(model2, X_baseline=X, sampler=sampler), q=2, compare_raw=False)
    second = LaplaceBNN(X, Y[:, 1:], seed=0, **SMALL).fit()
    ref_point = Y.min(0).values - 0.1
    hvkg = qHypervolumeKnowledgeGradient(ModelList(model1, second), ref_point=ref_point,
                                         num_fantasies=2, num_pareto=2)
    check(hvkg, compare_raw=False)


def test_discrete_and_mixed_optimisation(model1: LaplaceBNN, train: tuple[Tensor, Tensor]) -> None:
    X = train[0]
    acqf = qLogNoisyExpectedImprovement(model1, X_baseline=X,
                                        sampler=SobolQMCNormalSampler(torch.Size([16]), seed=0))
    choices = torch.rand(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cand, _ = optimize_acqf_discrete(acqf, q=2, choices=choices)
    assert all(bool((choices == c).all(-1).any()) for c in cand)
    cand, value = optimize_acqf_mixed(acqf, BOUNDS, q=1, num_restarts=2, raw_samples=16,
                                      fixed_features_list=[{0: 0.0}, {0: 1.0}])
    assert float(cand[0, 0]) in (0.0, 1.0) and torch.isfinite(value).all()
