"""``benchmarks/botorch_contract_diff.py``: ``LaplaceBNN`` answers BoTorch's calls as
``SingleTaskGP`` does, but for the differences the user guide lists (a new difference
fails here until it is understood and documented)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from botorch.exceptions.errors import BotorchTensorDimensionError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import botorch_contract_diff as contract  # noqa: E402

#: The documented differences (docs/guide/lapbo.md, "Next to SingleTaskGP") by set-up.
BAD_QUERIES = ("condition_on_observations(Y of m + 1 outputs)", "posterior(X (3, d + 1))",
               "posterior(X (d,))", "posterior(X with NaN)")
MULTI = ("two outputs", "three outputs", "MLP")
EXPECTED = ({f"{setup}: {read}" for setup in contract.SETUPS for read in BAD_QUERIES}
            | {"known noise: condition_on_observations without noise",
               "float32: posterior(X of the other float dtype)",
               "Warp: posterior(X of the other float dtype)"}  # the GP's Warp fails
            | {f"{setup}: {read}" for setup in MULTI
               for read in ("output_indices=[0] mean", "model(X (4, 3, d)) (forward)",
                            "ProximalAcquisitionFunction(UCB)")}
            | {f"{setup}: to(float32) copy, posterior(float32 X) mean" for setup in contract.SETUPS
               if setup != "float32"}
            | {f"{setup}: {read}" for setup in ("InputPerturbation", "AppendFeatures")
               for read in (  # the GP cannot condition under a transform of q to q·n points
                "condition_on_observations", "condition_on_observations posterior mean",
                "condition_on_observations without noise",
                "condition_on_observations train_inputs",
                "condition_on_observations then fantasize",
                "batched condition_on_observations",
                "batched condition_on_observations posterior mean",
                "batched condition_on_observations train_inputs, train_targets",
                "model(X (4, 3, d)) (forward)", "observation_noise=Tensor(3, m) variance")}
            | {"AppendFeatures: qNegIntegratedPosteriorVariance(X (4, 2, d))"}  # both refuse
            | {f"model averaging: posterior(X {shape}) type"
               for shape in ("[3, 2]", "[4, 3, 2]", "[2, 4, 3, 2]")})


@pytest.fixture(scope="module")
def both() -> dict:
    return contract.run()


def test_only_the_documented_reads_differ(both) -> None:
    differences = contract.compare(both["laplace"], both["gp"])
    assert {d["key"] for d in differences} == EXPECTED
    assert len(both["gp"]) == len(both["laplace"]) == 1014


def test_the_shapes_agree_where_botorch_reads_them(both) -> None:
    ours = both["laplace"]
    assert ours["two outputs: posterior(X [2, 4, 3, 2]) covariance_matrix"] == {
        "shape": [2, 4, 6, 6], "dtype": "torch.float64"}
    assert ours["two outputs: draw_matheron_paths([4])(X (3, d))"]["shape"] == [4, 2, 3]
    assert ours["one output: fantasize(X (2, 3, d))"] == {
        "model": True, "batch_shape": [4, 2], "num_outputs": 1}
    for setup in contract.SETUPS:
        assert ours[f"{setup}: posterior(X (3, d + 1))"] == "error: TensorShapeError"
        assert ours[f"{setup}: observation_noise=True adds noise"] is True
    assert ours["two outputs: train_inputs"] == [{"shape": [2, 8, 2], "dtype": "torch.float64"}]
    assert ours["two outputs: qMultiObjectivePredictiveEntropySearch"]["shape"] == [5]
    assert ours["two outputs: fantasize train_inputs, train_targets"] == [
        {"shape": [4, 2, 11, 2], "dtype": "torch.float64"},
        {"shape": [4, 2, 11], "dtype": "torch.float64"}]


def test_a_shape_error_is_botorchs_and_a_value_error() -> None:
    from lapbo.validation import TensorShapeError

    assert issubclass(TensorShapeError, BotorchTensorDimensionError)
    assert issubclass(TensorShapeError, ValueError)


def test_compare_lists_what_differs() -> None:
    ours = {"a": {"shape": [3, 1]}, "b": "error: ValueError"}
    theirs = {"a": {"shape": [3, 1]}, "b": {"shape": [3, 1]}, "c": 1}
    assert [d["key"] for d in contract.compare(ours, theirs)] == ["b", "c"]
    text = contract.markdown(contract.compare(ours, theirs), 3, "abc")
    assert "3 reads" in text and "2 differ" in text and "| b |" in text
