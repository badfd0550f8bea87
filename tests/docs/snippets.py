"""Run a documentation snippet (``docs/snippets/NAME.py``) in this process."""

from __future__ import annotations

import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "snippets"


def run_snippet(name: str) -> dict[str, Any]:
    """Execute ``docs/snippets/{name}.py`` as a script; returns its global namespace."""
    return runpy.run_path(str(SNIPPETS / f"{name}.py"), run_name="__main__")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: the snippets are small and the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
