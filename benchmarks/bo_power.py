"""How likely a BO table's per-problem comparison is to come out the same on fresh seeds.

Issue 13's BO clause compares, per problem, the median over ten seeds of a method's final
log10 regret with ``SingleTaskGP``'s. From the paired runs of ``benchmarks/bo.py`` (one
JSON or several), this script estimates for each problem the chance that the method's
median is at most the GP's on ten fresh seeds, by the paired bootstrap over the seeds
(resample the seeds with replacement, compare the two medians), and from those chances
(independent across problems) the distribution of the count of problems where it is:
its mean and the chance of at least ``--target`` problems. Beside it, the same count for a
method exchangeable with the GP (each problem a fair coin): Binomial(problems, ½).

    .venv/bin/python benchmarks/bo_power.py benchmarks/results/bo_dev_session26_null.json \\
        --methods laplace gp2 --out benchmarks/results --name bo_dev_session26_null_power
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any


def chance_at_most(method: list[float], gp: list[float], resamples: int,
                   rng: random.Random) -> float:
    """Fraction of paired bootstrap resamples of the seeds in which the median of
    ``method`` (final log10 regret per seed) is at most the median of ``gp`` (same seeds,
    same order)."""
    n = len(gp)
    hits = 0
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        hits += statistics.median(method[i] for i in idx) <= statistics.median(gp[i] for i in idx)
    return hits / resamples


def count_distribution(chances: list[float]) -> list[float]:
    """``P(count = k)``, ``k = 0 … len(chances)``, for independent events of these chances
    (the Poisson-binomial distribution)."""
    dist = [1.0]
    for q in chances:
        dist = [(dist[k] if k < len(dist) else 0.0) * (1 - q)
                + (dist[k - 1] * q if k > 0 else 0.0) for k in range(len(dist) + 1)]
    return dist


def analyse(runs: list[dict[str, Any]], method: str, target: int, resamples: int,
            seed: int) -> dict[str, Any]:
    """Per-problem chances and the count's distribution for ``method`` against ``gp``."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, not {resamples!r}.")
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"target must be a non-negative integer, not {target!r}.")
    final = {(r["problem"], r["method"], r["seed"]): r["final_log10_regret"] for r in runs}
    problems = list(dict.fromkeys(r["problem"] for r in runs if r["method"] == method))
    if not problems:
        raise ValueError(f"no runs of method {method!r}")
    rng = random.Random(seed)
    chances = {}
    for problem in problems:
        seeds = sorted(s for (p, m, s) in final if p == problem and m == method
                       and (p, "gp", s) in final)
        if not seeds:
            raise ValueError(f"no paired GP runs for {method!r} on {problem!r}")
        chances[problem] = chance_at_most([final[(problem, method, s)] for s in seeds],
                                          [final[(problem, "gp", s)] for s in seeds],
                                          resamples, rng)
    dist = count_distribution(list(chances.values()))
    n = len(problems)
    null = [math.comb(n, k) / 2**n for k in range(n + 1)]
    return {"method": method, "per_problem": chances, "expected_count": sum(chances.values()),
            f"p_at_least_{target}": sum(dist[target:]), "count_distribution": dist,
            f"null_p_at_least_{target}": sum(null[target:]), "problems": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="JSON", help="benchmarks/bo.py results")
    parser.add_argument("--methods", nargs="+", default=["laplace"])
    parser.add_argument("--target", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="bo_power")
    args = parser.parse_args()
    runs = [r for path in args.runs for r in json.loads(Path(path).read_text())["runs"]]
    results = [analyse(runs, m, args.target, args.resamples, args.seed) for m in args.methods]
    for res in results:
        chances = ", ".join(f"{p} {q:.2f}" for p, q in res["per_problem"].items())
        print(f"{res['method']}: {chances}")
        print(f"  expected count {res['expected_count']:.2f} of {res['problems']}; "
              f"P(>= {args.target}) = {res[f'p_at_least_{args.target}']:.3f} "
              f"(a method exchangeable with the GP: {res[f'null_p_at_least_{args.target}']:.3f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(
        {"command": "python benchmarks/bo_power.py " + " ".join(args.runs), "runs": args.runs,
         "resamples": args.resamples, "seed": args.seed, "results": results}, indent=1))
    print(f"wrote {out / (args.name + '.json')}")


if __name__ == "__main__":
    main()
