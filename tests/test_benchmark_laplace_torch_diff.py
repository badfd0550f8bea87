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
    # BackPACK has no Kronecker-factored empirical Fisher (laplace-torch raises the same)
    assert errors == {"BackPackEF.kron factors": "error: NotImplementedError",
                      "BackPackEF.kron loss": "error: NotImplementedError"}
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
