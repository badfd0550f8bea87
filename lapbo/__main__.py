"""``python -m lapbo``: Bayesian optimization with LaplaceBNN next to a GP baseline.

Runs each surrogate on a built-in problem with a progress bar per round, then writes
a convergence plot (``convergence.png``: log10 simple regret per iteration) and a
JSON summary (``summary.json``) to the output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lapbo.loop import MAX_SEED, SURROGATES, BORun, run_bo
from lapbo.problems import PROBLEMS, get_problem

#: BoTorch's ``optimize_acqf`` (botorch/optim/optimize.py) warns when L-BFGS-B stops
#: abnormally from some restarts and then retries from new initial conditions by itself:
#: nothing a user of this command can act on. A failed retry still warns (its own message).
BOTORCH_RETRY_NOTICE = (r"Optimization failed in `gen_candidates_scipy`[\s\S]*"
                        r"Trying again with a new set of initial conditions")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lapbo",
        description="Bayesian optimization with a Laplace-approximated BNN surrogate "
        "(LaplaceBNN), compared with a SingleTaskGP on a built-in test problem.",
    )
    parser.add_argument("--problem", choices=PROBLEMS, default="branin",
                        help="test function to maximise (default: %(default)s)")
    parser.add_argument("--surrogates", default="laplace,gp",
                        help=f"comma-separated subset of {','.join(SURROGATES)} "
                        "(default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=15,
                        help="BO iterations after the 2d+2 Sobol points (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"random seed in [0, {MAX_SEED}] (default: %(default)s)")
    parser.add_argument("--output", type=_folder, default=Path("outputs"),
                        help="folder for convergence.png and summary.json "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    args.surrogates = [s.strip() for s in args.surrogates.split(",") if s.strip()]
    unknown = set(args.surrogates) - set(SURROGATES)
    if unknown:
        parser.error(f"unknown surrogates {sorted(unknown)}; choose from {SURROGATES}")
    if not args.surrogates:
        parser.error(f"--surrogates is empty; choose from {SURROGATES}")
    repeated = sorted({s for s in args.surrogates if args.surrogates.count(s) > 1})
    if repeated:
        parser.error(f"--surrogates repeats {repeated}")
    if args.iterations < 1:
        parser.error(f"--iterations must be at least 1, not {args.iterations}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must lie in [0, {MAX_SEED}] (larger or negative seeds repeat "
                     f"others in torch's 32-bit generator), not {args.seed}")
    problem = _unwritable(args.output)
    if problem:
        parser.error(f"--output {args.output}: {problem}")
    return args


OUTPUTS = ("summary.json", "convergence.png")


def _folder(text: str) -> Path:
    """``--output``: a non-empty path, ``~`` expanded."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the output folder is empty")
    return Path(text).expanduser()


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot receive the results (created if missing), or ``None``: checked
    before the runs, so that no finished run is lost to a bad path."""
    if folder.exists() and not folder.is_dir():
        return "exists and is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".lapbo_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        return f"not a writable folder ({error.strerror or error})"
    taken = [name for name in OUTPUTS if (folder / name).is_dir()]
    return f"{taken} inside it are folders, not files" if taken else None


def plot(runs: list[BORun], title: str, path: Path) -> None:
    """Log10 simple regret per iteration, one line per surrogate."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"laplace": "LaplaceBNN", "gp": "SingleTaskGP", "sobol": "Sobol"}
    for run in runs:
        regret = [math.log10(max(r, 1e-12)) for r in run.regret]
        ax.plot(range(len(regret)), regret, marker="o", ms=3, label=labels[run.surrogate])
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("iteration (0 = initial Sobol design)")
    ax.set_ylabel("log10 simple regret")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_with_progress(problem: Any, surrogate: str, args: argparse.Namespace) -> BORun:
    """One BO run with a progress bar per round."""
    with tqdm(total=args.iterations, desc=f"{surrogate:>7} on {problem.name}",
              unit="round", file=sys.stderr) as bar:
        def update(run: BORun) -> None:
            if run.fit_seconds:
                bar.update(1)
            bar.set_postfix(regret=f"{run.regret[-1]:.3g}")

        return run_bo(problem, surrogate, args.iterations, args.seed, on_iteration=update)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = get_problem(args.problem)
    args.output.mkdir(parents=True, exist_ok=True)
    runs: list[BORun] = []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=BOTORCH_RETRY_NOTICE,
                                    category=RuntimeWarning)
            for surrogate in args.surrogates:
                runs.append(run_with_progress(problem, surrogate, args))
    except KeyboardInterrupt:
        print(f"\nInterrupted: {len(runs)} of {len(args.surrogates)} runs finished",
              file=sys.stderr)
        if not runs:
            return 130
        write_results(runs, problem, args)
        return 130
    write_results(runs, problem, args)
    for run in runs:
        print(f"{run.surrogate:>8}: final regret {run.regret[-1]:.4g}")
    print(f"Wrote {args.output / 'convergence.png'} and {args.output / 'summary.json'}")
    return 0


def write_results(runs: list[BORun], problem: Any, args: argparse.Namespace) -> None:
    """``summary.json`` and ``convergence.png`` of ``runs``: both written to temporary
    files first and then renamed, so that the folder never holds one from another run."""
    summary = {
        "problem": problem.name,
        "dim": problem.dim,
        "seed": args.seed,
        "iterations": args.iterations,
        "results": {
            run.surrogate: {
                "final_regret": run.regret[-1],
                "final_log10_regret": math.log10(max(run.regret[-1], 1e-12)),
                "regret": run.regret,
                "cpu_seconds_fit_per_iteration": _mean(run.fit_seconds),
                "cpu_seconds_acquisition_per_iteration": _mean(run.acq_seconds),
                "best_x": run.X[run.Y.argmax()].tolist(),
            }
            for run in runs
        },
    }
    staged = {name: args.output / f".{name}.partial.{name.rsplit('.', 1)[1]}"
              for name in OUTPUTS}
    staged["summary.json"].write_text(json.dumps(summary, indent=2))
    plot(runs, f"{problem.name} ({problem.dim}-D), seed {args.seed}", staged["convergence.png"])
    for name, path in staged.items():
        path.replace(args.output / name)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # a reader that closed early (``| head``): exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None
