"""The classic ``laplace`` tutorials run end to end in reduced size with sane outputs."""

from __future__ import annotations

import json
import math
import pickle
import runpy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tutorial(name: str) -> Callable[[list[str]], dict[str, Any]]:
    return runpy.run_path(str(TUTORIALS / f"{name}.py"), run_name=name)["main"]


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


def test_regression(tmp_path: Path) -> None:
    result = tutorial("laplace_regression")([
        "--n", "80", "--width", "16", "--epochs", "150", "--marglik-steps", "30",
        "--out", str(tmp_path)])
    assert_png(result["plot"])
    saved = json.loads(Path(result["json"]).read_text())
    assert saved["sigma_noise"] == pytest.approx(result["sigma_noise"])

    # Both tuning stages raise the evidence; σ lands near the true 0.3.
    lml = result["log_marglik"]
    assert lml["fit"] < lml["prior_tuned"] < lml["both_tuned"]
    assert 0.15 < result["sigma_noise"] < 0.6
    assert result["prior_precision"] > 0

    # Predictive bands: positive, wider than the noise alone, widest away from the data.
    std, epi = result["pred_std"], result["epistemic"]
    assert bool((epi > 0).all()) and bool((std >= result["sigma_noise"]).all())
    assert torch.isfinite(result["mean"]).all()
    spread = result["epistemic_std"]
    assert spread["data"] < spread["gap"] and spread["data"] < spread["outside"]
    assert 0.8 <= result["held_out"]["coverage_2std"] <= 1.0


def test_calibration_digits(tmp_path: Path) -> None:
    result = tutorial("laplace_calibration")([
        "--width", "32", "--epochs", "15", "--out", str(tmp_path)])
    assert_png(result["plot"])
    assert json.loads(Path(result["json"]).read_text())["n_test"] == result["n_test"]
    m = result["metrics"]
    assert set(m) == {"MAP", "LA marglik", "LA val-NLL"}
    for name, values in m.items():
        assert 0.8 <= values["accuracy"] <= 1.0, name
        assert 0.0 < values["nll"] < 2.0, name
        assert 0.0 <= values["ece"] <= 1.0, name
    # The probit predictive keeps the MAP's decisions (up to near-ties) ...
    assert abs(m["LA val-NLL"]["accuracy"] - m["MAP"]["accuracy"]) < 0.02
    # ... and the validation-tuned prior never makes the test NLL much worse.
    assert m["LA val-NLL"]["nll"] <= m["MAP"]["nll"] + 0.02
    assert result["n_params_laplace"] == 32 * 10 + 10  # last layer only
    bins = result["reliability"]["MAP"]
    assert len(bins["count"]) == 15 and sum(bins["count"]) == result["n_test"]


