"""``benchmarks/bo_power.py``: the bootstrap chance of a median at most the GP's and the
distribution of the count of problems, checked on cases whose answer is known."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bo_power import analyse, chance_at_most, count_distribution  # noqa: E402


def test_count_of_fair_coins_is_binomial() -> None:
    dist = count_distribution([0.5] * 10)
    assert dist == pytest.approx([math.comb(10, k) / 1024 for k in range(11)], abs=1e-15)
    assert sum(dist[8:]) == pytest.approx(56 / 1024)


def test_count_of_certain_and_impossible_events() -> None:
    assert count_distribution([1.0, 0.0, 1.0]) == pytest.approx([0.0, 0.0, 1.0, 0.0])
    dist = count_distribution([0.2, 0.7])
    assert dist == pytest.approx([0.8 * 0.3, 0.2 * 0.3 + 0.8 * 0.7, 0.2 * 0.7])


def test_chance_of_a_median_at_most_the_gps() -> None:
    rng = random.Random(0)
    gp = [float(i) for i in range(10)]
    assert chance_at_most(gp, gp, 200, rng) == 1.0  # equal medians count as "at most"
    assert chance_at_most([v - 100 for v in gp], gp, 200, rng) == 1.0
    assert chance_at_most([v + 100 for v in gp], gp, 200, rng) == 0.0
    # one seed better by a lot, nine worse by a little: the median is almost always worse
    assert chance_at_most([-100.0] + [v + 0.5 for v in gp[1:]], gp, 2000, rng) < 0.2


def test_analyse_pairs_the_runs_by_seed() -> None:
    runs = [{"problem": p, "method": m, "seed": s,
             "final_log10_regret": s + (-1.0 if (m, p) == ("laplace", "a") else 0.0)}
            for p in ("a", "b") for m in ("gp", "laplace") for s in range(10)]
    res = analyse(runs, "laplace", target=2, resamples=500, seed=0)
    assert res["per_problem"] == {"a": 1.0, "b": 1.0}
    assert res["p_at_least_2"] == 1.0 and res["null_p_at_least_2"] == 0.25
    with pytest.raises(ValueError, match="no paired GP runs for 'laplace'"):
        analyse([r for r in runs if r["method"] != "gp"], "laplace", 2, 10, 0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"resamples": 0}, "resamples must be a positive integer"),
    ({"target": -1}, "target must be a non-negative integer"),
    ({"method": "cold"}, "no runs of method 'cold'"),
])
def test_analyse_names_bad_arguments(kwargs: dict, match: str) -> None:
    runs = [{"problem": "a", "method": m, "seed": 0, "final_log10_regret": 0.0}
            for m in ("gp", "laplace")]
    args = {"method": "laplace", "target": 1, "resamples": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        analyse(runs, args["method"], args["target"], args["resamples"], args["seed"])
