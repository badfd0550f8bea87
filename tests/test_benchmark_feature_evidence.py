"""The bookkeeping of ``benchmarks/feature_evidence.py`` (the timings themselves are not
tested): both routes give the same evidence and the same fitted evidences, the ratios are
the quotients of the times, the autograd switch is undone, and the table has its rows."""

from __future__ import annotations

import sys
from pathlib import Path

from botorch.test_functions import Branin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import feature_evidence as bench  # noqa: E402
from lapbo import lengthscales  # noqa: E402


def test_measures_agree_and_report_ratios() -> None:
    row = bench.measure_evaluation(n=6, d=2, calls=2, repeats=1)
    assert row["max_rel_difference"] < 1e-12
    assert abs(row["speedup"] - row["autograd_ms"] / row["closed_form_ms"]) < 1e-12
    switch = lengthscales._closed_form_inputs
    fit = bench.measure_fit("branin", Branin(negate=True), added=2)
    assert lengthscales._closed_form_inputs is switch
    assert fit["max_evidence_difference"] < 1e-6
    assert abs(fit["speedup"] - fit["autograd_s"] / fit["closed_form_s"]) < 1e-12
    text = bench.table([row, row], [fit])
    assert text.count("| 6 | 2 |") == 2 and "| branin |" in text
