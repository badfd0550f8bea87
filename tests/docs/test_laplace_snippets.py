"""The ``laplace`` guide's snippets run and compute what the guide says they compute."""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, jacrev

from tests.docs.snippets import one_thread, run_snippet  # noqa: F401  (autouse fixture)


def model_jacobian(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``(n, P)`` Jacobian of a one-output ``model`` at ``X`` w.r.t. all its weights."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, p, (X,)).squeeze(-1)

    jac = jacrev(f)(params)
    return torch.cat([jac[k].reshape(X.shape[0], -1) for k in params], dim=1)


def test_quickstart_glm_variance_is_j_sigma_jt() -> None:
    ns = run_snippet("laplace_quickstart")
    la, X_test = ns["la"], ns["X_test"]
    assert ns["f_mean"].shape == (7, 1) and ns["f_var"].shape == (7, 1, 1)
    J = model_jacobian(ns["model"], X_test)
    expected = torch.einsum("np,pq,nq->n", J, la.posterior_covariance, J)
    torch.testing.assert_close(ns["f_var"].reshape(7), expected, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(ns["f_mean"], ns["model"](X_test).detach())
    torch.testing.assert_close(ns["pred_std"].squeeze(-1) ** 2,
                               expected + la.sigma_noise.detach() ** 2)


def test_variants_build_the_documented_classes() -> None:
    ns = run_snippet("laplace_variants")
    assert ns["classes"] == {
        ("all", "full"): "FullLaplace", ("all", "kron"): "KronLaplace",
        ("all", "diag"): "DiagLaplace", ("all", "lowrank"): "LowRankLaplace",
        ("all", "gp"): "FunctionalLaplace", ("last_layer", "full"): "FullLLLaplace",
        ("last_layer", "kron"): "KronLLLaplace", ("last_layer", "diag"): "DiagLLLaplace",
        ("subnetwork", "full"): "FullSubnetLaplace", ("subnetwork", "diag"): "DiagSubnetLaplace",
    }
    assert all(torch.isfinite(torch.tensor(v)) for v in ns["evidence"].values())
    assert ns["subnet"].shape == (20,)
    assert ns["la"].n_params_subnet == 20


def test_classification_predictives_are_distributions() -> None:
    ns = run_snippet("laplace_classification")
    grid = torch.logspace(-4, 4, 10, dtype=torch.float64)
    assert torch.isclose(grid, ns["la"].prior_precision).any()  # a grid value
    for probs in [*ns["probs"].values(), ns["nn_probs"]]:
        assert probs.shape == (30, 3)
        torch.testing.assert_close(probs.sum(-1), torch.ones(30, dtype=torch.float64))
    # probit and bridge approximate the same integral as Monte Carlo
    torch.testing.assert_close(ns["probs"]["probit"], ns["probs"]["mc"], atol=0.05, rtol=0)


def test_marglik_steps_raise_the_evidence() -> None:
    ns = run_snippet("laplace_marglik")
    assert ns["after"] > ns["before"] + 10
    assert 0.05 < ns["log_sigma"].exp().item() < 0.3  # the data noise is 0.1
    assert len(ns["margliks"]) > 0
    assert all(math.isfinite(float(v)) for v in ns["margliks"])


def test_backends_agree_with_the_jacobian_ggn() -> None:
    ns = run_snippet("laplace_backends")
    J = model_jacobian(ns["model"], ns["X"])
    expected = J.T @ J  # regression GGN with sigma_noise = 1
    for name, H in ns["H"].items():
        torch.testing.assert_close(H, expected, rtol=1e-10, atol=1e-10, msg=name)
