"""The benchmark problems of ``benchmarks/problems.py`` (the ten and the development ones)
are maximisation problems whose ``optimal_value`` is their maximum (the regret ``f* − f``
is never negative)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.problems import DEVELOPMENT_PROBLEMS, PROBLEMS, make_problem  # noqa: E402


@pytest.mark.parametrize("name", [*PROBLEMS, *DEVELOPMENT_PROBLEMS])
def test_optimal_value_is_the_maximum(name: str) -> None:
    problem = make_problem(name)
    lo, hi = problem.bounds.to(torch.float64)
    g = torch.Generator().manual_seed(0)
    X = lo + (hi - lo) * torch.rand(4096, problem.dim, generator=g, dtype=torch.float64)
    values = problem(X, noise=False)
    f_star = float(problem.optimal_value)
    assert float(values.max()) <= f_star + 1e-9
    try:
        optimizers = problem.optimizers.to(torch.float64)
    except NotImplementedError:  # Michalewicz-5, -10: BoTorch knows the value, not the point
        assert name in ("michalewicz5", "michalewicz10")
        return
    # BoTorch rounds some optimizers (Shekel-5's [4, 4, 4, 4] is 1.7e-4 below its maximum)
    assert float(problem(optimizers, noise=False).max()) == pytest.approx(f_star, abs=5e-4)


def test_the_development_problems_are_not_the_reported_ones() -> None:
    assert len(PROBLEMS) == 10 and len(DEVELOPMENT_PROBLEMS) == 40
    assert not set(PROBLEMS) & set(DEVELOPMENT_PROBLEMS)


def test_unknown_problem_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown problem 'sphere'"):
        make_problem("sphere")


def test_observations_share_their_noise_across_methods() -> None:
    """``benchmarks.bo.observe``: the noise of a step depends on (seed, step) only, not on
    what the global generator drew before (a method's fits), and has the problem's SD."""
    from benchmarks.bo import observe

    problem = make_problem("levy5_noisy")
    X = torch.rand(2000, problem.dim, dtype=torch.float64) * 20 - 10
    torch.manual_seed(1)
    Y1, F1 = observe(problem, X, seed=3, step=7)
    torch.rand(123)  # another method's fit consumed the global generator
    Y2, F2 = observe(problem, X, seed=3, step=7)
    assert torch.equal(Y1, Y2) and torch.equal(F1, F2)
    assert torch.equal(F1, problem(X, noise=False))
    assert float((Y1 - F1).std()) == pytest.approx(problem.noise_std, rel=0.05)
    Y3, _ = observe(problem, X, seed=3, step=8)
    assert not torch.equal(Y1, Y3)
    clean = make_problem("branin")
    lo, hi = clean.bounds.to(torch.float64)
    Yc, Fc = observe(clean, lo + (hi - lo) * torch.rand(50, 2, dtype=torch.float64), 3, 7)
    assert torch.equal(Yc, Fc)


def test_a_second_gp_differs_from_the_gp_only_in_its_acquisition_draws() -> None:
    """``benchmarks.bo.run_bo``: a variant ``{"model": "gp", "acquisition_seed": 1}`` is a
    ``SingleTaskGP`` run on the same initial design whose acquisition draws other random
    starts (the null comparison of the BO protocol); ``acquisition_seed`` 0 is the GP."""
    from benchmarks.bo import run_bo

    gp = run_bo("branin", "gp", {}, seed=0, iterations=3)
    same = run_bo("branin", "gp_copy", {"model": "gp"}, seed=0, iterations=3)
    other = run_bo("branin", "gp2", {"model": "gp", "acquisition_seed": 1}, seed=0,
                   iterations=3)
    assert gp["log10_regret"][0] == other["log10_regret"][0]  # the same initial design
    assert same["log10_regret"] == gp["log10_regret"]
    assert other["log10_regret"][1:] != gp["log10_regret"][1:]
    assert "final_sigma_noise" not in other  # not a LaplaceBNN


@pytest.mark.parametrize(("options", "match"), [
    ({"model": "svgp"}, "'model' must be 'gp', not 'svgp'"),
    ({"model": "gp", "warm": False}, r"takes no LaplaceBNN options: \['warm'\]"),
    ({"acquisition_seed": -1}, "'acquisition_seed' must be a non-negative integer"),
    ({"model": "gp", "acquisition_seed": 1.5}, "'acquisition_seed' must be a non-negative"),
])
def test_malformed_variant_options_are_named(options: dict, match: str) -> None:
    from benchmarks.bo import run_bo

    with pytest.raises(ValueError, match=match):
        run_bo("branin", "v", options, seed=0, iterations=1)


def test_the_input_warp_variant_learns_a_warp_after_the_normalize() -> None:
    from botorch.models.transforms.input import Warp

    from benchmarks.bo import PROBLEMS, fit_model, input_transform

    problem = PROBLEMS["branin"]()
    bounds = problem.bounds.to(torch.float64)
    chain = input_transform(2, bounds, {"input_warp": True})
    assert isinstance(chain["warp"], Warp) and not chain["warp"]._normalize.learn_bounds
    X = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(
        8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = problem(X).unsqueeze(-1)
    for method, options in (("laplace", {"input_warp": True, "candidates": None,
                                         "net": "random_features"}),
                            ("gp", {"model": "gp", "input_warp": True})):
        model = fit_model(method, options, X, Y, problem, None, seed=0)
        warp = model.input_transform["warp"]
        assert not torch.equal(warp.concentration0.detach(),
                               torch.ones_like(warp.concentration0))
