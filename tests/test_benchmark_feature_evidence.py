"""The bookkeeping of ``benchmarks/feature_evidence.py`` (the timings themselves are not
tested): the three routes give the same evidence, gradient and fitted evidences, the
switches are undone, and the table has its rows and ratios."""

from __future__ import annotations

import sys
from pathlib import Path

from botorch.test_functions import Branin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import feature_evidence as bench  # noqa: E402
from lapbo import lengthscales  # noqa: E402


def test_measures_agree_and_report_ratios() -> None:
    row = bench.measure_evaluation(n=6, d=2, calls=2, repeats=1)
    assert row["max_rel_difference"] < 1e-12 and row["max_grad_difference"] < 1e-8
    assert all(row[f"{route}_ms"] > 0 for route in bench.ROUTES)
    switches = lengthscales._closed_form_inputs, lengthscales._minimize
    fit = bench.measure_fit("branin", Branin(negate=True), added=2)
    assert (lengthscales._closed_form_inputs, lengthscales._minimize) == switches
    assert fit["max_evidence_difference"] < 1e-6
    text = bench.table([row, row], [fit])
    assert text.count("| 6 | 2 |") == 2 and "| branin |" in text
    ratio = f"{row['design_ms'] / row['closed_ms']:.2f}×"
    assert ratio in text.splitlines()[2]
