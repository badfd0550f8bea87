"""Laplace over data sharded across processes with ``torch.distributed``.

Run on the CPU with two processes (Gloo)::

    torchrun --standalone --nproc_per_node=2 tutorials/laplace_distributed.py

and on several GPUs (NCCL, one process per GPU, e.g. 4 GPUs of one host)::

    torchrun --standalone --nproc_per_node=4 tutorials/laplace_distributed.py --backend nccl

(on several hosts: ``torchrun --nnodes=H --node_rank=i --rdzv_endpoint=HOST:PORT ...``).
Each process:

1. **Joins the group.** ``torch.distributed.init_process_group`` reads the rank and
   world size that ``torchrun`` put in the environment; with NCCL each process first
   selects its GPU (``LOCAL_RANK``) and keeps all its tensors there.
2. **Reads its shard.** A ``DistributedSampler`` (no shuffling, the data size a
   multiple of the world size so no point is repeated) gives each rank ``N / W``
   of the ``N`` points.
3. **Trains the MAP** in ``DistributedDataParallel`` (gradients averaged across ranks).
4. **Fits the Laplace approximation.** ``Laplace(ddp_model, "regression", "all",
   "kron").fit(loader)`` detects the process group, accumulates the curvature of its
   shard and sums the Kronecker factors, the loss and the data count over the ranks with
   ``all_reduce``: every rank ends with the posterior of all the data.
5. **Tunes and predicts.** ``optimize_prior_precision`` (marginal likelihood) and the
   predictive need no further communication; every rank holds the same numbers.
6. **Checks.** Rank 0 fits the same model on all the data alone (``distributed=False``)
   and prints the largest difference (float64: ~1e-15), then writes the numbers to
   ``--out``/``distributed.json``; only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from laplace import Laplace
from laplace.utils import distributed as distributed_fit


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--n-data", type=int, default=512, help="multiple of the world size")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--out", default="outputs/distributed_tutorial")
    return parser.parse_args(argv)


def make_data(n: int, device: torch.device) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.sin(2 * X[:, :1]) * X[:, 1:] + 0.1 * torch.randn(n, 1, generator=g,
                                                               dtype=torch.float64)
    return TensorDataset(X.to(device), y.to(device))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    data = make_data(args.n_data, device)
    sampler = DistributedSampler(data, shuffle=False)
    loader = DataLoader(data, batch_size=64, sampler=sampler)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, args.width), nn.Tanh(), nn.Linear(args.width, 1))
    net = nn.parallel.DistributedDataParallel(net.double().to(device))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(args.epochs):
        for X, y in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(net(X), y).backward()
            optimizer.step()

    la = Laplace(net, "regression", "all", "kron", sigma_noise=0.1)
    with distributed_fit.communication() as traffic:
        la.fit(loader)  # auto-detected: sums over the ranks
    la.optimize_prior_precision(n_steps=50)
    X_test = torch.linspace(-2, 2, 9, dtype=torch.float64, device=device)[:, None].repeat(1, 2)
    f_mu, f_var = la(X_test)
    result = {"world_size": world, "n_data": la.n_data, "backend": args.backend,
              "prior_precision": la.prior_precision.item(),
              "log_marglik": la.log_marginal_likelihood().item(),
              "f_var": f_var.flatten().tolist(), "bytes_all_reduced": traffic["bytes"]}
    if distributed_fit.is_main_process():
        single = Laplace(net.module, "regression", "all", "kron", sigma_noise=0.1)
        single.fit(DataLoader(data, batch_size=64), distributed=False)
        single.optimize_prior_precision(n_steps=50)
        diff = (single(X_test)[1] - f_var).abs().max().item()
        result["max_abs_difference"] = diff
        print(f"rank {rank} of {world}: n_data {la.n_data}, prior precision "
              f"{result['prior_precision']:.6g}, log marglik {result['log_marglik']:.6g}")
        print(f"all-reduced per fit: {traffic['bytes']} bytes in {traffic['calls']} calls")
        print(f"max |difference| to one process on all data: {diff:.3g}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed.json").write_text(json.dumps(result, indent=2))
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
