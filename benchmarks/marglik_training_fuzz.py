"""Randomized ``marglik_training`` runs through this package's ``laplace`` and laplace-torch
0.3 side by side: where their loss and evidence trajectories, hyperparameters, evidence or
trained weights differ.

    .venv/bin/python benchmarks/marglik_training_fuzz.py --seed 1 --configs 60

The same machinery as ``laplace_torch_fuzz.py`` (its comparison, tolerances and report),
with ``marglik_training_fuzz_probe.py`` run under each interpreter. Writes
``results/marglik_training_fuzz_seed<seed>.{md,json}``; each difference should be one
that ``docs/differences.md`` explains.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks import laplace_torch_fuzz as fuzz  # noqa: E402

PROBE = HERE / "marglik_training_fuzz_probe.py"
BACKENDS = ("BackPackGGN", "BackPackEF", "CurvlinopsGGN", "CurvlinopsEF", "AsdlGGN", "AsdlEF")


def configurations(seed: int, n: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn from ``seed`` (the same list for the same arguments)."""
    r = random.Random(seed)
    return [{"seed": r.randrange(1000), "lik": r.choice(["regression", "classification"]),
             "hs": r.choice(["full", "kron", "diag"]), "backend": r.choice(BACKENDS),
             "prior_structure": r.choice(["scalar", "layerwise", "diag"]),
             "n_epochs": r.choice([3, 6]), "n_hypersteps": r.choice([1, 5]),
             "frequency": r.choice([1, 2]), "burnin": r.choice([0, 2]),
             "temperature": r.choice([1.0, 0.5]), "fix_sigma_noise": r.choice([False, True]),
             "dtype": r.choice(["f64", "f32"])} for _ in range(n)]


def main() -> None:
    args = fuzz.arguments(__doc__, configs=60, rtol=1e-6)
    configs = configurations(args.seed, args.configs)
    fuzz.write_report(fuzz.side_by_side(configs, args, PROBE), configs, args.seed,
                      "marglik_training_fuzz", "`marglik_training`")


if __name__ == "__main__":
    main()
