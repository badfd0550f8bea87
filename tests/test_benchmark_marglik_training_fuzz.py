"""``benchmarks/marglik_training_fuzz.py``: its draws are reproducible and varied, and its
probe runs here and records what the comparison reads (laplace-torch is not needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import laplace_torch_fuzz as fuzz  # noqa: E402
from benchmarks import marglik_training_fuzz as mlt  # noqa: E402
from benchmarks import marglik_training_fuzz_probe as probe  # noqa: E402


def test_configurations_are_reproducible_and_varied():
    a = mlt.configurations(3, 40)
    assert a == mlt.configurations(3, 40) and a != mlt.configurations(4, 40)
    assert {c["hs"] for c in a} == {"full", "kron", "diag"}
    assert {c["lik"] for c in a} == {"regression", "classification"}
    assert {c["backend"] for c in a} == set(mlt.BACKENDS)


def test_the_probe_records_trajectories_and_agrees_with_itself():
    configs = [dict(c, n_epochs=3, backend="CurvlinopsGGN", hs=hs, dtype="f64")
               for c, hs in zip(mlt.configurations(5, 2), ("full", "diag"))]
    ours = [probe.run(c) for c in configs]
    for cfg, result in zip(configs, ours):
        assert result["marglik_training"] == ("V", None)
        assert result["losses"][1].shape == (3,)  # one loss per epoch
        assert torch.isfinite(result["log_marginal_likelihood"][1])
        n_weights = sum(p.numel() for p in probe.build(cfg)[0].parameters())
        assert result["weights"][1].shape == (n_weights,)
    assert fuzz.compare(configs, ours, [probe.run(c) for c in configs]) == []
    refused = probe.run(dict(configs[0], hs="kron", prior_structure="diag"))
    assert refused["marglik_training"][:2] == ("E", "ValueError")  # an error is a result
