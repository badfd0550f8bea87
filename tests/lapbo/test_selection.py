"""Model selection by the Laplace evidence (``LaplaceBNN(candidates=...)``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lapbo import LaplaceBNN, selection
from lapbo.selection import selection_table

FAST = {"width": 20, "n_epochs": 150, "n_epochs_warm_start": 30, "subset_of_weights": "all"}
LONG = {"init_scale": 0.5, "random_feature_lengthscale": (0.5, 2.0)}
SHORT = {"init_scale": 4.0, "random_feature_lengthscale": (0.05, 0.25)}


def inputs(n: int = 30) -> Tensor:
    return torch.rand(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize(
    ("target", "expected"),
    [(lambda x: 2 * x.square(), LONG),                       # smooth: long length scales
     (lambda x: torch.sin(2 * math.pi * x / 0.3), SHORT)],   # period 0.3: short ones
)
def test_selection_picks_the_candidate_of_highest_evidence(target, expected) -> None:
    X = inputs()
    model = LaplaceBNN(X, target(X), seed=0, candidates=[LONG, SHORT], **FAST).fit()
    scores = model.selection
    assert len(scores) == 2 and sum(s.chosen for s in scores) == 1
    chosen = next(s for s in scores if s.chosen)
    assert chosen.options == expected
    assert chosen.log_marginal_likelihood == max(s.log_marginal_likelihood for s in scores)
    # the parent is the chosen candidate: same evidence, same predictions
    assert float(model.log_marginal_likelihood()) == pytest.approx(
        chosen.log_marginal_likelihood, rel=1e-10)
    best = model._candidate_models[scores.index(chosen)]
    Xt = torch.linspace(0, 1, 7, dtype=torch.float64).unsqueeze(-1)
    assert torch.allclose(model.posterior(Xt).mean, best.posterior(Xt).mean, atol=1e-12)
    assert "*" in selection_table(scores)


def test_evidence_prefers_a_stronger_trend_for_quadratic_data() -> None:
    """A separable quadratic is the trend features' own function class: the candidate
    whose trend has the larger prior variance explains it with far higher evidence."""
    X = torch.rand(40, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = -(X - 0.3).square().sum(-1, keepdim=True)
    model = LaplaceBNN(X, Y, seed=0, width=20, n_epochs=150,
                       candidates=[{}, {"trend_scale": 5.0}]).fit()
    plain, strong = model.selection
    assert strong.chosen and not plain.chosen
    assert strong.log_marginal_likelihood > plain.log_marginal_likelihood + 10


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_evidence_equals_laplace_log_marginal_likelihood(subset: str) -> None:
    X = inputs(12)
    model = LaplaceBNN(X, torch.sin(6 * X), seed=0, **{**FAST, "subset_of_weights": subset,
                                                       "n_epochs": 40}).fit()
    expected = model.la.log_marginal_likelihood()
    assert float(model.log_marginal_likelihood()) == pytest.approx(float(expected), rel=1e-8)


def test_every_round_refits_each_candidate_from_its_own_previous_model() -> None:
    X = inputs(20)
    first = LaplaceBNN(X, torch.sin(6 * X), seed=0, candidates=[LONG, SHORT], **FAST).fit()
    X2 = torch.cat([X, torch.tensor([[0.5]], dtype=torch.float64)])
    second = LaplaceBNN(X2, torch.sin(6 * X2), warm_start=first, candidates=[LONG, SHORT],
                        **FAST)
    assert second._warm_candidates is first._candidate_models
    second.fit()
    for old, new in zip(first._candidate_models, second._candidate_models):
        assert new._warm  # warm-started (shorter schedule) from its own previous model
        assert torch.equal(new.prior_mean, old.prior_mean)
        assert not torch.equal(new.prior_precision, old.prior_precision)  # refit this round
    assert len(second.selection) == 2


def test_a_warm_start_from_another_family_starts_every_candidate_afresh() -> None:
    """Warm candidates are matched by their options, not their position: a family of the
    same size but other options (the default family changes with ``n``) warm-starts
    nothing, and an above-exact-rows round then refits every candidate, not the index of
    the previous incumbent."""
    X = inputs(20)
    first = LaplaceBNN(X, torch.sin(6 * X), seed=0, candidates=[LONG, SHORT], **FAST).fit()
    first._last_selection = (590, first.selection)  # as if all were refit at 590 rows
    third = {"init_scale": 1.0, "random_feature_lengthscale": (0.2, 1.0)}
    for family in ([SHORT, LONG], [LONG, third]):
        other = LaplaceBNN(X, torch.sin(6 * X), warm_start=first, candidates=family, **FAST)
        assert other._warm_candidates is None
        other._warm_candidates = first._candidate_models  # even then: not the incumbent's
        assert selection._incumbent(other, 600) is None
    same = LaplaceBNN(X, torch.sin(6 * X), warm_start=first, candidates=[LONG, SHORT], **FAST)
    assert same._warm_candidates == first._candidate_models
    assert selection._incumbent(same, 600) == next(
        i for i, s in enumerate(first.selection) if s.chosen)


@pytest.mark.parametrize(
    ("candidates", "message"),
    [([], "candidates is empty"),
     ({"width": 3}, "candidates must be a sequence of dicts"),
     ([{"width": 3}, 5], r"candidates\[1\] must be a dict"),
     ([{"subset_of_weights": "last_layer"}], r"candidates\[0\] sets \['subset_of_weights'\]")],
)
def test_bad_candidates_are_rejected(candidates, message) -> None:
    X = inputs(5)
    with pytest.raises(ValueError, match=message):
        LaplaceBNN(X, X, candidates=candidates)


def test_default_family_with_the_default_network_and_none_with_a_given_one() -> None:
    """Default options: the random-feature family, whose chosen evidence is ``laplace``'s
    log marginal likelihood of the chosen network; an MLP option set: the MLP family; a
    given network or ``candidates=None``: no selection."""
    from torch import nn

    from lapbo.selection import DEFAULT_CANDIDATES, MLP_CANDIDATES

    X = torch.rand(12, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Y = X.sum(-1, keepdim=True).sin()
    model = LaplaceBNN(X, Y).fit()
    assert [s.options for s in model.selection] == [dict(c) for c in DEFAULT_CANDIDATES]
    assert {(c["trend"], c.get("random_feature_kernel", "rbf")) for c in DEFAULT_CANDIDATES} \
        == {(t, k) for t in (None, "quadratic") for k in ("rbf", "matern52")}
    best = max(model.selection, key=lambda s: s.log_marginal_likelihood)
    assert best.chosen and sum(s.chosen for s in model.selection) == 1
    assert float(model.la.log_marginal_likelihood()) == pytest.approx(
        best.log_marginal_likelihood, rel=1e-8)
    mlp = LaplaceBNN(X, Y, **FAST).fit()
    assert [s.options for s in mlp.selection] == [dict(c) for c in MLP_CANDIDATES]
    best = max(mlp.selection, key=lambda s: s.log_marginal_likelihood)
    assert best.chosen and sum(s.chosen for s in mlp.selection) == 1
    assert float(mlp.log_marginal_likelihood()) == pytest.approx(
        best.log_marginal_likelihood, rel=1e-10)
    assert mlp._candidate_models[1].options.keep_best
    assert LaplaceBNN(X, Y, activation=["gauss", "gauss"]).candidates == \
        [dict(c) for c in DEFAULT_CANDIDATES]  # the default value, given as a list
    given = LaplaceBNN(X, Y, net=nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)),
                       **FAST).fit()
    assert given.selection == [] and given.candidates == []
    single = LaplaceBNN(X, Y, candidates=None, **FAST).fit()
    assert single.selection == []


def test_default_family_keeps_the_options_the_user_set() -> None:
    """An option of the random-feature family set on ``LaplaceBNN`` holds for every
    candidate (it used to be overridden by the family's own value in some of them), and
    candidates that then coincide are kept once."""
    X = torch.rand(12, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Y = X.sum(-1, keepdim=True).sin()
    rf = {"net": "random_features", "random_features": 4096}
    assert LaplaceBNN(X, Y, trend=None).candidates == [
        {**rf}, {**rf, "random_feature_kernel": "matern52"}]
    assert LaplaceBNN(X, Y, random_feature_kernel="matern52").candidates == [
        {**rf, "trend": None}, {**rf, "trend": "quadratic"}]
    model = LaplaceBNN(X, Y, random_features=256).fit()
    assert len(model.selection) == 4
    # 256 features and the bias, and the trend's [z, z²] (2 × 3) where there is one
    assert [s.n_weights for s in model.selection] == [257, 257, 263, 263]


def test_high_dimensional_inputs_get_the_gp_equivalent_networks() -> None:
    """From ``HIGH_DIMENSIONAL`` inputs on, the default family is three squared-exponential
    networks under ``SingleTaskGP``'s hyperpriors: two that split the prior variance
    differently and the second with a quadratic trend. Each keeps ``δ`` at its per-tensor
    reference; on a bowl the trend network has the highest evidence and is chosen, on a
    function with no global trend one without it; the chosen one predicts as the same
    network given explicitly, and an option the user sets still holds (a user-set
    ``prior_structure`` drops the references with it, and the two without a trend then
    coincide)."""
    from lapbo.selection import (
        DEFAULT_CANDIDATES,
        HIGH_DIMENSIONAL,
        HIGH_DIMENSIONAL_CANDIDATES,
        MID_DIMENSIONAL,
        MID_DIMENSIONAL_CANDIDATES,
    )

    g = torch.Generator().manual_seed(2)
    X = torch.rand(60, HIGH_DIMENSIONAL, generator=g, dtype=torch.float64)
    Y = (X - 0.5).square().sum(-1, keepdim=True) + 0.05 * torch.randn(60, 1, generator=g,
                                                                      dtype=X.dtype)
    below = LaplaceBNN(X[:, :MID_DIMENSIONAL - 1], Y).candidates
    assert below == [dict(c) for c in DEFAULT_CANDIDATES]
    for d in (MID_DIMENSIONAL, HIGH_DIMENSIONAL - 1):
        assert LaplaceBNN(X[:, :d], Y).candidates == [dict(c) for c in MID_DIMENSIONAL_CANDIDATES]
    model = LaplaceBNN(X, Y, seed=0).fit()
    assert model.candidates == [dict(c) for c in HIGH_DIMENSIONAL_CANDIDATES]
    assert [(c["trend"], c["prior_precision_reference"]) for c in model.candidates] == [
        (None, (2.0, 2.0)), (None, (1.0, 0.01)), ("quadratic", (1.0, 0.01))]
    for score, expected in zip(model.selection, (2.0, (1.0 + 0.01) / 2, (1.0 + 0.01) / 2)):
        assert score.prior_precision == pytest.approx(expected, rel=0.05)
    best = max(model.selection, key=lambda s: s.log_marginal_likelihood)
    assert best.chosen and sum(s.chosen for s in model.selection) == 1
    assert best.options["trend"] == "quadratic"
    explicit = LaplaceBNN(X, Y, seed=0, candidates=None, **best.options).fit()
    assert model.prior_structure == "layerwise"
    assert torch.equal(model.prior_precision, explicit.prior_precision)
    Xt = torch.rand(5, HIGH_DIMENSIONAL, generator=g, dtype=torch.float64)
    with torch.no_grad():
        a, b = model.posterior(Xt), explicit.posterior(Xt)
    assert torch.allclose(a.mean, b.mean, atol=1e-8)
    assert torch.allclose(a.variance, b.variance, rtol=1e-6)
    # a product of two periods, orthogonal to any separable quadratic: no trend is chosen
    wave = (2 * math.pi * X[:, :2]).cos().prod(-1, keepdim=True)
    scores = LaplaceBNN(X, wave, seed=0).fit().selection
    assert next(s for s in scores if s.chosen).options["trend"] is None
    assert scores[2].log_marginal_likelihood < max(s.log_marginal_likelihood
                                                   for s in scores[:2]) - 10
    assert [c.get("noise_prior") for c in LaplaceBNN(X, Y, noise_prior=(-8.0, 1.0)).candidates
            ] == [None, None, None]
    assert LaplaceBNN(X, Y, prior_structure="layerwise").candidates == [
        {"net": "random_features", "random_features": 4096, "trend": trend,
         "noise_prior": (-4.0, 1.0), "prior_precision_prior": 0.01}
        for trend in (None, "quadratic")]


def test_mid_dimensional_family_adds_the_squared_exponential_network_above_512_rows() -> None:
    """From four to nine inputs the squared-exponential network under the same Gamma
    hyperpriors joins the family above ``EXACT_FIT_ROWS`` observations only; a
    user-set kernel makes it coincide with the Matérn network without trend (kept once),
    and the other families do not change with ``n``."""
    from lapbo.lengthscales import EXACT_FIT_ROWS
    from lapbo.selection import (
        DEFAULT_CANDIDATES,
        HIGH_DIMENSIONAL_CANDIDATES,
        MID_DIMENSIONAL_CANDIDATES,
        MID_DIMENSIONAL_LARGE_DATA_CANDIDATE,
        default_family,
    )

    large = MID_DIMENSIONAL_LARGE_DATA_CANDIDATE
    assert large["random_feature_kernel"] == "rbf" and large["trend"] is None
    assert {k: v for k, v in large.items() if k != "random_feature_kernel"} == {
        k: v for k, v in MID_DIMENSIONAL_CANDIDATES[0].items() if k != "random_feature_kernel"}
    assert default_family((), 6, EXACT_FIT_ROWS) == MID_DIMENSIONAL_CANDIDATES
    assert default_family((), 6, EXACT_FIT_ROWS + 1) == (*MID_DIMENSIONAL_CANDIDATES, large)
    assert default_family((), 3, 5000) == DEFAULT_CANDIDATES
    assert default_family((), 12, 5000) == HIGH_DIMENSIONAL_CANDIDATES
    assert default_family(("random_feature_kernel",), 6, 5000) == tuple(
        {k: v for k, v in c.items() if k != "random_feature_kernel"}
        for c in MID_DIMENSIONAL_CANDIDATES)
    g = torch.Generator().manual_seed(4)
    X = torch.rand(EXACT_FIT_ROWS + 1, 5, generator=g, dtype=torch.float64)
    Y = X.sum(-1, keepdim=True)
    assert LaplaceBNN(X, Y).candidates == [*map(dict, MID_DIMENSIONAL_CANDIDATES), large]
    assert LaplaceBNN(X[:-1], Y[:-1]).candidates == [*map(dict, MID_DIMENSIONAL_CANDIDATES)]


@pytest.mark.slow
def test_the_evidence_picks_the_squared_exponential_network_on_many_smooth_rows() -> None:
    """Above 512 rows of a smooth (analytic) function of five inputs the
    squared-exponential network explains the data better than the Matérn-5/2 ones, whose
    features cannot interpolate it, and the evidence chooses it; the model predicts as
    that network given explicitly."""
    g = torch.Generator().manual_seed(5)
    X = torch.rand(600, 5, generator=g, dtype=torch.float64)
    Y = (2 * X).sin().sum(-1, keepdim=True) + (X[:, :1] * X[:, 1:2]).exp()
    model = LaplaceBNN(X, Y, seed=0).fit()
    kernels = [s.options["random_feature_kernel"] for s in model.selection]
    assert kernels == ["matern52", "matern52", "rbf"]
    assert model.selection[2].chosen
    evidences = [s.log_marginal_likelihood for s in model.selection]
    assert evidences[2] > max(evidences[:2]) + 10
    explicit = LaplaceBNN(X, Y, seed=0, candidates=None, **model.selection[2].options).fit()
    Xt = torch.rand(5, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        a, b = model.posterior(Xt), explicit.posterior(Xt)
    assert torch.allclose(a.mean, b.mean, atol=1e-8)
    assert torch.allclose(a.variance, b.variance, rtol=1e-6)


@pytest.mark.slow
def test_a_warm_start_across_512_rows_refits_the_grown_family_then_the_incumbent() -> None:
    """A BO loop that crosses ``EXACT_FIT_ROWS`` observations with four to nine inputs:
    the round that first has more rows fits all three candidates (the warm start had two),
    the next refits only the one it chose, keeping the others' scores."""
    from lapbo.lengthscales import EXACT_FIT_ROWS

    g = torch.Generator().manual_seed(6)
    X = torch.rand(EXACT_FIT_ROWS + 20, 5, generator=g, dtype=torch.float64)
    Y = (2 * X).sin().sum(-1, keepdim=True) + 0.01 * torch.randn(len(X), 1, generator=g,
                                                                 dtype=X.dtype)
    below = LaplaceBNN(X[:-22], Y[:-22], seed=0).fit()
    assert len(below.selection) == 2
    crossed = LaplaceBNN(X[:-10], Y[:-10], seed=0, warm_start=below).fit()
    assert [s.n_observations for s in crossed.selection] == [EXACT_FIT_ROWS + 10] * 3
    after = LaplaceBNN(X, Y, seed=0, warm_start=crossed).fit()
    chosen = next(i for i, s in enumerate(crossed.selection) if s.chosen)
    for i, (old, new) in enumerate(zip(crossed.selection, after.selection)):
        if i == chosen:
            assert new.chosen and new.n_observations == len(X)
        else:
            assert new.log_marginal_likelihood == old.log_marginal_likelihood
            assert new.n_observations == EXACT_FIT_ROWS + 10


def test_mid_dimensional_inputs_get_the_gamma_prior_matern_networks() -> None:
    """From ``MID_DIMENSIONAL`` to ``HIGH_DIMENSIONAL − 1`` inputs the default family is
    two Matérn-5/2 networks under the Gamma hyperpriors of BoTorch's earlier GP, without
    and with the trend: on a bowl the trend network is chosen, the constant's ``δ`` stays
    at its reference while the kernel's output scale is fitted, and the chosen network
    predicts as the same network given explicitly."""
    from lapbo.selection import MID_DIMENSIONAL_CANDIDATES

    g = torch.Generator().manual_seed(3)
    X = torch.rand(40, 6, generator=g, dtype=torch.float64)
    Y = (X - 0.5).square().sum(-1, keepdim=True) + 0.05 * torch.randn(40, 1, generator=g,
                                                                      dtype=X.dtype)
    model = LaplaceBNN(X, Y, seed=0).fit()
    assert model.candidates == [dict(c) for c in MID_DIMENSIONAL_CANDIDATES]
    assert [c["trend"] for c in model.candidates] == [None, "quadratic"]
    assert all(c["random_feature_kernel"] == "matern52"
               and c["lengthscale_prior"] == ("gamma", 3.0, 6.0) for c in model.candidates)
    best = max(model.selection, key=lambda s: s.log_marginal_likelihood)
    assert best.chosen and best.options["trend"] == "quadratic"
    assert float(model.prior_precision[1]) == pytest.approx(0.01, rel=0.05)
    explicit = LaplaceBNN(X, Y, seed=0, candidates=None, **best.options).fit()
    assert torch.equal(model.prior_precision, explicit.prior_precision)
    Xt = torch.rand(5, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        a, b = model.posterior(Xt), explicit.posterior(Xt)
    assert torch.allclose(a.mean, b.mean, atol=1e-8)
    assert torch.allclose(a.variance, b.variance, rtol=1e-6)


def test_prior_precision_reference_moves_the_centre_of_the_hyperprior() -> None:
    """``prior_precision_reference`` replaces the centre of the hyperprior on ``δ``: held
    by a tight hyperprior, the refit ``δ`` lands on it instead of on the default 2; a
    non-positive value is rejected by name."""
    X = torch.rand(20, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    Y = X.sum(-1, keepdim=True).sin()
    held = {"candidates": None, "net": "random_features", "random_features": 512,
            "trend": None, "prior_precision_prior": 0.01, "seed": 0}
    default = LaplaceBNN(X, Y, **held).fit()
    moved = LaplaceBNN(X, Y, prior_precision_reference=0.5, **held).fit()
    assert float(default.prior_precision) == pytest.approx(2.0, rel=0.05)
    assert float(moved.prior_precision) == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="prior_precision_reference"):
        LaplaceBNN(X, Y, prior_precision_reference=0.0)


def test_per_tensor_prior_precision_reference_gives_the_kernel_variance_one() -> None:
    """A tuple ``prior_precision_reference`` centres one hyperprior per weight tensor of a
    layerwise prior: ``(1.0, 0.01)`` holds the random-feature weights at ``δ = 1`` (kernel
    variance 1) and the constant at ``0.01``, and the posterior is the Bayesian linear
    regression on ``Φ = [ψ(x), 1]`` with the prior precisions ``(1, …, 1, 0.01)``; a tuple
    without ``prior_structure="layerwise"``, of the wrong length or with a non-positive
    entry is rejected by name."""
    from lapbo.networks import random_feature_layer

    g = torch.Generator().manual_seed(4)
    X = torch.rand(12, 10, generator=g, dtype=torch.float64)
    Y = (X - 0.5).square().sum(-1, keepdim=True)
    held = {"candidates": None, "net": "random_features", "random_features": 1024,
            "trend": None, "prior_precision_prior": 0.01, "seed": 0}
    model = LaplaceBNN(X, Y, prior_structure="layerwise",
                       prior_precision_reference=[1.0, 0.01], **held).fit()
    assert model.prior_precision.tolist() == pytest.approx([1.0, 0.01], rel=0.05)
    layer = random_feature_layer(model.net)

    def design(x: Tensor) -> Tensor:  # Φ (n, N + 1)
        feats = layer.features(x, layer.lengthscale)
        return torch.cat([feats, torch.ones_like(feats[:, :1])], dim=-1)

    phi, s2 = design(X), model.sigma_noise.square()
    precision = torch.cat([model.prior_precision[0].expand(phi.shape[-1] - 1),
                           model.prior_precision[1:]])
    covariance = torch.linalg.inv(phi.mT @ phi / s2 + torch.diag(precision))
    far = torch.rand(50, 10, generator=g, dtype=torch.float64)
    phi_far = design(far)
    expected = ((phi_far @ covariance) * phi_far).sum(-1)
    got = model.posterior(far).variance.squeeze(-1) / model.outcome_transform.stdvs.square()
    assert torch.allclose(got.squeeze(), expected, rtol=1e-6)
    for bad in ({"prior_precision_reference": (1.0, 0.01)},
                {"prior_precision_reference": (1.0, 0.01, 1.0), "prior_structure": "layerwise"},
                {"prior_precision_reference": (1.0, -1.0), "prior_structure": "layerwise"}):
        with pytest.raises(ValueError, match="prior_precision_reference"):
            LaplaceBNN(X, Y, **{**held, **bad})


def _matern_sample(kernel: str, n: int = 60) -> tuple[Tensor, Tensor]:
    """``n`` points in ``[0, 1]²`` and one draw of a GP with GPyTorch's ``kernel``
    (length scale 0.3, variance 1) plus noise of SD 0.01."""
    from gpytorch.kernels import MaternKernel, RBFKernel

    g = torch.Generator().manual_seed(1)
    X = torch.rand(n, 2, generator=g, dtype=torch.float64)
    k = (RBFKernel() if kernel == "rbf" else MaternKernel(nu=0.5)).double()
    k.lengthscale = 0.3
    L = torch.linalg.cholesky(k(X).to_dense().detach() + 1e-8 * torch.eye(n, dtype=X.dtype))
    Y = L @ torch.randn(n, 1, generator=g, dtype=X.dtype)
    return X, Y + 0.01 * torch.randn(n, 1, generator=g, dtype=X.dtype)


@pytest.mark.parametrize("kernel", ["rbf", "matern12"])
def test_evidence_picks_the_kernel_that_generated_the_data(kernel: str) -> None:
    """Draws of a squared-exponential and of a Matérn-1/2 GP: the random-feature candidate
    of the generating kernel has the higher evidence, by several nats."""
    X, Y = _matern_sample(kernel)
    family = [{"net": "random_features", "random_features": 1024, "trend": None,
               "random_feature_kernel": k} for k in ("rbf", "matern12")]
    model = LaplaceBNN(X, Y, seed=0, candidates=family).fit()
    chosen = next(s for s in model.selection if s.chosen)
    other = next(s for s in model.selection if not s.chosen)
    assert chosen.options["random_feature_kernel"] == kernel
    assert chosen.log_marginal_likelihood > other.log_marginal_likelihood + 3


def test_above_exact_rows_rounds_refit_the_incumbent_until_the_data_grows(monkeypatch) -> None:
    """Many rows: a warm round refits only the chosen candidate (the others keep their
    models and scores) until the data has grown by ``RECHECK_GROWTH``; then all again."""
    from lapbo import lengthscales

    monkeypatch.setattr(lengthscales, "EXACT_FIT_ROWS", 40)
    monkeypatch.setattr(lengthscales, "FULL_FEATURE_ROWS", 40)
    monkeypatch.setattr(lengthscales, "FIT_FEATURES", 32)
    family = [{"net": "random_features", "random_features": 64, "trend": trend}
              for trend in (None, "quadratic")]
    X = inputs(60)
    Y = torch.sin(6 * X)

    def fit(n: int, warm: LaplaceBNN | None) -> LaplaceBNN:
        return LaplaceBNN(X[:n], Y[:n], seed=0, candidates=family, warm_start=warm).fit()

    first = fit(45, None)
    assert [s.n_observations for s in first.selection] == [45, 45]
    chosen = next(i for i, s in enumerate(first.selection) if s.chosen)
    second = fit(50, first)  # 50 < 1.2 · 45: the incumbent alone
    other = 1 - chosen
    assert second._candidate_models[other] is first._candidate_models[other]
    assert second._candidate_models[chosen] is not first._candidate_models[chosen]
    assert second.selection[chosen].chosen and second.selection[chosen].n_observations == 50
    assert second.selection[other].n_observations == 45
    assert second.selection[other].log_marginal_likelihood == \
        first.selection[other].log_marginal_likelihood
    assert float(second.log_marginal_likelihood()) == pytest.approx(
        second.selection[chosen].log_marginal_likelihood, rel=1e-12)
    third = fit(55, second)  # 55 ≥ 1.2 · 45: every candidate again
    assert [s.n_observations for s in third.selection] == [55, 55]
    assert all(new is not old for new, old in
               zip(third._candidate_models, second._candidate_models))
    small = fit(30, None)  # up to EXACT_FIT_ROWS every round refits all
    assert [s.n_observations for s in fit(31, small).selection] == [31, 31]
    # the table counts the posterior's weights: 32 of the 64 features above 40 rows
    heads = [m.net[1].weight.numel() + 1 for m in first._candidate_models]
    assert [s.n_weights for s in first.selection] == heads and heads[0] == 32 + 1
    assert [s.n_weights for s in small.selection] == [h + 32 for h in heads]


def test_per_tensor_prior_precision_reference_reaches_the_candidates() -> None:
    """The parent passes a per-tensor reference on to its candidates (the default
    families' random-feature networks have two weight tensors, with or without the
    trend), which hold ``δ`` at it under a tight hyperprior; a candidate with another
    number of tensors (the default MLP) fails at the fit, by name."""
    g = torch.Generator().manual_seed(5)
    X = torch.rand(14, 10, generator=g, dtype=torch.float64)
    Y = X.sum(-1, keepdim=True).sin()
    for x in (X, X[:, :2]):  # the d >= 10 network and the four-network family
        model = LaplaceBNN(x, Y, prior_structure="layerwise", prior_precision_prior=0.01,
                           prior_precision_reference=(1.0, 0.01)).fit()
        assert model.prior_precision.tolist() == pytest.approx([1.0, 0.01], rel=0.05)
    mlp = LaplaceBNN(X, Y, prior_structure="layerwise", candidates=[{}],
                     prior_precision_reference=(1.0, 0.01), n_epochs=5)
    with pytest.raises(ValueError, match="prior_precision_reference"):
        mlp.fit()


def test_the_family_does_not_repeat_the_parents_data_warnings() -> None:
    """Single-precision inputs outside the unit cube: the constructor warns once for each
    (as BoTorch's GPs do); the candidates that ``fit()`` builds on the same data are
    silent."""
    import warnings

    from botorch.exceptions.warnings import InputDataWarning

    X = 3.0 * torch.rand(8, 2)
    Y = X.sum(-1, keepdim=True)
    with warnings.catch_warnings(record=True) as constructed:
        warnings.simplefilter("always")
        model = LaplaceBNN(X, Y, seed=0)
    messages = [str(w.message) for w in constructed if w.category is InputDataWarning]
    assert any("float32" in m for m in messages) and any("unit cube" in m for m in messages)
    with warnings.catch_warnings(record=True) as fitted:
        warnings.simplefilter("always")
        model.fit()
    assert len(model.selection) == 4
    assert not [w for w in fitted if w.category is InputDataWarning]


def test_from_mid_dimensional_inputs_on_every_round_refits_from_the_initial_values() -> None:
    """From ``MID_DIMENSIONAL`` inputs on and up to ``EXACT_FIT_ROWS`` observations, the
    default family ignores a warm start's candidates:
    the warm-started fit equals a fit from scratch (the fit is a function of the data, as
    BoTorch's GP refit), and differs from one that starts at the last round's values. Below
    ``MID_DIMENSIONAL`` inputs, and with candidates the user gives, the warm start is used."""
    from lapbo import lengthscales
    from lapbo.selection import HIGH_DIMENSIONAL_CANDIDATES, MID_DIMENSIONAL, refits_cold

    assert refits_cold([], MID_DIMENSIONAL, lengthscales.EXACT_FIT_ROWS)
    assert refits_cold([], 20, 30)
    assert not refits_cold([], MID_DIMENSIONAL - 1, 20)
    assert not refits_cold([], MID_DIMENSIONAL, lengthscales.EXACT_FIT_ROWS + 1)
    assert not refits_cold(["width"], MID_DIMENSIONAL, 20)  # the MLP family
    g = torch.Generator().manual_seed(3)
    X = torch.rand(30, 5, generator=g, dtype=torch.float64)
    Y = (3 * X[:, :1]).sin() + (X[:, 1:] - 0.3).square().sum(-1, keepdim=True)
    old = LaplaceBNN(X[:20], Y[:20], seed=0).fit()
    warm = LaplaceBNN(X, Y, seed=0, warm_start=old).fit()
    cold = LaplaceBNN(X, Y, seed=0).fit()
    assert [s.log_marginal_likelihood for s in warm.selection] == [
        s.log_marginal_likelihood for s in cold.selection]
    Xt = torch.rand(6, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(warm.posterior(Xt).mean, cold.posterior(Xt).mean)
    given = [dict(c) for c in HIGH_DIMENSIONAL_CANDIDATES]  # user-given: warm starts
    old_given = LaplaceBNN(X[:20], Y[:20], seed=0, candidates=given).fit()
    warm_given = LaplaceBNN(X, Y, seed=0, candidates=given, warm_start=old_given).fit()
    assert [s.log_marginal_likelihood for s in warm_given.selection] != [
        s.log_marginal_likelihood for s in cold.selection]


def test_candidates_kept_for_warm_starts_drop_their_caches() -> None:
    """After a fit, the candidates that only warm-start the next round hold no evidence or
    posterior caches (their ``(n, P)`` rows); asked again, they give the same evidence."""
    X = inputs(20)
    model = LaplaceBNN(X, torch.sin(6 * X), seed=0, candidates=[LONG, SHORT], **FAST).fit()
    for score, child in zip(model.selection, model._candidate_models):
        assert child._evidence is None and child._post is None and child._la is None
        assert float(child.log_marginal_likelihood()) == pytest.approx(
            score.log_marginal_likelihood, rel=1e-10)
    assert model._evidence is not None  # the chosen candidate's caches live on in the model
    averaged = LaplaceBNN(X, torch.sin(6 * X), seed=0, model_averaging=True, **FAST,
                          candidates=[{"init_scale": 0.5}, {"init_scale": 1.0}]).fit()
    assert len(averaged._mixture) == 2  # both weights positive (0.975 and 0.025)
    assert all(c._evidence is not None for _, c in averaged._mixture)  # they predict: kept
