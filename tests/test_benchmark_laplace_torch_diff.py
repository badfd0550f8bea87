"""``benchmarks/laplace_torch_diff.py``: its probe (``laplace_torch_probe.py``) reads every
variant, and ``compare`` lists exactly the entries that differ (laplace-torch itself is not
needed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import laplace_torch_diff as diff  # noqa: E402
from benchmarks import laplace_torch_probe  # noqa: E402


@pytest.fixture(scope="module")
def ours() -> dict:
    return laplace_torch_probe.probe()


def test_the_probe_reads_every_variant_without_errors_here(ours) -> None:
    variants = {key.split(" ")[0] for key in ours
                if key.startswith(("regression/", "classification/"))}
    assert len(variants) == 2 * 2 * 3  # likelihoods × subsets × structures
    for other in ("lowrank", "gp", "gp(last layer)", "subnetwork"):
        assert f"{other} log_marginal_likelihood()" in ours
    assert "marglik_training(4 epochs)" in ours
    errors = {k: v for k, v in ours.items() if isinstance(v, str) and v.startswith("error")}
    # BackPACK has no Kronecker-factored empirical Fisher (laplace-torch raises the same);
    # the loss Hessian over all weights of the probe's regression network is indefinite,
    # so its evidence is refused by name (laplace-torch's is meaningless)
    indefinite = {f"backend={b} regression/all/{s} log_marginal_likelihood()":
                  "error: NotPositiveDefiniteError"
                  for b, s in (("CurvlinopsHessian", "full"), ("AsdlHessian", "full"),
                               ("AsdlHessian", "diag"))}
    hessian_classification = {
        f"backend={b} classification/all/full log_marginal_likelihood()":
        "error: NotPositiveDefiniteError" for b in ("CurvlinopsHessian", "AsdlHessian")}
    # structures that neither package's backend implements (laplace-torch raises the same)
    missing = {f"backend={b} {lik}/all/{s} log_marginal_likelihood()":
               "error: NotImplementedError"
               for lik in ("regression", "classification")
               for b, s in (("BackPackEF", "kron"), ("CurvlinopsHessian", "kron"),
                            ("CurvlinopsHessian", "diag"), ("AsdlHessian", "kron"))}
    assert errors == {"BackPackEF.kron factors": "error: NotImplementedError",
                      "BackPackEF.kron loss": "error: NotImplementedError",
                      **indefinite, **hessian_classification, **missing}
    backends = {k: v for k, v in ours.items() if k.startswith("backend=")}
    assert len(backends) == 2 * 8 * 4  # likelihoods × backends × (subset, structure)
    ggn = backends["backend=BackPackGGN regression/last_layer/full log_marginal_likelihood()"]
    for name in ("CurvlinopsGGN", "AsdlGGN", "CurvlinopsHessian", "AsdlHessian"):
        # the last layer enters linearly: its loss Hessian is the GGN in every backend
        other = backends[f"backend={name} regression/last_layer/full log_marginal_likelihood()"]
        assert other["values"] == pytest.approx(ggn["values"], rel=1e-10)
    lml = ours["regression/all/full log_marginal_likelihood()"]
    assert lml["shape"] == [] and lml["dtype"] == "torch.float64"


def test_compare_lists_only_what_differs(ours) -> None:
    assert diff.compare(ours, ours) == []
    theirs = dict(ours)
    key = "regression/all/full log_marginal_likelihood()"
    value = dict(theirs[key])
    value["values"] = [v * (1 + 1e-5) for v in value["values"]]  # within rtol
    theirs[key] = value
    theirs["classification/all/kron n_params"] = "error: ValueError"
    found = diff.compare(ours, theirs, rtol=1e-3)
    assert [d["key"] for d in found] == ["classification/all/kron n_params"]
    text = diff.markdown(found, len(theirs), {"laplace-torch": "0.3"}, 1e-3)
    assert "1 differ" in text and "error: ValueError" in text


def test_states_round_trip_here_and_the_table_says_so(tmp_path) -> None:
    """``laplace_torch_states``: this package's saved states of every weight-space variant
    load here with the saver's evidence and predictive, and the table marks a read that
    is off (or an error) as such."""
    from benchmarks import laplace_torch_states as states

    states.save(tmp_path)
    loaded = states.load(tmp_path)
    plain = ["/".join(v) for v in states.VARIANTS]
    dense = [f"{k} (dense=True)" for k in plain if k.endswith("/full")]
    assert sorted(loaded) == sorted(plain + dense)
    for read in loaded.values():
        assert read["lml"] == pytest.approx(read["lml_saved"], rel=1e-12)
        assert read["predictive_max_abs_diff"] <= 1e-12
    kron = loaded["regression/all/kron"]
    off = dict(loaded, **{"regression/all/full": "error: RuntimeError",
                          "regression/all/kron": dict(kron, lml=kron["lml"] + 1)})
    text = diff.states_markdown({"a states in b": off, "b states in a": loaded}, 1e-3)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()
            if line.startswith("| regression/") or line.startswith("| classification/")}
    assert len(rows) == 16  # 12 variants and the full ones' dense=True states
    assert "error: RuntimeError" in rows["regression/all/full"]
    assert "| differs" in rows["regression/all/kron"]
    assert rows["regression/all/diag"].count("same") == 2
