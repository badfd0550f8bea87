"""The ten benchmark problems of ``benchmarks/problems.py`` are maximisation problems whose
``optimal_value`` is their maximum (the regret ``f* − f`` is never negative)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.problems import PROBLEMS, make_problem  # noqa: E402


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_optimal_value_is_the_maximum(name: str) -> None:
    problem = make_problem(name)
    lo, hi = problem.bounds.to(torch.float64)
    g = torch.Generator().manual_seed(0)
    X = lo + (hi - lo) * torch.rand(4096, problem.dim, generator=g, dtype=torch.float64)
    values = problem(X, noise=False)
    f_star = float(problem.optimal_value)
    assert float(values.max()) <= f_star + 1e-9
    optimizers = problem.optimizers.to(torch.float64)
    assert float(problem(optimizers, noise=False).max()) == pytest.approx(f_star, abs=1e-4)


def test_unknown_problem_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown problem 'sphere'"):
        make_problem("sphere")
