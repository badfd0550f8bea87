"""The bookkeeping of ``benchmarks/noisy_acquisition.py`` (the timings themselves are not
tested): the switch that turns sharing off is undone, both ``LaplaceBNN`` runs start from
the same random state (the same pruned baseline), and the table has its rows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import noisy_acquisition as bench  # noqa: E402
from lapbo import linearized_model  # noqa: E402


def test_a_setting_measures_three_optimisations_and_restores_the_switch() -> None:
    switch = linearized_model.shared_points
    row = bench.run_setting(d=2, n=24, q=2)
    assert linearized_model.shared_points is switch
    shared, unshared, gp = row["shared"], row["unshared"], row["gp"]
    assert shared["baseline"] == unshared["baseline"] >= 1  # the same pruning (same state)
    assert all(r["calls"] > 1 and r["cpu_s"] > 0 for r in (shared, unshared, gp))
    assert len(shared["candidate"]) == 2 and len(shared["candidate"][0]) == 2
    text = bench.table([row])
    assert text.splitlines()[2].startswith("| 2 | 24 | 2 |")
    assert f"{unshared['cpu_s'] / shared['cpu_s']:.1f}" in text.splitlines()[2]