def test_ece_by_hand() -> None:
    ece = runpy.run_path(str(TUTORIALS / "laplace_calibration.py"))["expected_calibration_error"]
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = torch.tensor([0, 1, 0, 1])
    # bins (0.8667, 0.9333]: conf 0.9, acc 0.5; (0.5333, 0.6]: 0.6, 1; (0.6667, 0.7333]: 0.7, 1
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert ece(probs, y) == pytest.approx(expected)
    assert ece(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == pytest.approx(0.0)


def test_model_selection(tmp_path: Path) -> None:
    result = tutorial("laplace_model_selection")([
        "--widths", "4,16", "--depths", "1", "--n", "80", "--epochs", "200",
        "--marglik-steps", "40", "--out", str(tmp_path)])
    assert_png(result["plot"])
    table = result["table"]
    assert [(r["width"], r["depth"]) for r in table] == [(4, 1), (16, 1)]
    assert [r["n_params"] for r in table] == [3 * 4 + 1, 3 * 16 + 1]
    for r in table:
        assert math.isfinite(r["log_marglik"]) and math.isfinite(r["heldout_nll"])
        assert r["prior_precision"] > 0 and r["sigma_noise"] > 0
    best = max(table, key=lambda r: r["log_marglik"])
    assert result["chosen"] == best
    saved = json.loads(Path(result["json"]).read_text())
    assert saved["chosen"]["log_marglik"] == pytest.approx(best["log_marglik"])


def test_subnetwork(tmp_path: Path) -> None:
    result = tutorial("laplace_subnetwork")([
        "--n", "100", "--width", "16", "--subnet", "32", "--epochs", "40", "--grid", "31",
        "--out", str(tmp_path)])
    assert_png(result["plot"])
    la, indices = result["la"], result["indices"]
    assert la.n_params_subnet == 32 and result["n_params_subnet"] == 32
    assert la.n_params == 2 * 16 + 16 + 16 * 16 + 16 + 16 * 2 + 2
    assert tuple(result["posterior_precision"].shape) == (32, 32)
    # as in laplace-torch: the mean covers every parameter, mean_subnet the subnetwork
    assert la.mean.shape == (la.n_params,) and la.mean_subnet.shape == (32,)
    assert la.posterior_variance.shape == (32,)
    assert indices.shape == (32,) and indices.unique().numel() == 32
    # LargestMagnitude: the chosen weights are the largest in absolute value.
    theta = torch.cat([p.detach().reshape(-1) for p in la.model.parameters()]).abs()
    assert theta[indices].min() >= theta[~torch.isin(torch.arange(theta.numel()), indices)].max()
    assert bool((la.posterior_variance > 0).all())
    conf = result["mean_confidence_far"]
    assert 0.5 <= conf["Laplace"] <= conf["MAP"] <= 1.0


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap fallback (attention)
def test_lora_transformer(tmp_path: Path) -> None:
    result = tutorial("laplace_lora")([
        "--n-train", "256", "--n-test", "256", "--pretrain-epochs", "5",
        "--finetune-epochs", "5", "--out", str(tmp_path)])
    assert_png(result["plot"])
    la, model = result["la"], result["model"]
    adapters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n, _ in adapters)
    n_adapter = sum(p.numel() for _, p in adapters)
    # peft rank 2 on GPT-2's c_attn (16→48), attn.c_proj (16→16), c_fc (16→32), mlp.c_proj (32→16)
    assert n_adapter == 2 * (48 + 16) + 2 * (16 + 16) + 2 * (32 + 16) + 2 * (16 + 32)
    assert la.n_params == n_adapter == result["la_n_params"]
    assert la.n_params < result["n_params_total"] / 5
    assert la.posterior_variance.shape == (n_adapter,)
    probs = la(result["test_batch"])  # a dict batch
    assert probs.shape == (256, 2) and torch.allclose(probs.sum(-1), torch.ones(256))
    for m in result["metrics"].values():
        assert 0.0 <= m["accuracy"] <= 1.0 and math.isfinite(m["nll"])


def test_serialization(tmp_path: Path) -> None:
    result = tutorial("laplace_serialization")([
        "--width", "8", "--n", "80", "--epochs", "100", "--out", str(tmp_path)])
    rows = result["variants"]
    assert set(rows) == {"regression_full", "classification_diag", "last_layer_kron",
                         "subnetwork_full"}
    for name, r in rows.items():
        assert r["max_diff_state_dict"] <= 1e-10, name
        assert r["max_diff_pickle"] <= 1e-10, name
        assert r["log_marglik_diff_state_dict"] <= 1e-8 * max(1.0, abs(r["log_marglik"]))
        assert r["log_marglik_diff_pickle"] <= 1e-8 * max(1.0, abs(r["log_marglik"]))
        for suffix in ("_model.pt", "_la.pt", ".pkl"):
            assert (tmp_path / f"{name}{suffix}").stat().st_size > 0
        # The Laplace state loads with the safe loader (tensors, numbers, strings only).
        state = torch.load(tmp_path / f"{name}_la.pt", weights_only=True)
        assert state["n_data"] == 80
    assert json.loads(Path(result["json"]).read_text()).keys() == rows.keys()
    la = pickle.loads((tmp_path / "last_layer_kron.pkl").read_bytes())
    assert la.n_params == 8 * 2 + 2
