"""The bookkeeping of ``benchmarks/jacobians.py`` (the timings themselves are not tested):
both routes agree on the numbers, the ratios are the quotients of the times, and the
table has one row per setting."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import jacobians as bench  # noqa: E402


def test_measure_agrees_and_reports_ratios() -> None:
    row = bench.measure(d=3, K=2, n=5, repeats=1)
    assert row["P"] == sum(p.numel() for p in bench.default_network(3, 2, trend="quadratic",
                                                                     random_features=100)
                           .parameters())
    assert row["max_abs_difference"] < 1e-12
    for kind in ("refit", "acquisition"):
        ratio = row[f"vmap_jacrev_{kind}_ms"] / row[f"linear_layers_{kind}_ms"]
        assert abs(row[f"{kind}_speedup"] - ratio) < 1e-12
    text = bench.table([row, row])
    assert text.count("\n") == 3 and "| 3 | 2 | 5 |" in text
