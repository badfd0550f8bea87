"""Laplace on LoRA adapters only: a tiny GPT-2 fine-tuned with peft, dict batches.

The laplace-torch docs show Laplace on a Hugging Face LLM fine-tuned with LoRA: the
approximation covers exactly the parameters with ``requires_grad=True``. This script
follows that recipe with ``transformers`` and ``peft`` (the ``hf`` extra:
``pip install "lapbo[hf]"``), on a GPT-2 small enough for a CPU and built from a
config, so nothing is downloaded:

1. **Data.** Random token sequences (length 8, vocabulary 12) served by a ``DataLoader``
   whose batches are dicts ``{"input_ids": (B, 8), "attention_mask": (B, 8),
   "labels": (B,)}``, as a Hugging Face tokenizer/collator yields them.
2. **Pretraining.** ``GPT2ForSequenceClassification`` from ``GPT2Config(n_layer=1,
   n_head=2, n_embd=16, n_inner=32)`` (random initialisation; it pools the logits at the
   last token), wrapped so that ``forward`` takes the dict, is trained on task A:
   "does token 0 occur?".
3. **LoRA.** ``peft.get_peft_model`` with ``LoraConfig(r, lora_alpha, target_modules=
   ["c_attn", "c_proj", "c_fc"])`` adds low-rank adapters ``W + (α/r)·B A`` to the
   attention's packed q/k/v projection, its output projection and the two feed-forward
   layers, and freezes every pretrained weight; only the ``lora_A``/``lora_B`` matrices
   are trainable. They are fine-tuned on task B: "are there more 1s than 2s?".
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
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is built from a config

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from transformers import GPT2Config, GPT2ForSequenceClassification  # noqa: E402

from laplace import Laplace  # noqa: E402

VOCAB, LENGTH, D_MODEL = 12, 8, 16
PAD = VOCAB  # a pad id that the data never uses: HF pools at the last non-pad token
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]


class TokenDataset(Dataset):
    """Sequences and labels served as ``{"input_ids": (LENGTH,), "attention_mask":
    (LENGTH,), "labels": ()}`` items."""

    def __init__(self, input_ids: Tensor, labels: Tensor) -> None:
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids[i],
                "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.labels[i]}


def make_task(n: int, task: str, generator: torch.Generator) -> TokenDataset:
    """``task`` ``"A"``: label 1 if token 0 occurs; ``"B"``: if 1s outnumber 2s."""
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    if task == "A":
        labels = (ids == 0).any(1)
    else:
        labels = (ids == 1).sum(1) > (ids == 2).sum(1)
    return TokenDataset(ids, labels.long())


class DictGPT2(nn.Module):
    """A Hugging Face sequence classifier whose ``forward`` takes the dict batch."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf_model = hf_model

    def forward(self, data: Mapping[str, Tensor]) -> Tensor:
        device = next(self.parameters()).device
        return self.hf_model(input_ids=data["input_ids"].to(device),
                             attention_mask=data["attention_mask"].to(device)).logits


def tiny_gpt2(n_classes: int = 2) -> GPT2ForSequenceClassification:
    """A one-layer GPT-2 classifier with random weights (no download), dropout off."""
    config = GPT2Config(vocab_size=VOCAB + 1, n_positions=LENGTH, n_embd=D_MODEL, n_layer=1,
                        n_head=2, n_inner=32, num_labels=n_classes, pad_token_id=PAD,
                        bos_token_id=PAD, eos_token_id=PAD, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    return GPT2ForSequenceClassification(config)


def add_lora(model: DictGPT2, rank: int, alpha: float) -> DictGPT2:
    """peft LoRA adapters on ``LORA_TARGETS``; every pretrained weight is frozen."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS,
                        lora_dropout=0.0, bias="none",
                        fan_in_fan_out=True)  # GPT-2 stores its projections as Conv1D
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing`",
                                category=FutureWarning)
        return DictGPT2(get_peft_model(model.hf_model, config))


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
    model = DictGPT2(tiny_gpt2())
    pretrain = DataLoader(make_task(n_train, "A", g), batch_size=64, shuffle=True)
    train(model, pretrain, pretrain_epochs, lr=1e-2)
    n_total = sum(p.numel() for p in model.parameters())

    # 3. Freeze, add LoRA adapters, fine-tune them on task B.
    model = add_lora(model, rank, alpha)
    adapted = sorted({n.split(".lora_")[0].removeprefix("hf_model.base_model.model.")
                      for n, p in model.named_parameters() if p.requires_grad})
    n_adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_set, test_set = make_task(n_train, "B", g), make_task(n_test, "B", g)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    train(model, loader, finetune_epochs, lr=1e-2)
    test_batch = next(iter(DataLoader(test_set, batch_size=n_test)))  # one dict batch
    with torch.no_grad():
        map_probs = torch.softmax(model(test_batch), dim=-1)
    print(f"pretrained weights: {n_total} (frozen); LoRA rank {rank} on {', '.join(adapted)}")

    # 4. Laplace over the trainable (adapter) parameters only.
    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="diag")
    la.fit(loader)
    with warnings.catch_warnings():
        # laplace-torch's reminder that tuning assumes the probit predictive: used below.
        warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
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
