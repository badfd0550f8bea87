"""``benchmarks/bo.py --combine``: one table from several result files, keeping the notes
of an earlier report and naming every part's commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bo  # noqa: E402


def run(method: str, seed: int, final: float) -> dict:
    return {"problem": "branin", "method": method, "seed": seed, "options": {},
            "log10_regret": [1.0, final], "final_log10_regret": final,
            "mean_fit_cpu_s": 0.2, "mean_acq_cpu_s": 0.1, "X_boundary_fraction": 0.0}


def part(path: Path, commit: str, seeds: list[int], finals: dict[str, list[float]]) -> str:
    runs = [run(m, s, v) for m, values in finals.items() for s, v in zip(seeds, values)]
    meta = {"seeds": seeds, "iterations": 1, "command": f"bo.py --seeds {seeds}",
            "commit": commit, "machine": "test", "load_average": [0.0]}
    path.write_text(json.dumps({"meta": meta, "runs": runs}))
    return str(path)


def test_combine_keeps_notes_and_names_each_commit(tmp_path: Path) -> None:
    a = part(tmp_path / "a.json", "abc1234", [0, 1], {"laplace": [0.1, 0.5], "gp": [0.3, 0.4]})
    b = part(tmp_path / "b.json", "def5678", [2], {"laplace": [0.2], "gp": [0.6]})
    report = tmp_path / "both.md"
    report.write_text(f"old table\n\n{bo.NOTES_MARKER}\nhand-written notes\n")
    bo.combine([a, b], tmp_path, "both")
    text = report.read_text()
    assert "old table" not in text and text.endswith(f"{bo.NOTES_MARKER}\nhand-written notes\n")
    assert "Code at commit abc1234 + def5678." in text
    data = json.loads((tmp_path / "both.json").read_text())
    laplace = next(r for r in data["table"] if r["method"] == "laplace")
    assert laplace["median_final_log10_regret"] == 0.2  # of 0.1, 0.5, 0.2
    assert laplace["paired_wins_vs_gp"] == "2/3"
    assert data["meta"]["seeds"] == [0, 1, 2]
