"""Laplace on LoRA adapters only: a small transformer with dict-like (Hugging Face) batches.

The laplace-torch docs show Laplace on a Hugging Face LLM fine-tuned with LoRA: the
approximation covers exactly the parameters with ``requires_grad=True``. This script
reproduces that setting without downloads, with a transformer built in code:

1. **Data.** Random token sequences (length 8, vocabulary 12) served by a ``DataLoader``
   whose batches are dicts ``{"input_ids": (B, 8), "labels": (B,)}``, as a Hugging Face
   tokenizer/collator yields them. The model's ``forward`` takes the dict.
2. **Pretraining.** An ``nn.Embedding`` (``d_model`` 16), one
   ``nn.TransformerEncoderLayer`` (2 heads), mean pooling and a linear classifier head
   are trained on task A: "does token 0 occur?".
3. **LoRA.** Every pretrained weight is frozen. Low-rank adapters ``W + (α/r)·B A``
   (rank ``r``, ``B`` initialised to zero) are added in code with
   ``torch.nn.utils.parametrize`` to the attention's packed q/k/v projection
   (``in_proj_weight``), its output projection and the two feed-forward layers; only the
   ``A``/``B`` matrices are trainable. They are fine-tuned on task B: "are there more 1s
   than 2s?". (A parametrization changes the weight wherever it is read, so the fused
   inference kernels of PyTorch's transformer layers see the adapters too.)
4. **Laplace.** ``Laplace(model, "classification", subset_of_weights="all",
   hessian_structure="diag")`` covers the trainable parameters only: ``la.n_params`` is
   the adapter count, a small fraction of all weights. ``la.fit(loader)`` reads the
   targets from the ``"labels"`` key and passes the whole dict to the model
   (``dict_key_x="input_ids"``/``dict_key_y="labels"`` are the defaults); then
   ``la.optimize_prior_precision(method="marglik")``.
5. **Predictive.** ``la(batch)`` on a dict batch: the probit GLM predictive. Accuracy and
   NLL of the MAP and of the Laplace predictive on held-out sequences, and a histogram of
   their confidences, are saved as ``lora.png`` and ``lora.json`` in ``--out``.

Run ``.venv/bin/python tutorials/laplace_lora.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset

from laplace import Laplace

VOCAB, LENGTH, D_MODEL = 12, 8, 16


class TokenDataset(Dataset):
    """Sequences and labels served as ``{"input_ids": (LENGTH,), "labels": ()}`` items."""

    def __init__(self, input_ids: Tensor, labels: Tensor) -> None:
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


def make_task(n: int, task: str, generator: torch.Generator) -> TokenDataset:
    """``task`` ``"A"``: label 1 if token 0 occurs; ``"B"``: if 1s outnumber 2s."""
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    if task == "A":
        labels = (ids == 0).any(1)
    else:
        labels = (ids == 1).sum(1) > (ids == 2).sum(1)
    return TokenDataset(ids, labels.long())


class TinyTransformer(nn.Module):
    """Embedding → one encoder layer → mean pooling → linear head; takes dict batches."""

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, D_MODEL)
        self.encoder = nn.TransformerEncoderLayer(
            D_MODEL, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(D_MODEL, n_classes)

    def forward(self, data: Mapping[str, Tensor]) -> Tensor:
        device = self.head.weight.device
        hidden = self.encoder(self.embedding(data["input_ids"].to(device)))
        return self.head(hidden.mean(dim=1))


class LoRA(nn.Module):
    """Parametrization ``W ↦ W + (α/r)·B A`` with trainable ``A (r, in)``, ``B (out, r)``."""

    def __init__(self, weight: Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.lora_A = nn.Parameter(torch.randn(rank, in_features) / math.sqrt(in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))  # starts at W exactly
        self.scale = alpha / rank

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A)


def add_lora(model: TinyTransformer, rank: int, alpha: float) -> list[str]:
    """Freeze ``model`` and add LoRA adapters; returns the adapted weights' names."""
    for p in model.parameters():
        p.requires_grad_(False)
    attn, enc = model.encoder.self_attn, model.encoder
    targets = [("encoder.self_attn", attn, "in_proj_weight"),  # packed q, k, v
               ("encoder.self_attn.out_proj", attn.out_proj, "weight"),
               ("encoder.linear1", enc.linear1, "weight"),
               ("encoder.linear2", enc.linear2, "weight")]
    for _, module, name in targets:
        parametrize.register_parametrization(
            module, name, LoRA(getattr(module, name), rank, alpha)
        )
    return [f"{prefix}.{name}" for prefix, _, name in targets]


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch), batch["labels"]).backward()
            optimizer.step()
    model.eval()


