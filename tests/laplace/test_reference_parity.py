"""Parity with laplace-torch 0.3 on the four reference problems.

Each record is rebuilt exactly as the fixture README's protocol describes, with the
library-default backend, and compared field by field at relative 1e-6 (1e-3 for the
marglik-optimised prior precision).
"""

from __future__ import annotations

import pytest
import torch

from laplace import Laplace
from laplace.curvature import TorchFuncEF
from tests.laplace import reference as R
from tests.laplace.reference import close

RTOL = 1e-6
STRUCTURES = ("full", "kron", "diag")
SUBSETS = ("all", "last_layer", "subnetwork")
# Our backend per reference backend: the default GGN and the empirical Fisher. The EF
# reference is BackPackEF (no KFAC there, so CurvlinopsEF for kron): all EF backends
# agree except CurvlinopsEF on last-layer diag, a documented reference defect.
BACKENDS = {"default": None, "BackPackEF": TorchFuncEF, "CurvlinopsEF": TorchFuncEF}


def _ef_key(structure: str) -> str:
    return "CurvlinopsEF" if structure == "kron" else "BackPackEF"


CASES = [
    (p, sub, s, b)
    for p in R.PROBLEMS for sub in SUBSETS for s in STRUCTURES
    for b in ("default", _ef_key(s))
    if not (sub == "subnetwork" and s == "kron")
]


def fitted(name: str, structure: str, backend: str = "default", subset: str = "all"):
    model = R.build_model(name)
    train, _ = R.loaders(name)
    kwargs = {"sigma_noise": 0.5} if R.likelihood(name) == "regression" else {}
    if BACKENDS[backend] is not None:
        kwargs["backend"] = BACKENDS[backend]
    if subset == "subnetwork":
        kwargs["subnetwork_indices"] = R.data(name)["subnetwork_indices"]
    la = Laplace(model, R.likelihood(name), subset_of_weights=subset,
                 hessian_structure=structure, prior_precision=1.0, **kwargs)
    la.fit(train)
    return la


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request):
    name, subset, structure, backend = request.param
    record = R.combo(name, f"{subset}.{structure}.{backend}")
    assert record["status"] == "ok"
    return name, structure, record, fitted(name, structure, backend, subset)


def test_scalars(case):
    name, _, rec, la = case
    assert la.n_params == rec["n_params"] and la.n_data == rec["n_data"]
    if "n_params_subnet" in rec:
        assert la.n_params_subnet == rec["n_params_subnet"]
    assert la.n_outputs == rec["n_outputs"]
    close(la.loss, rec["loss"], 1e-12)
    close(la.log_likelihood, rec["log_likelihood"], 1e-12)


def test_posterior_precision(case):
    name, structure, rec, la = case
    post = rec["posterior"]
    ref = post["posterior_precision"]
    if structure == "diag":
        close(la.posterior_precision, R.decode(name, ref))
        close(la.log_det_posterior_precision, post["logdet"])
        return
    P = la.posterior_precision
    v = R.probe_vector(P.shape[0] if structure == "full" else la.n_params)
    close(P.diag(), R.decode(name, ref["diag"]))
    product = P.bmm(v, exponent=1) if structure == "kron" else P @ v
    close(product, R.decode(name, ref["probe_product"]))
    close(la.log_det_posterior_precision, ref["logdet"])
    if structure == "full":
        close(torch.linalg.matrix_norm(P), ref["frobenius_norm"])


@pytest.mark.parametrize("name", R.PROBLEMS)
def test_kron_factor_products(name):
    """Only ``kron(B, A)`` is convention-free; compare those products block by block."""
    R.check_kron_factors(name, R.combo(name, "all.kron.default"), fitted(name, "kron"))


def test_predictive(case):
    name, _, rec, la = case
    R.check_glm_predictive(name, rec["predictive"], la)

def test_log_marginal_likelihood(case):
    name, _, rec, la = case
    lml = rec["log_marginal_likelihood"]
    close(la.log_marginal_likelihood(), lml["at_fit_hyperparameters"]["value"])
    for setting in lml["settings"]:
        args = [setting["prior_precision"]]
        if R.likelihood(name) == "regression":
            args.append(setting["sigma_noise"])
        close(la.log_marginal_likelihood(*args), setting["value"])
        for part in ("log_likelihood", "log_det_ratio", "scatter"):
            close(getattr(la, part), setting[part])


def test_marglik_scalar_prior_precision(case):
    check_marglik(case, "marglik_scalar")


def test_marglik_layerwise_prior_precision(case):
    """The reference rejects layerwise priors for last-layer and subnetwork LAs (a
    documented defect: 'Mismatch of prior and model'); there we check that our
    layerwise optimum is at least as good as the scalar one."""
    name, structure, rec, la = case
    if "opt_marglik_layerwise" not in rec.get("errors", {}):
        check_marglik(case, "marglik_layerwise")
        return
    la.prior_precision = 1.0
    la.optimize_prior_precision(method="marglik", n_steps=300, lr=0.1,
                                prior_structure="layerwise")
    assert la.prior_precision.shape == (la.n_layers,)
    best = la.log_marginal_likelihood().item()
    # A layerwise optimum is at least as good as the scalar reference optimum.
    scalar = rec["optimize_prior_precision"]["marglik_scalar"]["log_marginal_likelihood_after"]
    assert best >= scalar - 1e-6 * abs(scalar)


def check_marglik(case, structure_name: str) -> None:
    name, structure, rec, la = case
    ref = rec["optimize_prior_precision"][structure_name]
    la.prior_precision = 1.0
    if R.likelihood(name) == "regression":
        la.sigma_noise = 0.5
    prior_structure = structure_name.split("_")[1]
    la.optimize_prior_precision(method="marglik", n_steps=300, lr=0.1,
                                prior_structure=prior_structure)
    close(la.prior_precision, R.decode(name, ref["prior_precision"]), 1e-3)
    close(la.sigma_noise, ref["sigma_noise_after"], 1e-12)
    close(la.log_marginal_likelihood(), ref["log_marginal_likelihood_after"], 1e-3)
