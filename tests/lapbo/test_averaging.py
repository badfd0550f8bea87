"""Evidence-weighted model averaging (``LaplaceBNN(model_averaging=True)``)."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.models.transforms.input import Normalize
from torch import Tensor

from lapbo import LaplaceBNN, draw_pathwise_samples
from lapbo.averaging import MIN_WEIGHT, MixturePosterior, allocate_samples, evidence_weights
from lapbo.selection import selection_table

RF = {"net": "random_features", "random_features": 256}
FAMILY = [{**RF, "trend": None}, {**RF, "trend": "quadratic"},
          {**RF, "trend": None, "random_feature_kernel": "matern52"}]


def data(n: int = 14) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.rand(n, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(5 * X[:, :1]) + X[:, 1:].square() + 0.05 * torch.randn(n, 1, generator=g,
                                                                         dtype=torch.float64)
    return X, Y


@pytest.fixture(scope="module")
def model() -> LaplaceBNN:
    X, Y = data()
    return LaplaceBNN(X, Y, seed=0, input_transform=Normalize(d=2), candidates=FAMILY,
                      model_averaging=True).fit()


def mixture_reference(model: LaplaceBNN, X: Tensor, **kwargs: object) -> tuple[Tensor, Tensor]:
    """Mean ``(*b, q)`` and covariance ``(*b, q, q)`` of the mixture from the components'
    own posteriors (original scale)."""
    parts = [(w, c.posterior(X, **kwargs)) for w, c in model._mixture]
    mean = sum(w * p.mean.squeeze(-1) for w, p in parts)
    cov = sum(w * (p.distribution.covariance_matrix
                   + (p.mean.squeeze(-1) - mean).unsqueeze(-1)
                   * (p.mean.squeeze(-1) - mean).unsqueeze(-2)) for w, p in parts)
    return mean, cov


def test_weights_are_the_normalised_evidences(model: LaplaceBNN) -> None:
    scores = model.selection
    evidence = torch.tensor([s.log_marginal_likelihood for s in scores], dtype=torch.float64)
    expected = torch.softmax(evidence, 0)
    expected = torch.where(expected >= MIN_WEIGHT, expected, 0.0)
    expected = expected / expected.sum()
    weights = torch.tensor([s.weight for s in scores], dtype=torch.float64)
    assert torch.allclose(weights, expected, atol=1e-12)
    assert model._mixture is not None and len(model._mixture) == int((weights > 0).sum()) > 1
    assert sum(w for w, _ in model._mixture) == pytest.approx(1.0, abs=1e-12)
    assert "weight" in selection_table(scores)


@pytest.mark.parametrize("noise", [False, True])
def test_posterior_is_the_moment_matched_mixture(model: LaplaceBNN, noise: bool) -> None:
    X = torch.rand(4, 3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    post = model.posterior(X, observation_noise=noise)
    mean, cov = mixture_reference(model, X, observation_noise=noise)
    assert post.mean.shape == (4, 3, 1)
    assert torch.allclose(post.mean.squeeze(-1), mean, atol=1e-10)
    assert torch.allclose(post.distribution.covariance_matrix, cov, rtol=1e-6, atol=1e-10)
    # the spread between the components widens the mixture beyond their average variance
    average = sum(w * c.posterior(X, observation_noise=noise).variance
                  for w, c in model._mixture)
    assert (post.variance >= average - 1e-12).all()


def test_gradients_of_the_mixture_match_finite_differences(model: LaplaceBNN) -> None:
    x = torch.tensor([[0.3, 0.7]], dtype=torch.float64, requires_grad=True)

    def value(z: Tensor) -> Tensor:
        post = model.posterior(z)
        return post.mean.sum() + post.variance.sqrt().sum()

    (grad,) = torch.autograd.grad(value(x), x)
    eps = 1e-6
    for j in range(2):
        step = torch.zeros_like(x)
        step[0, j] = eps
        fd = (value(x.detach() + step) - value(x.detach() - step)) / (2 * eps)
        assert float(grad[0, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_conditioning_conditions_every_component_with_fixed_weights(model: LaplaceBNN) -> None:
    g = torch.Generator().manual_seed(4)
    Xn, Yn = torch.rand(2, 2, generator=g, dtype=torch.float64), torch.randn(2, 1, generator=g,
                                                                              dtype=torch.float64)
    cond = model.condition_on_observations(Xn, Yn)
    assert [w for w, _ in cond._mixture] == [w for w, _ in model._mixture]
    Xt = torch.rand(5, 2, generator=g, dtype=torch.float64)
    mean, cov = mixture_reference(cond, Xt)
    direct = [(w, c.condition_on_observations(Xn, Yn).posterior(Xt)) for w, c in model._mixture]
    assert torch.allclose(mean, sum(w * p.mean.squeeze(-1) for w, p in direct), atol=1e-10)
    assert torch.allclose(cond.posterior(Xt).mean.squeeze(-1), mean, atol=1e-10)
    assert torch.allclose(cond.posterior(Xt).distribution.covariance_matrix, cov, atol=1e-10)


def test_fantasize_has_the_batch_shape_of_the_fantasies(model: LaplaceBNN) -> None:
    from botorch.sampling import SobolQMCNormalSampler

    Xn = torch.rand(2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fm = model.fantasize(Xn, sampler=SobolQMCNormalSampler(torch.Size([3])))
    assert len(fm._mixture) == len(model._mixture)
    assert fm.posterior(torch.rand(6, 2, dtype=torch.float64)).mean.shape == (3, 6, 1)


def test_by_default_the_model_is_the_chosen_candidate() -> None:
    X, Y = data()
    single = LaplaceBNN(X, Y, seed=0, input_transform=Normalize(d=2), candidates=FAMILY).fit()
    assert single._mixture is None
    assert [s.weight for s in single.selection] == [float(s.chosen) for s in single.selection]
    best = single._candidate_models[next(i for i, s in enumerate(single.selection) if s.chosen)]
    Xt = torch.rand(7, 2, dtype=torch.float64)
    assert torch.allclose(single.posterior(Xt).mean, best.posterior(Xt).mean, atol=1e-12)


def test_pathwise_samples_come_from_the_mixture(model: LaplaceBNN) -> None:
    g = torch.Generator().manual_seed(6)
    paths = draw_pathwise_samples(model, 4000, generator=g)
    Xt = torch.rand(3, 2, generator=g, dtype=torch.float64)
    values = paths(Xt)
    assert values.shape == (4000, 3, 1)
    mean, cov = mixture_reference(model, Xt)
    se = cov.diagonal().sqrt() / math.sqrt(4000)
    assert ((values.squeeze(-1).mean(0) - mean).abs() < 5 * se).all()
    assert torch.allclose(values.squeeze(-1).var(0), cov.diagonal(), rtol=0.15)


def test_allocation_tracks_the_weights() -> None:
    assert allocate_samples([0.5, 0.3, 0.2], 10) == [5, 3, 2]
    assert allocate_samples([0.34, 0.33, 0.33], 10) == [4, 3, 3]
    assert sum(allocate_samples([0.999, 0.001], 7)) == 7


def test_weights_skip_stale_candidates_and_prune_small_ones() -> None:
    weights = evidence_weights([0.0, -1.0, 5.0, -20.0, -math.inf], [50, 50, 40, 50, 50], 50)
    top = 1 / (1 + math.exp(-1.0))
    assert weights == pytest.approx([top, 1 - top, 0.0, 0.0, 0.0], abs=1e-12)


def test_a_threshold_above_every_weight_keeps_the_best_candidate() -> None:
    # three equal evidences weigh 1/3 each: a threshold of 1/2 used to drop all of them
    assert evidence_weights([0.0, 0.0, 0.0], [9, 9, 9], 9, min_weight=0.5) == pytest.approx(
        [1 / 3] * 3, abs=1e-15)  # all tied for the highest evidence
    assert evidence_weights([0.0, -1.0, -9.0], [9, 9, 9], 9, min_weight=0.8) == [1.0, 0.0, 0.0]
    weights = evidence_weights([0.0, -0.5, -9.0], [9, 9, 9], 9, min_weight=0.3)
    top = 1 / (1 + math.exp(-0.5))
    assert weights == pytest.approx([top, 1 - top, 0.0], abs=1e-12)
    for bad in (-0.1, 1.0, 2, True, "0.1", None):
        with pytest.raises(ValueError, match="min_weight must be a number in"):
            evidence_weights([0.0], [9], 9, min_weight=bad)


def test_bad_model_averaging_is_rejected() -> None:
    X, Y = data()
    with pytest.raises(ValueError, match="model_averaging"):
        LaplaceBNN(X, Y, model_averaging="yes")
    with pytest.raises(ValueError, match="model_averaging"):
        LaplaceBNN(X, Y, candidates=[{"model_averaging": False}])
    model = LaplaceBNN(X, Y)
    with pytest.raises(ValueError, match="model_averaging"):
        model.model_averaging = 1
    model.model_averaging = True
    assert model.model_averaging is True


def test_a_loaded_state_predicts_with_the_chosen_candidate(model: LaplaceBNN) -> None:
    X, Y = data()
    clone = LaplaceBNN(X, Y, seed=0, input_transform=Normalize(d=2), candidates=FAMILY,
                       model_averaging=True)
    clone.load_state_dict(model.state_dict())
    best = model._candidate_models[next(i for i, s in enumerate(model.selection) if s.chosen)]
    Xt = torch.rand(5, 2, dtype=torch.float64)
    assert clone._mixture is None
    assert torch.allclose(clone.posterior(Xt).mean, best.posterior(Xt).mean, atol=1e-10)


def test_samples_come_from_the_components_in_blocks(model: LaplaceBNN) -> None:
    X = torch.rand(2, 3, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64,
                   requires_grad=True)
    post = model.posterior(X)
    assert isinstance(post, MixturePosterior)
    shape = torch.Size([4, 8])
    base = torch.randn(shape + post.base_sample_shape, generator=torch.Generator().manual_seed(8),
                       dtype=torch.float64)
    samples = post.rsample_from_base_samples(shape, base)
    assert samples.shape == post._extended_shape(shape) == (4, 8, 2, 3, 1)
    counts = allocate_samples(post.weights, 32)
    flat = samples.reshape(32, 2, 3, 1)
    start = 0
    for component, n in zip(post.components, counts):
        own = component.rsample_from_base_samples(shape, base).reshape(32, 2, 3, 1)
        assert torch.equal(flat[start:start + n], own[start:start + n])
        start += n
    (grad,) = torch.autograd.grad(samples.sum(), X)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert post.rsample(torch.Size([5])).shape == (5, 2, 3, 1)


@pytest.mark.filterwarnings("ignore:qExpectedImprovement has known numerical issues")
def test_monte_carlo_acquisition_averages_the_components(model: LaplaceBNN) -> None:
    from botorch.acquisition import qExpectedImprovement
    from botorch.sampling import SobolQMCNormalSampler

    X = torch.rand(5, 1, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    best = float(model._train_Y.max())
    sampler = SobolQMCNormalSampler(torch.Size([64]), seed=3)
    value = qExpectedImprovement(model, best_f=best, sampler=sampler)(X)
    base = sampler.base_samples  # the mixture's base samples, shared by the components
    counts, start, expected = allocate_samples([w for w, _ in model._mixture], 64), 0, 0.0
    for (_, component), n in zip(model._mixture, counts):
        samples = component.posterior(X).rsample_from_base_samples(torch.Size([64]),
                                                                   base.expand(64, 5, 1))
        block = (samples[start:start + n, ..., 0] - best).clamp_min(0).amax(-1)
        expected = expected + block.sum(0) / 64
        start += n
    assert torch.allclose(value, expected, atol=1e-12)


def test_two_outputs_and_a_scalarized_objective() -> None:
    from botorch.acquisition.objective import ScalarizedPosteriorTransform

    X, Y = data()
    Y2 = torch.cat([Y, X.sum(-1, keepdim=True)], -1)
    two = LaplaceBNN(X, Y2, seed=0, candidates=FAMILY, model_averaging=True).fit()
    # equal weights set by hand: two outputs make the evidence decisive on this data
    two._mixture = [(0.5, c) for c in two._candidate_models[:2]]
    Xt = torch.rand(3, 4, 2, dtype=torch.float64)
    post = two.posterior(Xt)
    assert post.mean.shape == (3, 4, 2) and post.variance.shape == (3, 4, 2)
    mean, _ = mixture_reference(two.subset_output([1]), Xt)
    assert torch.allclose(post.mean[..., 1], mean, atol=1e-10)
    transform = ScalarizedPosteriorTransform(torch.tensor([1.0, -1.0], dtype=torch.float64))
    scalar = two.posterior(Xt, posterior_transform=transform)
    assert isinstance(scalar, MixturePosterior) and scalar.mean.shape == (3, 4, 1)
    assert torch.allclose(scalar.mean[..., 0], post.mean[..., 0] - post.mean[..., 1],
                          atol=1e-10)
