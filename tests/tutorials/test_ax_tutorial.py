"""The Ax tutorial runs end to end in reduced size and reports a finite best value."""

from __future__ import annotations

import math
import re
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ax.api.client import Client

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "ax_laplace_bnn.py"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tutorial_small_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(TUTORIAL), run_name="ax_tutorial")["main"]
    snapshot = tmp_path / "experiment.json"
    result = main(["--trials", "6", "--sobol", "4", "--width", "16", "--epochs", "40",
                   "--save", str(snapshot)])
    out = capsys.readouterr().out
    assert "trials: 6" in out
    printed = float(re.search(r"best hartmann6: (\S+)", out).group(1))
    assert math.isfinite(printed) and math.isclose(printed, result["value"], abs_tol=1e-6)
    assert result["n_trials"] == 6 and 0 <= result["trial"] < 6
    assert -3.33 <= result["value"] <= 0.0  # Hartmann-6 lies in [-3.32237, 0]
    assert set(result["parameters"]) == {f"x{i}" for i in range(6)}
    assert all(0.0 <= v <= 1.0 for v in result["parameters"].values())
    loaded = Client.load_from_json_file(str(snapshot))
    trials = loaded._experiment.trials.values()
    assert len(trials) == 6
    assert [t.generator_runs[0]._generation_node_name for t in trials] == ["Sobol"] * 4 + [
        "MBM"] * 2
