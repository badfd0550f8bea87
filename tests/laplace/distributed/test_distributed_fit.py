"""Laplace fits over data sharded across 2 Gloo processes equal one process on all data.

One process group (spawned once per module) computes every check of ``scenarios``;
the test process computes the same on the whole data set and compares in float64.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from laplace import Laplace
from laplace.utils import distributed as distributed_fit
from laplace.utils.errors import DistributedError
from tests.laplace.distributed import scenarios
from tests.laplace.distributed.harness import run_ranks

TOL = 1e-10


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_ranks(scenarios.rank_main, timeout=240)


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=TOL, atol=TOL, msg=key)


@pytest.mark.parametrize("index", range(len(scenarios.CONFIGS)),
                         ids=[f"{c[0]}-{c[1]}-{c[2]}{'-k4' if c[3].get('n_eigenvalues') else ''}"
                              for c in scenarios.CONFIGS])
def test_every_structure_matches_one_process(ranks: list[dict], index: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = scenarios.structure_results(scenarios.CONFIGS[index], None)
    assert int(expected["n_data"]) == scenarios.N_TRAIN
    for result in ranks:
        assert_same(result["structures"][index], expected)


def test_gridsearch_with_sharded_validation_loader(ranks: list[dict]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = scenarios.gridsearch_results(None)
    assert all(bool(torch.isfinite(v).all()) for v in expected.values())
    for result in ranks:
        assert_same(result["gridsearch"], expected)


@pytest.mark.parametrize("averaging", ["ddp", "allreduce"])
def test_marglik_training_matches_one_process(ranks: list[dict], averaging: str) -> None:
    expected = scenarios.marglik_results(None, ddp=False)
    assert len(expected["margliks"]) == 6 and len(expected["losses"]) == 3
    for result in ranks:
        assert_same(result[f"marglik_{averaging}"], expected)


def test_ddp_model_posterior_and_state_dict(ranks: list[dict]) -> None:
    expected = scenarios.ddp_results(None)
    torch.testing.assert_close(expected["loaded_predictive"], expected["predictive"])
    for result in ranks:
        assert_same(result["ddp"], expected)


def test_error_on_one_rank_reaches_every_rank(ranks: list[dict]) -> None:
    nan = "Batch 0: regression targets contain NaN or inf."
    empty = "The data loader yielded no batches: nothing to fit on."
    rank0, rank1 = ranks[0]["errors"], ranks[1]["errors"]
    assert rank1["full"] == rank1["lowrank"] == ("ValueError", nan)
    assert rank0["full"] == ("DistributedError", f"Rank 1 failed while fitting: ValueError: {nan}")
    assert rank0["lowrank"] == rank0["full"]
    assert rank0["empty"] == ("ValueError", empty)
    assert rank1["empty"] == (
        "DistributedError", f"Rank 0 failed while finding the last layer: ValueError: {empty}"
    )
    for errors in (rank0, rank1):
        assert "override=False) after an earlier fit is not supported" in errors["override"]
        assert errors["gp"][0] == "DistributedError"
        assert "FunctionalLaplace cannot be fitted on data sharded" in errors["gp"][1]
    # the group is still usable after the errors: a normal fit on both ranks agrees
    torch.testing.assert_close(rank0["after"], rank1["after"], rtol=0, atol=0)


def test_auto_detection_and_traffic(ranks: list[dict]) -> None:
    assert [r["auto"] for r in ranks] == [True, True]
    traffic = ranks[0]["traffic"]
    assert traffic["calls"] > 0 and traffic["bytes"] > 0
    assert ranks[0]["traffic"] == ranks[1]["traffic"]


def test_distributed_argument_without_process_group() -> None:
    X, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=3)
    la = Laplace(scenarios.model("regression"), "regression", "all", "diag")
    with pytest.raises(ValueError, match=r"distributed must be None, True or False, got 'yes'"):
        la.fit(train, distributed="yes")
    with pytest.raises(DistributedError, match=r"distributed=True needs an initialised default "
                                               r"process group"):
        la.fit(train, distributed=True)
    assert not distributed_fit.is_active() and distributed_fit.is_main_process()
    la.fit(train)  # auto: local without a process group
    local = la.H.clone()
    la.fit(train, distributed=False)
    torch.testing.assert_close(la.H, local, rtol=0, atol=0)
    assert la.n_data == 6