def scores(probs: Tensor, labels: Tensor) -> dict[str, float]:
    nll = -probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()
    return {"accuracy": float((probs.argmax(-1) == labels).double().mean()), "nll": float(nll)}


def run(n_train: int = 1024, n_test: int = 1024, pretrain_epochs: int = 30,
        finetune_epochs: int = 40, rank: int = 2, alpha: float = 4.0, seed: int = 0,
        out: str | Path = "outputs/laplace_lora") -> dict[str, Any]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # 1.-2. Pretrain the whole model on task A.
    model = TinyTransformer()
    pretrain = DataLoader(make_task(n_train, "A", g), batch_size=64, shuffle=True)
    train(model, pretrain, pretrain_epochs, lr=1e-2)
    n_total = sum(p.numel() for p in model.parameters())

    # 3. Freeze, add LoRA adapters, fine-tune them on task B.
    adapted = add_lora(model, rank, alpha)
    n_adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_set, test_set = make_task(n_train, "B", g), make_task(n_test, "B", g)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    train(model, loader, finetune_epochs, lr=1e-2)
    test_batch = next(iter(DataLoader(test_set, batch_size=n_test)))  # one dict batch
    with torch.no_grad():
        map_probs = torch.softmax(model(test_batch), dim=-1)
    print(f"pretrained weights: {n_total} (frozen); LoRA rank {rank} on {', '.join(adapted)}")

    # 4. Laplace over the trainable (adapter) parameters only.
    with warnings.catch_warnings():
        # torch.func has no batching rule for CPU flash attention yet: a slower
        # fallback, same results.
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        la = Laplace(model, "classification", subset_of_weights="all",
                     hessian_structure="diag")
        la.fit(loader)
        la.optimize_prior_precision(method="marglik")
        # 5. Predictive on a dict batch.
        la_probs = la(test_batch, pred_type="glm", link_approx="probit")
    print(f"Laplace posterior over {la.n_params} parameters = the {n_adapter} adapter "
          f"weights ({100 * la.n_params / (n_total + n_adapter):.1f}% of "
          f"{n_total + n_adapter})")
    results = {"MAP": scores(map_probs, test_batch["labels"]),
               "Laplace": scores(la_probs, test_batch["labels"])}
    for name, m in results.items():
        print(f"{name:8s} test accuracy {m['accuracy']:.4f}  NLL {m['nll']:.4f}")

    numbers = {"n_params_total": n_total + n_adapter, "n_params_pretrained": n_total,
               "n_params_adapters": n_adapter, "la_n_params": la.n_params,
               "adapted_weights": adapted,
               "posterior_parameters": [n for n, p in model.named_parameters()
                                        if p.requires_grad],
               "prior_precision_range": [la.prior_precision.min().item(),
                                         la.prior_precision.max().item()],
               "metrics": results}
    plot = out / "lora.png"
    _plot(map_probs, la_probs, plot)
    (out / "lora.json").write_text(json.dumps(numbers, indent=2))
    print(f"plot: {plot}")
    return {**numbers, "la": la, "model": model, "test_batch": test_batch,
            "plot": plot, "json": out / "lora.json"}


def _plot(map_probs: Tensor, la_probs: Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = torch.linspace(0.5, 1.0, 21).tolist()
    ax.hist(map_probs.max(-1).values, bins=bins, alpha=0.6, label="MAP")
    ax.hist(la_probs.max(-1).values, bins=bins, alpha=0.6, label="LoRA Laplace")
    ax.set(xlabel="confidence on test sequences", ylabel="count",
           title="Laplace over LoRA adapters only")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1024, help="training sequences")
    parser.add_argument("--n-test", type=int, default=1024, help="test sequences")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=40)
    parser.add_argument("--rank", type=int, default=2, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=4.0, help="LoRA scale α")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/laplace_lora", help="output folder")
    args = parser.parse_args(argv)
    return run(n_train=args.n_train, n_test=args.n_test,
               pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
               rank=args.rank, alpha=args.alpha, seed=args.seed, out=args.out)


if __name__ == "__main__":
    main()
