"""Leading query points shared by a whole batch (a noisy acquisition's baseline) are
computed once and cached (``lapbo.shared_points``): the posterior, acquisition values and
gradients equal those of the computation without sharing, and points that carry
gradients are never shared."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.models.transforms import Normalize
from botorch.sampling import SobolQMCNormalSampler

from lapbo import LaplaceBNN
from lapbo import linearized_model as lm
from lapbo.shared_points import carries_no_gradient

DT = torch.float64


def _data(m: int = 1, n: int = 40, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    X = torch.rand(n, d, generator=g, dtype=DT) * 4 - 2
    Y = torch.cat([(X * (j + 1)).sin().sum(-1, keepdim=True) for j in range(m)], -1)
    return X, Y + 0.05 * torch.randn(n, m, generator=g, dtype=DT)


def _model(m: int = 1) -> tuple[LaplaceBNN, torch.Tensor]:
    X, Y = _data(m)
    bounds = torch.tensor([[-2.0] * 3, [2.0] * 3], dtype=DT)
    return LaplaceBNN(X, Y, input_transform=Normalize(d=3, bounds=bounds), seed=0).fit(), X


@pytest.fixture
def unshared(monkeypatch):
    """Run a callable with sharing switched off (the computation before it existed)."""
    def run(fn):
        with monkeypatch.context() as patch:
            patch.setattr(lm, "shared_points", lambda *args, **kwargs: (0, 0))
            return fn()
    return run


def _queries(X: torch.Tensor, b: int = 5, q: int = 3, k: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(8)
    own = torch.rand(b, q, X.shape[-1], generator=g, dtype=DT) * 4 - 2
    return torch.cat([X[:k].expand(b, k, -1), own], dim=-2)


@pytest.mark.parametrize("m", [1, 2])
def test_the_posterior_equals_the_unshared_one(m, unshared):
    model, X = _model(m)
    Xq = _queries(X)
    for kwargs in ({}, {"observation_noise": True}, {"output_indices": [m - 1]}):
        model._shared_cache = None
        got = model.posterior(Xq, **kwargs)
        assert model._shared_cache is not None and model._shared_cache.points.shape[0] == 12
        want = unshared(lambda kw=kwargs: model.posterior(Xq, **kw))
        scale = float(want.distribution.covariance_matrix.abs().max())
        torch.testing.assert_close(got.mean, want.mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got.distribution.covariance_matrix,
                                   want.distribution.covariance_matrix,
                                   rtol=0, atol=1e-11 * scale)


def test_qlognei_values_and_gradients_equal_the_unshared_ones(unshared):
    model, X = _model()
    g = torch.Generator().manual_seed(5)
    cand = torch.rand(4, 2, 3, generator=g, dtype=DT) * 4 - 2

    def value_and_grad():
        acqf = qLogNoisyExpectedImprovement(model, X_baseline=X[:15], prune_baseline=False,
                                            sampler=SobolQMCNormalSampler(torch.Size([32]),
                                                                          seed=1))
        Xc = cand.clone().requires_grad_(True)
        value = acqf(Xc)
        return value.detach(), torch.autograd.grad(value.sum(), Xc)[0]

    got, want = value_and_grad(), unshared(value_and_grad)
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[1], want[1], rtol=1e-7, atol=1e-9)
    assert bool(got[1].abs().gt(0).any())


@pytest.mark.parametrize("noisy", [False, True])
def test_pending_points_are_shared_too(noisy, unshared):
    """qLogEI appends ``X_pending`` after the candidates (``[X; pending]``: trailing shared
    points); qLogNEI joins them to its baseline (leading)."""
    model, X = _model()
    g = torch.Generator().manual_seed(6)
    cand = torch.rand(4, 2, 3, generator=g, dtype=DT) * 4 - 2
    pending = torch.rand(3, 3, generator=g, dtype=DT) * 4 - 2
    sampler = SobolQMCNormalSampler(torch.Size([32]), seed=2)

    def value_and_grad():
        if noisy:
            acqf = qLogNoisyExpectedImprovement(model, X_baseline=X[:10], prune_baseline=False,
                                                X_pending=pending, sampler=sampler)
        else:
            acqf = qLogExpectedImprovement(model, best_f=1.0, X_pending=pending,
                                           sampler=sampler)
        Xc = cand.clone().requires_grad_(True)
        value = acqf(Xc)
        return value.detach(), torch.autograd.grad(value.sum(), Xc)[0]

    model._shared_cache = None
    got = value_and_grad()
    cache = model._shared_cache
    assert (cache.q, cache.lead, cache.trail) == ((15, 13, 0) if noisy else (5, 0, 3))
    want = unshared(value_and_grad)
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[1], want[1], rtol=1e-7, atol=1e-9)


def test_leading_and_trailing_points_together(unshared):
    model, X = _model(2)
    g = torch.Generator().manual_seed(7)
    own = torch.rand(3, 2, 3, generator=g, dtype=DT) * 4 - 2
    Xq = torch.cat([X[:4].expand(3, 4, 3), own, X[20:23].expand(3, 3, 3)], dim=-2)
    model._shared_cache = None
    got = model.posterior(Xq, observation_noise=True)
    cache = model._shared_cache
    assert (cache.q, cache.lead, cache.trail) == (9, 4, 3)
    want = unshared(lambda: model.posterior(Xq, observation_noise=True))
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.distribution.covariance_matrix,
                               want.distribution.covariance_matrix, rtol=1e-9, atol=1e-11)


def test_a_later_query_reuses_the_cached_points(monkeypatch):
    model, X = _model()
    Xq = _queries(X)
    model.posterior(Xq)
    rows = []
    features = lm._LinearizedModel._features

    def counting(self, X_tf, idx):
        rows.append(X_tf.shape[:-1].numel())
        return features(self, X_tf, idx)

    monkeypatch.setattr(lm._LinearizedModel, "_features", counting)
    single = Xq[:1]  # one batch element: only the cache can tell the baseline
    model.posterior(single)
    assert rows == [3]  # the three own points; the twelve shared ones came from the cache
    model.posterior(torch.cat([X[:5], single[0, 12:]]))  # another leading set: no sharing
    assert rows[-1] == 8


def test_another_baseline_of_the_same_size_is_not_read_from_the_cache(unshared):
    model, X = _model()
    model.posterior(_queries(X))  # caches X[:12]
    other = _queries(X[20:])  # twelve other leading points, three own
    got = model.posterior(other)
    assert torch.equal(model._shared_cache.points, model._transform_query(X[20:32]))
    want = unshared(lambda: model.posterior(other))
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.variance, want.variance, rtol=1e-8, atol=1e-12)


def test_points_that_carry_gradients_are_not_shared(unshared):
    """Restarts that start at one point share values, not gradients."""
    model, X = _model()
    start = _queries(X, b=1, k=0).expand(3, -1, -1)

    def grad():
        Xc = start.clone().requires_grad_(True)
        return torch.autograd.grad(model.posterior(Xc).variance.sum(), Xc)[0]

    got, want = grad(), unshared(grad)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert bool(got[1].abs().gt(0).any())


def test_carries_no_gradient():
    leaf = torch.rand(2, 3, 2, dtype=DT, requires_grad=True)
    buffer = torch.rand(4, 2, dtype=DT)
    joined = torch.cat([buffer.expand(2, 4, 2), leaf], dim=-2)
    assert carries_no_gradient(joined[..., :4, :])
    assert not carries_no_gradient(joined[..., :5, :])
    assert not carries_no_gradient(leaf)
    assert carries_no_gradient((joined[..., :4, :] - 1) * 2)
    scale = torch.ones(2, dtype=DT, requires_grad=True)  # a learnable transform
    assert not carries_no_gradient((joined * scale)[..., :4, :])
    with torch.no_grad():
        assert carries_no_gradient(leaf * 2)


def test_a_refit_or_a_conditioned_model_does_not_read_a_stale_cache(unshared):
    model, X = _model()
    Xq = _queries(X)
    model.posterior(Xq)
    X2, Y2 = _data(n=45)
    refit = LaplaceBNN(X2, Y2, input_transform=model.input_transform, warm_start=model,
                       seed=0).fit()
    assert refit._shared_cache is None
    conditioned = model.condition_on_observations(X2[40:], Y2[40:])
    got = conditioned.posterior(Xq)
    want = unshared(lambda: conditioned.posterior(Xq))
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.variance, want.variance, rtol=1e-8, atol=1e-12)
    model.sigma_noise = 0.5 * float(model.sigma_noise)  # the posterior changes in place
    assert model._shared_cache is None
