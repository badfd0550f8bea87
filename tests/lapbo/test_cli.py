"""The main job's entry point on a tiny budget: plot and summary are written and sane."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest

from lapbo.__main__ import BOTORCH_RETRY_NOTICE, main, parse_args
from lapbo.problems import get_problem


def test_main_job_writes_plot_and_summary(tmp_path, capsys):
    assert main(["--iterations", "2", "--surrogates", "laplace,gp,sobol",
                 "--output", str(tmp_path)]) == 0
    png = tmp_path / "convergence.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["results"]) == {"laplace", "gp", "sobol"}
    for result in summary["results"].values():
        regret = result["regret"]
        assert len(regret) == 3 and all(r >= 0 for r in regret)
        assert all(a >= b for a, b in zip(regret, regret[1:]))  # best-so-far regret
        assert math.isfinite(result["final_log10_regret"])
        assert len(result["best_x"]) == 2
    assert "Wrote" in capsys.readouterr().out


def test_problem_optima_are_consistent():
    for name, dim in (("branin", 2), ("hartmann", 6), ("ackley", 10)):
        problem = get_problem(name)
        assert problem.dim == dim
        X = problem.function.optimizers.to(problem.bounds)
        assert abs(problem(X).max().item() - problem.optimum) < 1e-4


def test_cli_rejects_unknown_surrogate():
    with pytest.raises(SystemExit):
        parse_args(["--surrogates", "laplace,forest"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--surrogates", ","], "--surrogates is empty"),
     (["--surrogates", "gp,laplace,gp"], r"--surrogates repeats \['gp'\]"),
     (["--iterations", "0"], "--iterations must be at least 1")],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


def test_botorch_retry_notice_filter_keeps_a_failed_retry_visible():
    """``main`` ignores BoTorch's first retry notice only (its wording in botorch 0.18)."""
    first = ("Optimization failed in `gen_candidates_scipy` with the following warning(s):\n"
             "[OptimizationWarning('Optimization failed within `scipy.optimize.minimize` with "
             "status 2 and message ABNORMAL: .')]\nTrying again with a new set of initial "
             "conditions.")
    second = ("Optimization failed on the second try, after generating a new set of initial "
              "conditions.")
    assert re.match(BOTORCH_RETRY_NOTICE, first) and not re.match(BOTORCH_RETRY_NOTICE, second)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=BOTORCH_RETRY_NOTICE, category=RuntimeWarning)
        warnings.warn(first, RuntimeWarning, stacklevel=1)
        warnings.warn(second, RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [second]


def test_sobol_baseline_continues_the_sobol_sequence():
    """The baseline labelled Sobol drew uniform random points after the design."""
    import torch
    from botorch.utils.sampling import draw_sobol_samples

    from lapbo.loop import run_bo

    problem = get_problem("branin")
    run = run_bo(problem, "sobol", 4, seed=3)
    expected = draw_sobol_samples(problem.bounds, n=6 + 4, q=1, seed=3).squeeze(1)
    assert torch.equal(run.X, expected)


def test_an_interrupted_run_keeps_the_finished_surrogates(tmp_path, monkeypatch, capsys):
    import lapbo.__main__ as cli

    finished = cli.run_with_progress

    def interrupt_the_second(problem, surrogate, args):
        if surrogate == "gp":
            raise KeyboardInterrupt
        return finished(problem, surrogate, args)

    monkeypatch.setattr(cli, "run_with_progress", interrupt_the_second)
    code = main(["--iterations", "1", "--surrogates", "sobol,gp", "--output", str(tmp_path)])
    assert code == 130
    assert "Interrupted: 1 of 2 runs finished" in capsys.readouterr().err
    assert set(json.loads((tmp_path / "summary.json").read_text())["results"]) == {"sobol"}
    assert (tmp_path / "convergence.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convergence.png", "summary.json"]
