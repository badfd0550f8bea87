"""The bookkeeping of ``benchmarks/large_n.py --seed-table`` (no run): each seed compared at
the ``N`` all its methods reached, CPU per round up to there, medians over seeds and the
seeds where a method is at most the exact GP's regret."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import large_n as bench  # noqa: E402


def _write_run(stem: Path, seed: int, runs: dict[str, list[tuple[int, float, float]]]) -> None:
    """``runs``: method -> rounds of (N, CPU s of the round, log10 regret after it)."""
    stem.with_suffix(".json").write_text(json.dumps({"meta": {"seed": seed}, "runs": []}))
    for method, rounds in runs.items():
        lines = ["a warning line the table skips"] + [
            json.dumps({"n": n, "fit_cpu_s": cpu - 1.0, "acq_cpu_s": 1.0, "log10_regret": r})
            for n, cpu, r in rounds]
        Path(f"{stem}.{method}.progress").write_text("\n".join(lines) + "\n")


def test_seeds_compared_where_all_methods_are(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "design_regret", lambda seed, n_init: 1.0 + seed / 1000)
    _write_run(tmp_path / "s100", 100, {
        "laplace": [(1010, 4.0, 0.9), (1020, 2.0, 0.6), (1030, 2.0, 0.5)],
        "gp": [(1010, 10.0, 0.8), (1020, 30.0, 0.7)]})  # the GP stopped at N = 1,020
    _write_run(tmp_path / "s101", 101, {
        "laplace": [(1010, 3.0, 0.8)], "gp": [(1010, 5.0, 0.75)]})
    _write_run(tmp_path / "s102", 102, {
        "laplace": [(1010, 3.0, 0.7)], "gp": [(1010, 5.0, 0.7)]})
    text, table = bench.seed_table([str(tmp_path / s) for s in ("s100", "s101", "s102")], 1000)
    first = table["seeds"][0]
    assert first["n"] == 1020
    assert first["methods"]["laplace"]["regret"] == 0.6
    assert first["methods"]["laplace"]["cpu_s_per_round"] == pytest.approx(3.0)
    assert first["methods"]["gp"]["cpu_s_per_round"] == pytest.approx(20.0)
    summary = table["summary"]
    assert summary["laplace"]["median_regret"] == pytest.approx(0.7)
    assert summary["gp"]["median_regret"] == pytest.approx(0.7)
    # 0.6 < 0.7, 0.8 > 0.75, a tie at 0.7 counts as at most
    assert (summary["laplace"]["at_most_gp"], summary["laplace"]["paired_with_gp"]) == (2, 3)
    assert "| 100 | 1020 | 1.100 | 0.600 (3.0) | 0.700 (20.0) |" in text
    assert "| median | | 1.101 | 0.700 | 0.700 |" in text
    assert "laplace 2 of 3" in text
