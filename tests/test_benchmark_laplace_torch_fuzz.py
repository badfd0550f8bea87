"""``benchmarks/laplace_torch_fuzz.py``: its draws are reproducible, its probe runs here,
and ``compare`` lists exactly the calls whose results differ (laplace-torch itself is not
needed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import laplace_torch_fuzz as fuzz  # noqa: E402
from benchmarks import laplace_torch_fuzz_probe as probe  # noqa: E402


def test_configurations_are_reproducible_and_varied():
    a, b = fuzz.configurations(3, 60), fuzz.configurations(3, 60)
    assert a == b and a != fuzz.configurations(4, 60) and len(a) == 60
    assert {c["hs"] for c in a} == {"full", "kron", "diag", "lowrank", "gp"}
    assert all(c["sw"] == "all" for c in a if c["hs"] == "lowrank")
    assert {c["lik"] for c in a} == {"regression", "classification"}


def test_the_probe_runs_here_and_agrees_with_itself():
    configs = [c for c in fuzz.configurations(5, 40) if c["hs"] in ("full", "kron")][:4]
    ours = [probe.run(c) for c in configs]
    for result in ours:
        assert result["construct"][0] == "V"
        assert result["log_marginal_likelihood"][0] in ("T", "E")
    assert fuzz.compare(configs, ours, [probe.run(c) for c in configs]) == []


def test_compare_names_each_kind_of_difference():
    configs = [{"dtype": "f64"}, {"dtype": "f32"}]
    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    ours = [{"a": ("T", t), "b": ("E", "ValueError", "x"), "c": ("T", t), "d": ("V", 3)},
            {"a": ("T", t * (1 + 1e-3)), "e": ("L", [("T", t)])}]
    theirs = [{"a": ("T", t * (1 + 1e-3)), "b": ("T", t), "c": ("T", t[:1]),
               "d": ("E", "TypeError", "y")},
              {"a": ("T", t), "e": ("L", [("T", t + 1)]), "f": ("V", None)}]
    rows = fuzz.compare(configs, ours, theirs)
    assert [(r["config"], r["call"], r["kind"]) for r in rows] == [
        (0, "a", "different values"), (0, "b", "ours raises"), (0, "c", "different shapes"),
        (0, "d", "laplace-torch raises"),
        (1, "e", "different values"), (1, "f", "only laplace-torch runs it")]
    text = fuzz.markdown(rows, configs, seed=0, commit="abc")
    assert "2 of 2 configurations differ" in text and "| a | different values | 1 |" in text
