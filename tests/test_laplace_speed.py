"""The bookkeeping of ``benchmarks/laplace_speed.py`` (the timings themselves are not tested).

Merging interleaved repetitions, the laplace-torch / ``laplace`` ratios and targets on
hand-made numbers, the problem hand-over between interpreters (saved and reloaded
networks give bit-identical outputs), and the cached laplace-torch environment (a
finished install is reused without running anything).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import laplace_speed as ls  # noqa: E402
from benchmarks import laplace_torch_env  # noqa: E402


def timed(seconds: float, load: float = 0.5) -> dict:
    return {"fit": {"median_s": seconds, "times_s": [seconds]}, "load_average_end": load,
            "peak_rss_fit_mb": 10 * seconds, "peak_rss_mb": 20 * seconds}


def test_merge_pools_repetitions_and_keeps_errors():
    merged = ls.merge([timed(1.0, 0.4), {"error": "RuntimeError: boom"}, timed(4.0, 0.6)])
    assert merged["fit"] == {"median_s": 2.5, "times_s": [1.0, 4.0]}
    assert merged["errors"] == ["RuntimeError: boom"]
    assert merged["loads"] == [0.4, 0.6]
    assert merged["peak_rss_fit_mb"] == 40.0 and merged["peak_rss_mb"] == 80.0
    assert ls.merge([{"error": "x"}]) == {"errors": ["x"], "loads": []}


def fake_results() -> dict:
    def case(ours: float, theirs: float, op: str = "fit") -> dict:
        return {"laplace": {op: {"median_s": ours}},
                "laplace-torch": {op: {"median_s": theirs}}}

    reg_full = case(0.2, 13.0)
    reg_full["laplace"]["marglik_50"] = {"median_s": 0.5}
    reg_full["laplace-torch"]["marglik_50"] = {"median_s": 50.0}
    baseline = {"jacobians": {"median_s": 0.04}, "sum_JtJ": {"median_s": 0.06}}
    return {"regression": {"baseline": baseline, "cases": {"full": reg_full}},
            "classification": {"baseline": {}, "cases": {"diag": case(0.8, 16.0)}}}


def test_ratios_and_targets_use_both_measurements():
    results = fake_results()
    assert ls.ratio(results, "regression", "full", "fit") == pytest.approx(65.0)
    assert ls.ratio(results, "regression", "kron", "fit") is None
    rows = {row["key"]: row for row in ls.targets(results)}
    full = rows["full_fit_regression"]
    assert full["value"] == pytest.approx(2.0) and full["passed"]
    assert full["laplace_torch_0_3_s"] == 13.0 and full["speedup"] == pytest.approx(65.0)
    diag = rows["diag_fit_classification"]
    assert not diag["passed"] and diag["speedup"] == pytest.approx(20.0)
    marglik = rows["marglik_regression_full"]
    assert marglik["passed"] and marglik["speedup"] == pytest.approx(100.0)


def test_saved_problem_reloads_the_same_network(tmp_path):
    dtype = torch.get_default_dtype()
    try:
        problem = ls.build_problem("regression", quick=True, batch_size=64)
        ls.save_problem(problem, tmp_path / "p.pt")
        loaded = ls.load_problem(tmp_path / "p.pt")
    finally:
        torch.set_default_dtype(dtype)
    assert (loaded.sizes, loaded.activation, loaded.n_params) == ([5, 50, 50, 1], "tanh", 2901)
    assert torch.equal(loaded.X, problem.X) and torch.equal(loaded.y, problem.y)
    with torch.no_grad():
        assert torch.equal(loaded.model(problem.X_test), problem.model(problem.X_test))
    assert len(loaded.loader) == 4  # 200 points, batch size 64


def test_cached_laplace_torch_environment_is_reused(tmp_path, monkeypatch):
    python = laplace_torch_env.venv_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.touch()
    versions = {"laplace-torch": "0.3", "torch": "2.14.1"}
    (tmp_path / "versions.json").write_text(json.dumps(versions))

    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing should run: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    assert laplace_torch_env.ensure_laplace_torch_env(tmp_path) == (python, versions)
