"""``benchmarks/acquisition_cross.py``: the first round it rebuilds is ``large_n.run``'s, and
every method's acquisition is read at every batch."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import acquisition_cross as cross  # noqa: E402
from benchmarks import large_n  # noqa: E402


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return cross.cross_table("ackley6", n=30, q=2, seed=7, methods=("laplace", "gp"))


def test_the_batches_are_those_of_the_runs_first_round(rows, tmp_path) -> None:
    for row in rows:
        large_n.run(row["method"], n_init=30, rounds=1, q=2, seed=7,
                    save_data=str(tmp_path / "run"), problem_name="ackley6")
        state = torch.load(tmp_path / f"run.{row['method']}.pt")
        assert row["batch_best"] == pytest.approx(float(state["Y"][30:].max()), abs=1e-10)


def test_every_acquisition_is_read_at_every_batch(rows) -> None:
    problem = large_n.PROBLEMS["ackley6"]()
    for row in rows:
        assert set(row["acquisition_at"]) == {"laplace", "gp"}
        assert all(math.isfinite(v) for v in row["acquisition_at"].values())
        assert row["sd_at_optimum"] > 0 and row["sd_at_incumbent"] > 0
        assert row["batch_best"] <= float(problem.optimal_value)
        assert row["acq_calls"] > 1 and 1 <= row["baseline_points"] <= 30
        assert row["batch_mean_abs_z"] >= 0 and math.isfinite(row["batch_lpd"])
    assert rows[0]["chosen_trend"] in (None, "quadratic") and "chosen_trend" not in rows[1]
    text = cross.markdown(rows, "ackley6", 30, 7, "cmd", "abc")
    assert "| laplace |" in text and "| gp |" in text and "acq at gp's batch" in text
    assert "batch mean \\|z\\|" in text


def test_batch_prediction_is_the_normal_density_of_the_true_values() -> None:
    class Known:  # a predictive N(0, 2²) at every point
        def posterior(self, X, observation_noise=False):
            assert observation_noise is True
            return type("P", (), {"mean": torch.zeros(len(X), 1, dtype=torch.float64),
                                  "variance": torch.full((len(X), 1), 4.0, dtype=torch.float64)})

    values = torch.tensor([2.0, -4.0], dtype=torch.float64)  # z = 1, -2
    out = cross.batch_prediction(Known(), torch.zeros(2, 3), values, outcome_sd=2.0)
    assert out["batch_mean_abs_z"] == pytest.approx(1.5)
    # log N(v; 0, 4) + log 2 = -z²/2 - log 2 - log√(2π) + log 2
    assert out["batch_lpd"] == pytest.approx(-(0.5 + 2.0) / 2 - 0.5 * math.log(2 * math.pi))
