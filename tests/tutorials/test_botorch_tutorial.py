"""The BoTorch tutorial runs end to end in reduced size and reports sane results."""

from __future__ import annotations

import math
import re
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "botorch_laplace_bnn.py"
BRANIN_MAX = -0.397887  # maximum of the negated Branin function


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


def test_tutorial_small_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(TUTORIAL), run_name="botorch_tutorial")["main"]
    result = main(["--iterations", "2", "--seed", "1", "--width", "16", "--epochs", "40",
                   "--restarts", "2", "--raw-samples", "32", "--paths", "4",
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out

    # 6 Sobol points (2d + 2), 2 qLogEI rounds, 1 Thompson step.
    X, Y = result["X"], result["Y"]
    assert X.shape == (9, 2) and Y.shape == (9, 1)
    assert result["sources"] == ["sobol"] * 6 + ["qLogEI"] * 2 + ["thompson"]
    bounds = torch.tensor([[-5.0, 0.0], [10.0, 15.0]], dtype=X.dtype)
    assert bool(((X >= bounds[0] - 1e-9) & (X <= bounds[1] + 1e-9)).all())
    assert torch.isfinite(Y).all()

    # The best value is the running maximum, never above Branin's maximum.
    assert result["best_value"] == pytest.approx(Y.max().item())
    assert result["best_value"] <= BRANIN_MAX + 1e-6
    assert result["optimum"] == pytest.approx(BRANIN_MAX, abs=1e-5)
    regret = result["regret"]
    assert len(regret) == 9 and all(r >= 0 for r in regret)
    assert all(a >= b for a, b in zip(regret, regret[1:]))  # non-increasing

    # Each round refits the marginal-likelihood hyperparameters.
    assert len(result["rounds"]) == 2
    for r in result["rounds"]:
        assert r["sigma_noise"] > 0 and r["prior_precision"] > 0
        assert math.isfinite(r["log_ei"]) and math.isfinite(r["mean"]) and r["std"] > 0

    # Thompson step: a point in the box, a positive posterior std there.
    ts = result["thompson"]
    assert ts["candidate"].shape == (1, 2)
    assert math.isfinite(ts["mean"]) and ts["std"] > 0 and math.isfinite(ts["path_value"])
    assert ts["observed"] == pytest.approx(Y[-1].item())

    printed = float(re.search(r"posterior mean ± std there: \S+ ± (\S+);", out).group(1))
    assert printed == pytest.approx(ts["std"], abs=1e-4)  # printed to 4 decimals
    assert_png(result["plot"])
    assert result["plot"] == tmp_path / "convergence.png"
