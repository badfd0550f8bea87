"""The distributed tutorial runs under ``torchrun`` with 2 Gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tutorial_two_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "tutorials" / "laplace_distributed.py"),
               "--epochs", "5", "--n-data", "128", "--width", "8", "--out", str(tmp_path)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("rank 0 of 2: n_data 128") == 1  # only rank 0 prints
    printed = float(re.search(r"max \|difference\| to one process on all data: (\S+)",
                              run.stdout).group(1))
    result = json.loads((tmp_path / "distributed.json").read_text())
    assert result["world_size"] == 2 and result["n_data"] == 128
    assert printed == float(f"{result['max_abs_difference']:.3g}")
    assert result["max_abs_difference"] < 1e-10
    # 3 Kronecker blocks of (8x8, 2x2), (8x8) bias, (1x1, 8x8): 149 doubles, the loss,
    # the count and 2 error-agreement flags (8 bytes each)
    assert result["bytes_all_reduced"] == 8 * (64 + 4 + 64 + 1 + 64 + 1 + 1 + 1 + 2)
