"""Built-in test problems (maximisation form) for the main job and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from botorch.test_functions import Ackley, Branin, Hartmann
from botorch.test_functions.synthetic import SyntheticTestFunction
from torch import Tensor


@dataclass
class Problem:
    """A black-box function to maximise on a box.

    Attributes:
        name: short name used on the command line.
        function: the BoTorch test function (already negated for maximisation).
        optimum: the maximal value (for regret).
    """

    name: str
    function: SyntheticTestFunction
    optimum: float

    @property
    def dim(self) -> int:
        return self.function.dim

    @property
    def bounds(self) -> Tensor:
        """``(2, d)`` lower and upper bounds."""
        return self.function.bounds.to(torch.float64)

    def __call__(self, X: Tensor) -> Tensor:
        """Noise-free values ``(n, 1)`` at ``X`` ``(n, d)``."""
        if not isinstance(X, Tensor) or X.ndim != 2:
            shape = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
            raise ValueError(f"{self.name} takes points as an (n, {self.dim}) tensor, "
                             f"not {shape}.")
        return self.function(X).unsqueeze(-1)


def get_problem(name: str) -> Problem:
    """``"branin"`` (2-D), ``"hartmann"`` (6-D) or ``"ackley"`` (10-D)."""
    makers = {
        "branin": lambda: Branin(negate=True),
        "hartmann": lambda: Hartmann(dim=6, negate=True),
        "ackley": lambda: Ackley(dim=10, negate=True),
    }
    if name not in makers:
        raise ValueError(f"Unknown problem {name!r}; choose one of {sorted(makers)}.")
    function = makers[name]().to(torch.float64)
    return Problem(name, function, -float(function._optimal_value))


PROBLEMS = ("branin", "hartmann", "ackley")
