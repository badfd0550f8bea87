"""The bookkeeping of ``benchmarks/first_iteration.py`` (the timings themselves are not
tested): medians over processes per iteration, first and later iterations, the ratio to
the GP's first iteration, and one fresh process that really runs the loop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import first_iteration as bench  # noqa: E402


def test_medians_ratios_and_table(monkeypatch) -> None:
    runs = {"gp": iter([{"iterations": [[0.4, 0.1], [0.1, 0.1]], "dynamo": False},
                        {"iterations": [[0.6, 0.1], [0.1, 0.3]], "dynamo": False},
                        {"iterations": [[0.5, 0.1], [0.1, 0.2]], "dynamo": False}]),
            "laplace": iter([{"iterations": [[0.9, 0.1], [0.2, 0.1]], "dynamo": True}] * 3)}
    monkeypatch.setattr(bench, "run_process", lambda problem, method, n: next(runs[method]))
    gp = bench.measure("branin", "gp", 2, 3)
    assert gp["iterations"] == [[0.5, 0.1], [0.1, 0.2]]
    assert gp["first_s"] == pytest.approx(0.6) and gp["later_s"] == pytest.approx(0.3)
    laplace = bench.measure("branin", "laplace", 2, 3)
    text = bench.table([gp, laplace])
    assert "| branin | laplace | 1.00 (0.90 + 0.10) | 0.30 | 1.67× | yes |" in text
    assert "| branin | gp | 0.60 (0.50 + 0.10) | 0.30 | 1.00× | no |" in text


def test_a_fresh_process_runs_the_loop() -> None:
    run = bench.run_process("branin", "gp", 1)
    assert len(run["iterations"]) == 1 and all(t > 0 for t in run["iterations"][0])
    assert run["dynamo"] is False
