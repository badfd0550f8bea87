"""Figures of the benchmark results, written next to the tables in ``benchmarks/results``.

One command::

    .venv/bin/python benchmarks/plots.py [--results benchmarks/results]

* ``bo*.json`` → ``bo*_convergence.png``: log10 regret per BO iteration (iteration 0 is
  the initial design), median over the seeds as a line and the interquartile range
  (25 %–75 %) as a band, one panel per problem, one colour per method. The traces are the
  per-run ``log10_regret`` lists of ``runs`` (length ``iterations + 1``).
* ``laplace_speed.json`` → ``laplace_speed.png``: median seconds of each operation under
  ``laplace`` and laplace-torch 0.3 (log scale, paired bars), one panel per problem, with
  the ratio laplace-torch / ``laplace`` written above each pair.

Only matplotlib (Agg) and numpy; nothing is rerun, the figures only read the JSON files.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DPI = 72
METHOD_LABELS = {
    "gp": "SingleTaskGP",
    "laplace": "LaplaceBNN (defaults)",
    "laplace_all": "LaplaceBNN all weights",
    "sobol": "Sobol",
}
SPEED_OPERATIONS = {
    "fit": "fit",
    "log_marglik": "log_marglik",
    "marglik_50": "marglik ×50",
    "predict": "predict (cold)",
    "predict_cached": "predict (cached)",
}


def regret_quantiles(runs: list[dict], problem: str, method: str) -> np.ndarray:
    """Median and quartiles of the log10 regret traces of one problem and method.

    Returns an array of shape ``(3, iterations + 1)``: rows 25 %, 50 %, 75 % over seeds.
    """
    traces = [r["log10_regret"] for r in runs if r["problem"] == problem
              and r["method"] == method]
    if not traces:
        raise ValueError(f"runs: no trace for problem {problem!r} and method {method!r}")
    return np.quantile(np.asarray(traces, dtype=float), [0.25, 0.5, 0.75], axis=0)


def plot_bo(path: Path, out: Path) -> Path:
    """Convergence figure of one ``bo*.json`` file; returns the PNG path."""
    data = json.loads(path.read_text())
    runs = data["runs"]
    problems = list(dict.fromkeys(r["problem"] for r in runs))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    cols = min(len(problems), 5)
    rows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.5 * rows + 0.5),
                             squeeze=False)
    for ax, problem in zip(axes.flat, problems):
        for i, method in enumerate(methods):
            if not any(r["problem"] == problem and r["method"] == method for r in runs):
                continue
            q = regret_quantiles(runs, problem, method)
            steps = np.arange(q.shape[1])
            colour = f"C{i}"
            ax.plot(steps, q[1], color=colour, label=METHOD_LABELS.get(method, method))
            ax.fill_between(steps, q[0], q[2], color=colour, alpha=0.2, linewidth=0)
        ax.set_title(problem, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("log10 regret", fontsize=8)
    for ax in list(axes.flat)[len(problems):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seeds = len(data["meta"]["seeds"])
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=8,
               frameon=False)
    fig.suptitle(f"{path.stem}: median and interquartile range over {seeds} seeds",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    target = out / f"{path.stem}_convergence.png"
    fig.savefig(target, dpi=DPI)
    plt.close(fig)
    return target


def speed_rows(problem: dict) -> list[tuple[str, float, float]]:
    """``(label, laplace seconds, laplace-torch seconds)`` per case and operation."""
    rows = []
    for case, result in problem["cases"].items():
        for key, label in SPEED_OPERATIONS.items():
            ours = result["laplace"].get(key)
            theirs = result.get("laplace-torch", {}).get(key)
            if ours is None or theirs is None:
                continue
            rows.append((f"{case}: {label}", ours["median_s"], theirs["median_s"]))
    return rows


def plot_speed(path: Path, out: Path) -> Path:
    """Paired bars of ``laplace_speed.json``; returns the PNG path."""
    data = json.loads(path.read_text())
    problems = [p for p in ("regression", "classification") if p in data]
    fig, axes = plt.subplots(len(problems), 1, figsize=(10, 3.4 * len(problems)),
                             squeeze=False)
    for ax, name in zip(axes[:, 0], problems):
        rows = speed_rows(data[name])
        x = np.arange(len(rows))
        ours = np.array([r[1] for r in rows])
        theirs = np.array([r[2] for r in rows])
        ax.bar(x - 0.2, ours, 0.4, label="laplace (this project)", color="C0")
        ax.bar(x + 0.2, theirs, 0.4, label="laplace-torch 0.3", color="C1")
        for xi, a, b in zip(x, ours, theirs):
            ax.text(xi, max(a, b) * 1.15, f"{b / a:.1f}×", ha="center", fontsize=6)
        ax.set_yscale("log")
        ax.set_ylim(top=max(ours.max(), theirs.max()) * 5)  # room for the ratios
        ax.set_xticks(x, [r[0] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("seconds (median)", fontsize=8)
        ax.set_title(f"{name}: {data[name]['description']} (ratio: laplace-torch / laplace)",
                     fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    target = out / "laplace_speed.png"
    fig.savefig(target, dpi=DPI)
    plt.close(fig)
    return target


def main(argv: list[str] | None = None) -> list[Path]:
    """Write every figure; returns the PNG paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS),
                        help="folder of the JSON results; the PNGs are written there")
    args = parser.parse_args(argv)
    folder = Path(args.results)
    written = [plot_bo(p, folder) for p in sorted(folder.glob("bo*.json"))]
    speed = folder / "laplace_speed.json"
    if speed.exists():
        written.append(plot_speed(speed, folder))
    for p in written:
        print(f"wrote {p} ({p.stat().st_size // 1024} KB)")
    return written


if __name__ == "__main__":
    main()
