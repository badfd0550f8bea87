"""The benchmark problems of issue 13: ten ``botorch.test_functions`` spanning d = 2…20.

Two observe noise (``levy5_noisy``, ``cosine8_noisy``). All are maximised (the
minimisation problems negated; Cosine-8 is a maximisation problem already), so the simple
regret is ``f* − f(x)`` with ``f* = problem.optimal_value``.
"""

from __future__ import annotations

from collections.abc import Callable

from botorch.test_functions import (
    Ackley,
    Branin,
    Cosine8,
    Hartmann,
    Levy,
    Powell,
    Rosenbrock,
    SixHumpCamel,
)
from botorch.test_functions.synthetic import SyntheticTestFunction

PROBLEMS: dict[str, Callable[[], SyntheticTestFunction]] = {
    "branin": lambda: Branin(negate=True),
    "six_hump_camel": lambda: SixHumpCamel(negate=True),
    "hartmann3": lambda: Hartmann(dim=3, negate=True),
    "rosenbrock4": lambda: Rosenbrock(dim=4, negate=True),
    "levy5_noisy": lambda: Levy(dim=5, noise_std=0.5, negate=True),
    "hartmann6": lambda: Hartmann(dim=6, negate=True),
    "cosine8_noisy": lambda: Cosine8(noise_std=0.1),  # already a maximisation problem
    "ackley10": lambda: Ackley(dim=10, negate=True),
    "powell12": lambda: Powell(dim=12, negate=True),
    "ackley20": lambda: Ackley(dim=20, negate=True),
}


def make_problem(name: str) -> SyntheticTestFunction:
    """A fresh instance of problem ``name`` (one of ``PROBLEMS``)."""
    if name not in PROBLEMS:
        raise ValueError(f"Unknown problem {name!r}; choose from {sorted(PROBLEMS)}.")
    return PROBLEMS[name]()
