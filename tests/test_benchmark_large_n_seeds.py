"""The bookkeeping of ``benchmarks/large_n.py --seed-table`` (no run): each seed compared at
the ``N`` all its methods reached, CPU per round up to there, medians over seeds and the
seeds where a method is at most the exact GP's regret."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import large_n as bench  # noqa: E402


def _write_run(stem: Path, seed: int, runs: dict[str, list[tuple[int, float, float]]],
               **meta: str) -> None:
    """``runs``: method -> rounds of (N, CPU s of the round, log10 regret after it)."""
    stem.with_suffix(".json").write_text(json.dumps({"meta": {"seed": seed, **meta},
                                                     "runs": []}))
    for method, rounds in runs.items():
        lines = ["a warning line the table skips"] + [
            json.dumps({"n": n, "fit_cpu_s": cpu - 1.0, "acq_cpu_s": 1.0, "log10_regret": r})
            for n, cpu, r in rounds]
        Path(f"{stem}.{method}.progress").write_text("\n".join(lines) + "\n")


def test_seeds_compared_where_all_methods_are(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "design_regret", lambda seed, n_init, problem: 1.0 + seed / 1000)
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
    assert "laplace 2 of 3" in text and text.startswith("| seed | N |")


def test_each_seed_is_compared_on_its_own_problem(tmp_path, monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(bench, "design_regret",
                        lambda seed, n_init, problem: asked.append((seed, problem)) or 1.0)
    _write_run(tmp_path / "old", 0, {"laplace": [(1010, 3.0, 0.7)]})  # before --problem
    _write_run(tmp_path / "levy", 3, {"laplace": [(1010, 3.0, 0.7)]}, problem="levy20")
    text, _ = bench.seed_table([str(tmp_path / "old"), str(tmp_path / "levy")], 1000)
    assert asked == [(0, "ackley20"), (3, "levy20")]
    assert "| ackley20, 0 | 1010 |" in text and "| levy20, 3 | 1010 |" in text
    assert text.startswith("| problem, seed | N |")


def test_several_problems_get_their_medians(tmp_path, monkeypatch) -> None:
    """With more than one problem: each problem's median per method over its seeds, and
    the problems where a method's median is at most the GP's (a tie counts)."""
    monkeypatch.setattr(bench, "design_regret", lambda seed, n_init, problem: 1.0)
    runs = {("levy20", 1): (0.1, 0.3), ("levy20", 2): (0.5, 0.4), ("levy20", 3): (0.9, 0.2),
            ("powell8", 1): (2.0, 1.0), ("powell8", 2): (1.5, 1.5)}
    for (problem, seed), (la, gp) in runs.items():
        _write_run(tmp_path / f"{problem}{seed}", seed,
                   {"laplace": [(1010, 3.0, la)], "gp": [(1010, 5.0, gp)]}, problem=problem)
    text, _ = bench.seed_table([str(tmp_path / f"{p}{s}") for p, s in runs], 1000)
    assert "| levy20 | 3 | 0.500 | 0.300 |" in text  # medians 0.5 (laplace), 0.3 (gp)
    assert "| powell8 | 2 | 1.750 | 1.250 |" in text
    assert "median is at most the exact GP's: laplace 0 of 2." in text
    single, _ = bench.seed_table([str(tmp_path / "levy201")], 1000)
    assert "median is at most" not in single


def test_seeds_compared_at_a_given_n(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "design_regret", lambda seed, n_init, problem: 1.0)
    _write_run(tmp_path / "s", 5, {"laplace": [(1010, 4.0, 0.9), (1020, 2.0, 0.6)],
                                    "gp": [(1010, 10.0, 0.8), (1020, 30.0, 0.5)]})
    _, table = bench.seed_table([str(tmp_path / "s")], 1000, at=1010)
    cells = table["seeds"][0]["methods"]
    assert table["seeds"][0]["n"] == 1010
    assert (cells["laplace"]["regret"], cells["gp"]["regret"]) == (0.9, 0.8)
    assert cells["gp"]["cpu_s_per_round"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="reached only N = 1020"):
        bench.seed_table([str(tmp_path / "s")], 1000, at=1030)
    for between in (1015, 900):  # no round ends there
        with pytest.raises(ValueError, match=f"--at {between}: no round"):
            bench.seed_table([str(tmp_path / "s")], 1000, at=between)


@pytest.mark.parametrize("name", list(bench.PROBLEMS))
def test_design_lies_in_the_problem_box(name) -> None:
    problem = bench.PROBLEMS[name]()
    X = bench.sobol_design(problem, 64, seed=3)
    lo, hi = problem.bounds.to(X)
    assert X.shape == (64, problem.dim) and bool(((X >= lo) & (X <= hi)).all())
    assert bench.design_regret(3, 64, name) == pytest.approx(
        math.log10(float(problem.optimal_value) - float(problem(X).max())))


def test_the_benchmark_design_is_the_one_of_the_stored_tables() -> None:
    # Ackley-20, seed 0, 1,000 points: log10 regret 1.296 in every large-N table
    assert bench.design_regret(0, 1000) == pytest.approx(1.2960, abs=1e-4)


def test_progress_table_reports_the_cost_at_the_n_compared(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "LAST_ROUNDS", 2)
    _write_run(tmp_path / "r", 0, {
        "laplace": [(1010, 40.0, 0.9), (1020, 2.0, 0.6), (1030, 4.0, 0.5), (1040, 1.0, 0.5)],
        "gp": [(1010, 10.0, 0.8), (1020, 20.0, 0.7), (1030, 60.0, 0.7)]})
    _, table = bench.progress_table([f"{tmp_path / 'r'}.laplace.progress",
                                     f"{tmp_path / 'r'}.gp.progress"], 1.0)
    lap, gp = table["methods"]["r.laplace"], table["methods"]["r.gp"]
    assert table["common_n"] == 1030 and lap["rounds_compared"] == 3
    # all rounds to N = 1,030, and the last two of them
    assert lap["fit_cpu_s"] + lap["acq_cpu_s"] == pytest.approx(46.0 / 3)
    assert (lap["last_rounds_cpu_s"], gp["last_rounds_cpu_s"]) == (3.0, 40.0)
    assert lap["regret"][1030] == 0.5 and gp["regret"][1030] == 0.7


def test_progress_table_lists_the_cpus_a_resumed_run_ran_on(tmp_path) -> None:
    stem = tmp_path / "r"
    rounds = [{"n": 1010, "fit_cpu_s": 1.0, "acq_cpu_s": 1.0, "log10_regret": 0.9},
              {"n": 1020, "fit_cpu_s": 1.0, "acq_cpu_s": 1.0, "log10_regret": 0.8,
               "cpu": "CPU B"},
              {"n": 1030, "fit_cpu_s": 1.0, "acq_cpu_s": 1.0, "log10_regret": 0.8,
               "cpu": "CPU A"}]
    Path(f"{stem}.gp.progress").write_text("\n".join(map(json.dumps, rounds)) + "\n")
    Path(f"{stem}.laplace.progress").write_text(json.dumps(rounds[0]) + "\n")
    text, table = bench.progress_table([f"{stem}.gp.progress", f"{stem}.laplace.progress"],
                                       1.0)
    assert table["cpus"] == {"r.gp": ["CPU A", "CPU B"], "r.laplace": []}
    assert "r.gp: CPU A, CPU B; r.laplace: not recorded" in text


@pytest.mark.parametrize("d, n, kept", [(6, 600, 2), (20, 600, 2), (2, 600, 2)])
def test_notrend_variant_is_the_default_family_less_its_trend_networks(d, n, kept) -> None:
    from lapbo import selection
    family = bench.notrend_family(d, n)
    default = selection.default_family([], d, n)
    assert len(family) == kept and all(c.get("trend") is None for c in family)
    assert all(c in default for c in family)
    assert len(default) - len(family) == sum(c.get("trend") == "quadratic" for c in default)


def test_progress_lines_name_the_chosen_candidate() -> None:
    """A ``LaplaceBNN`` round's progress line names the network the evidence chose (index,
    trend, kernel) and every candidate's evidence; other models add nothing."""
    from types import SimpleNamespace

    from lapbo.selection import CandidateScore

    scores = [CandidateScore(options={"trend": None}, log_marginal_likelihood=-10.0,
                             prior_precision=1.0, sigma_noise=0.1, n_observations=5,
                             n_weights=3),
              CandidateScore(options={"trend": "quadratic", "random_feature_kernel": "matern52"},
                             log_marginal_likelihood=-2.12345, prior_precision=1.0,
                             sigma_noise=0.1, n_observations=5, n_weights=3, chosen=True)]
    assert bench.chosen_candidate(SimpleNamespace(selection=scores)) == {
        "chosen": 1, "chosen_trend": "quadratic", "chosen_kernel": "matern52",
        "log_evidences": [-10.0, -2.123]}
    assert bench.chosen_candidate(SimpleNamespace(selection=[])) == {}
    assert bench.chosen_candidate(object()) == {}
