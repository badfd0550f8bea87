"""The ``lapbo`` guide's snippets run and compute what the guide says they compute."""

from __future__ import annotations

import torch

from tests.docs.snippets import one_thread, run_snippet  # noqa: F401  (autouse fixture)


def in_box(x: torch.Tensor, bounds: torch.Tensor) -> bool:
    return bool(((x >= bounds[0] - 1e-9) & (x <= bounds[1] + 1e-9)).all())


def test_loop_adds_one_point_per_round() -> None:
    ns = run_snippet("lapbo_loop")
    assert ns["X"].shape == (9, 2) and ns["Y"].shape == (9, 1)
    torch.testing.assert_close(ns["Y"], ns["f"](ns["X"]).unsqueeze(-1))
    assert in_box(ns["X"], ns["f"].bounds)
    assert ns["posterior"].variance.item() > 0
    assert ns["model"]._train_X.shape == (8, 2)  # the last model saw the first 8 points


def test_conditioning_fantasies_and_thompson_sampling() -> None:
    ns = run_snippet("lapbo_fantasies")
    noise_var = ns["model"].posterior(ns["x_new"], observation_noise=True).variance.item()
    f_var = ns["var_before"]
    # exact Gaussian update at the observed point: v' = v − v²/(v + σ²)
    expected = f_var - f_var**2 / noise_var
    assert abs(ns["var_after"] - expected) <= 1e-6 * f_var
    assert in_box(ns["kg_candidate"], ns["bounds"]) and torch.isfinite(ns["kg_value"])
    assert in_box(ns["ts_candidate"], ns["bounds"])
    path_value = ns["paths"](ns["ts_candidate"]).reshape(())
    torch.testing.assert_close(ns["ts_value"].reshape(()), path_value)


def test_multi_output_posterior_and_hypervolume() -> None:
    ns = run_snippet("lapbo_multioutput")
    assert ns["mean"].shape == (3, 2) and ns["covariance"].shape == (6, 6)
    cov = ns["covariance"]
    torch.testing.assert_close(cov, cov.T)
    assert torch.linalg.eigvalsh(cov).min() > -1e-9
    assert ns["candidates"].shape == (2, 2) and in_box(ns["candidates"], ns["bounds"])
    first = ns["first"].posterior(ns["X"][:3])
    torch.testing.assert_close(first.mean, ns["mean"][:, :1])
    torch.testing.assert_close(first.variance, ns["posterior"].variance[:, :1])


def test_selection_keeps_the_highest_evidence() -> None:
    ns = run_snippet("lapbo_selection")
    scores = ns["model"].selection
    assert [s.options for s in scores] == [{}, {"trend_scale": 5.0}, {"width": 20}]
    chosen = [s for s in scores if s.chosen]
    assert len(chosen) == 1
    assert chosen[0].log_marginal_likelihood == max(s.log_marginal_likelihood for s in scores)


def test_ax_client_runs_sobol_then_laplace() -> None:
    ns = run_snippet("lapbo_ax")
    trials = ns["client"]._experiment.trials
    assert len(trials) == 7
    values = [ns["branin"](torch.tensor([[t.arm.parameters["x0"], t.arm.parameters["x1"]]],
                                        dtype=torch.float64)).item() for t in trials.values()]
    assert ns["best_index"] == min(range(7), key=values.__getitem__)


def test_robust_bo_optimises_a_risk_measure_of_perturbed_points() -> None:
    ns = run_snippet("lapbo_robust")
    assert ns["posterior"].mean.shape == (3 * ns["n_w"], 1)
    for x in (ns["candidate"], ns["robust_choice"]):
        assert x.shape == (1, 2) and in_box(x, ns["bounds"])
    assert torch.isfinite(ns["value"])
    # the CVaR of the posterior mean at the robust choice is at least the data's best
    mean = ns["model"].posterior(ns["robust_choice"]).mean
    assert float(ns["cvar"](mean)) >= ns["best_f"] - 1e-6


def test_the_warp_snippet_learns_a_warp_and_optimises_through_it() -> None:
    ns = run_snippet("lapbo_warp")
    warp = ns["warp"]
    # the steep input is warped (concentration1 > 1 stretches the top of its range), and
    # its evidence is above that of the same family without the warp
    assert float(warp.concentration1[0].detach()) > 1.5
    plain = type(ns["model"])(ns["X"], ns["Y"], seed=0).fit()
    assert float(ns["model"].log_marginal_likelihood()) > float(
        plain.log_marginal_likelihood()) + 5
    assert ns["candidate"].shape == (2, 2) and in_box(ns["candidate"], ns["bounds"])
    assert torch.isfinite(ns["value"])
