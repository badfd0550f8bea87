"""``benchmarks/plots.py``: quartiles of the regret traces, speed rows, small PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import plots

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def run(problem: str, method: str, seed: int, trace: list[float]) -> dict:
    return {"problem": problem, "method": method, "seed": seed, "log10_regret": trace}


RUNS = [run("branin", "gp", s, [1.0, 0.5 - s, -s]) for s in range(5)] + [
    run("branin", "laplace", 0, [1.0, 0.0, -1.0]),
    run("hartmann", "gp", 0, [0.3, 0.2, 0.1]),
]


def test_regret_quantiles_are_the_quartiles_over_seeds() -> None:
    q = plots.regret_quantiles(RUNS, "branin", "gp")
    # seeds 0..4 at iteration 2: -0, -1, -2, -3, -4 → quartiles -3, -2, -1
    np.testing.assert_allclose(q[:, 2], [-3.0, -2.0, -1.0])
    np.testing.assert_allclose(q[:, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(plots.regret_quantiles(RUNS, "branin", "laplace")[1],
                               [1.0, 0.0, -1.0])


def test_regret_quantiles_refuse_a_missing_pair() -> None:
    with pytest.raises(ValueError, match="runs: no trace for problem 'hartmann' and "
                                         "method 'laplace'"):
        plots.regret_quantiles(RUNS, "hartmann", "laplace")


def test_bo_figure_is_written_small(tmp_path: Path) -> None:
    path = tmp_path / "bo_toy.json"
    path.write_text(json.dumps({"meta": {"seeds": [0, 1, 2, 3, 4]}, "runs": RUNS}))
    png = plots.plot_bo(path, tmp_path)
    assert png == tmp_path / "bo_toy_convergence.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000


def test_speed_rows_pair_the_recorded_medians() -> None:
    data = json.loads((RESULTS / "laplace_speed.json").read_text())
    rows = plots.speed_rows(data["regression"])
    full = data["regression"]["cases"]["full"]
    assert rows[0] == ("full: fit", full["laplace"]["fit"]["median_s"],
                       full["laplace-torch"]["fit"]["median_s"])
    assert len(rows) == 4 * 5  # four cases × five operations


def test_committed_figures_are_small() -> None:
    figures = sorted(RESULTS.glob("*.png"))
    assert {p.name for p in figures} >= {"bo_convergence.png", "laplace_speed.png"}
    assert all(p.stat().st_size < 200_000 for p in figures)
