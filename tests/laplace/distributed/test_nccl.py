"""The distributed fit on CUDA tensors in an NCCL group (one process per GPU, up to 2)."""

from __future__ import annotations

import pytest
import torch

from laplace import Laplace
from tests.laplace.distributed import scenarios
from tests.laplace.distributed.harness import run_ranks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL)")
def test_nccl_fit_matches_one_cpu_process() -> None:
    world = min(2, torch.cuda.device_count())
    results = run_ranks(scenarios.cuda_results, world_size=world, backend="nccl", timeout=240)
    for index, structure in enumerate(("full", "kron", "diag", "lowrank")):
        la = Laplace(scenarios.model("regression"), "regression", "all", structure,
                     sigma_noise=0.3, prior_precision=0.5)
        la.fit(scenarios.loader(scenarios.data("regression", scenarios.N_TRAIN, 1), None, 0))
        for result in results:
            torch.testing.assert_close(result[index]["precision"], la._precision().to_matrix(),
                                       rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(result[index]["lml"],
                                       la.log_marginal_likelihood().detach().reshape(1),
                                       rtol=1e-10, atol=1e-10)
