"""Run a function in ``world_size`` processes of a fresh default process group.

``run_ranks(fn, *args)`` spawns the processes (``spawn`` start method, a free TCP port
found by binding to port 0), calls ``fn(rank, world_size, *args)`` in each inside an
initialised group, and returns every rank's return value (in rank order, through
``torch.save`` files). A process that raises fails the caller with its traceback; one
that is still running after ``timeout`` seconds is terminated and fails the caller too,
so a hang never blocks the test suite.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, backend: str, out: str,
           fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result: Any = {"ok": fn(rank, world_size, *args)}
    except BaseException:  # noqa: BLE001  (reported to the parent)
        result = {"error": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = 120,
              backend: str = "gloo") -> list[Any]:
    """``[fn(rank, world_size, *args) for rank in range(world_size)]``, each in its process."""
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        procs = [ctx.Process(target=_entry, args=(r, world_size, port, backend, out, fn, args))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        if hung:
            raise TimeoutError(f"ranks {hung} still running after {timeout} s: terminated.")
        results = []
        for r, p in enumerate(procs):
            path = Path(out) / f"rank{r}.pt"
            if not path.exists():
                raise RuntimeError(f"rank {r} exited with code {p.exitcode} and no result.")
            result = torch.load(path, weights_only=False)
            if "error" in result:
                raise RuntimeError(f"rank {r} failed:\n{result['error']}")
            results.append(result["ok"])
    return results
