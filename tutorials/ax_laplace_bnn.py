"""Bayesian optimisation in Ax with a Laplace BNN surrogate.

This script minimises the 6-D Hartmann function with Ax's ``Client`` API, using a
neural network with a linearized Laplace posterior (``lapbo.LaplaceBNN``) in place of
Ax's default Gaussian process. The steps:

1. **Experiment.** Describe the search space (six range parameters on ``[0, 1]``) and
   the goal (``objective="-hartmann6"``: minimise the metric ``hartmann6``).
2. **Generation strategy.** ``lapbo.ax.laplace_generation_strategy`` returns an Ax
   ``GenerationStrategy``: ``n_sobol`` quasi-random Sobol trials, then Bayesian
   optimisation with ``Generators.BOTORCH_MODULAR`` and a ``LaplaceBNN`` surrogate.
   Its keyword arguments are ``LaplaceBNN`` options (network ``width``/``depth``,
   training ``n_epochs``, ...). At every BO trial Ax refits the network, its Laplace
   posterior and the marginal-likelihood hyperparameters (prior precision, noise),
   then maximises Ax's default acquisition function (qLogNoisyExpectedImprovement).
   Importing ``lapbo.ax`` registers the model with Ax (fitting, JSON storage).
3. **Loop.** Ask the client for a trial, evaluate the function, report the result.
4. **Result.** ``client.get_best_parameterization()`` returns the best trial; with
   ``--save`` the experiment is written to JSON, to be resumed later with
   ``Client.load_from_json_file`` (after ``import lapbo.ax``).

Run ``python tutorials/ax_laplace_bnn.py --trials 20 --sobol 8``; ``--help`` lists the
options. The defaults take a minute or two on a laptop CPU.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from ax.api.client import Client
from ax.api.configs import RangeParameterConfig
from botorch.test_functions import Hartmann

from lapbo.ax import laplace_generation_strategy

PROBLEM = Hartmann(dim=6)
METRIC = "hartmann6"
NAMES = [f"x{i}" for i in range(PROBLEM.dim)]


def evaluate(parameters: dict[str, Any]) -> float:
    """The black box: Hartmann-6 at one parameterization."""
    x = torch.tensor([[parameters[name] for name in NAMES]], dtype=torch.float64)
    return float(PROBLEM(x))


def run(trials: int = 20, sobol: int = 8, width: int = 50, n_epochs: int = 300,
        seed: int = 0, save: str | None = None) -> dict[str, Any]:
    """Run the optimisation; returns the best parameters and value and the trial count."""
    # 1. Experiment: search space and goal.
    client = Client(random_seed=seed)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name=name, bounds=(0.0, 1.0), parameter_type="float")
        for name in NAMES
    ])
    client.configure_optimization(objective=f"-{METRIC}")

    # 2. Sobol, then BO with a LaplaceBNN surrogate (options go to LaplaceBNN).
    client.set_generation_strategy(laplace_generation_strategy(
        n_sobol=sobol, sobol_seed=seed, width=width, n_epochs=n_epochs, seed=seed,
    ))

    # 3. Ask, evaluate, tell.
    for _ in range(trials):
        for index, parameters in client.get_next_trials(max_trials=1).items():
            client.complete_trial(index, raw_data={METRIC: evaluate(parameters)})

    # 4. Best trial (by the observed values), optionally save the experiment.
    parameters, _, index, _ = client.get_best_parameterization(use_model_predictions=False)
    best = evaluate(parameters)
    if save:
        client.save_to_json_file(save)
    return {"parameters": parameters, "value": best, "trial": index,
            "n_trials": len(client._experiment.trials)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="total number of trials")
    parser.add_argument("--sobol", type=int, default=8, help="Sobol trials before BO")
    parser.add_argument("--width", type=int, default=50, help="hidden units per layer")
    parser.add_argument("--epochs", type=int, default=300, help="MAP training iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="write the experiment to this JSON file")
    args = parser.parse_args(argv)
    result = run(trials=args.trials, sobol=args.sobol, width=args.width,
                 n_epochs=args.epochs, seed=args.seed, save=args.save)
    best = {k: round(v, 4) for k, v in result["parameters"].items()}
    print(f"trials: {result['n_trials']}")
    print(f"best {METRIC}: {result['value']:.6f} (trial {result['trial']}; "
          f"global minimum {PROBLEM.optimal_value:.4f})")
    print(f"best parameters: {best}")
    return result


if __name__ == "__main__":
    main()
