"""``lapbo.lbfgs``: ``torch.optim.LBFGS`` without importing ``torch._dynamo``, the same
optimizer otherwise, and no trace left on torch."""

from __future__ import annotations

import subprocess
import sys

import torch

from lapbo.lbfgs import lbfgs


def _rosenbrock_run(make):
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    opt = make([x], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        loss.backward()
        return loss

    opt.step(closure)
    return x.detach(), opt.state_dict()["state"][0]["n_iter"]


def test_the_same_optimizer_and_no_trace_on_torch():
    ours, theirs = _rosenbrock_run(lbfgs), _rosenbrock_run(torch.optim.LBFGS)
    assert torch.equal(ours[0], theirs[0]) and ours[1] == theirs[1] > 5
    add = torch.optim.Optimizer.add_param_group.__wrapped__
    assert getattr(add, "__dynamo_disable", None) is not add  # nothing left behind
    assert isinstance(lbfgs([torch.zeros(1, requires_grad=True)]), torch.optim.LBFGS)


def test_a_fresh_process_fits_the_default_family_without_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from lapbo import LaplaceBNN\n"
        "X = torch.rand(8, 2, dtype=torch.float64)\n"
        "LaplaceBNN(X, X.sum(-1, keepdim=True)).fit()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "False"
