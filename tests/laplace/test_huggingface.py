"""Laplace on a Hugging Face model: dict batches, last-layer ``feature_reduction``, peft LoRA.

A tiny, randomly initialised ``GPT2ForSequenceClassification`` built from a config
(one layer, 2 heads, width 16, vocabulary 50; nothing is downloaded) classifies token
sequences into 3 classes. Batches are dicts ``{"input_ids", "attention_mask", "labels"}``
as a Hugging Face collator yields them; sequences are left-padded (pad id 0), so the
model's own pooling (the logits at the last non-padding token) reads position -1.

* **Last layer** (``subset_of_weights="last_layer"``, ``last_layer_name="hf.score"``,
  ``feature_reduction="pick_last"``): the plain-torch route is the same head as an
  ``nn.Linear`` on the explicitly computed features ``φ = h[:, -1]`` ``(N, 16)`` in a
  ``TensorDataset``. Both must agree to 1e-8 (float64) in the posterior precision, the
  log marginal likelihood, the marglik-tuned prior precision and the predictive.
* **LoRA** (``peft.get_peft_model`` with rank-2 adapters on ``c_attn``;
  ``subset_of_weights="all"`` covers exactly the requires-grad adapter weights): the
  plain-torch route is the same GPT-2 whose ``c_attn`` is wrapped by hand in
  ``base(x) + s·B(A(x))`` with ``nn.Linear`` ``A``, ``B`` holding the same weights.
  Diagonal and Kronecker posteriors agree to 1e-8; the diagonal also equals
  ``diag(Σₙ Jₙᵀ Λₙ Jₙ)`` from ``torch.func.jacrev`` through the peft model.

Each also checks a ``state_dict`` round trip into a fresh ``Laplace`` of the same model.
"""

from __future__ import annotations

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the model is built from a config: nothing to fetch

import pytest  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.func import functional_call, jacrev  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from transformers import GPT2Config, GPT2ForSequenceClassification  # noqa: E402

from laplace import Laplace  # noqa: E402

DT = torch.float64
N, LENGTH, VOCAB, K, RANK, ALPHA = 24, 6, 50, 3, 2, 4.0
TOL = {"rtol": 1e-8, "atol": 1e-10}


class DictModel(nn.Module):
    """``forward(batch)`` on a dict batch: the logits ``(B, K)`` of a HF classifier."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    def forward(self, data: dict[str, Tensor]) -> Tensor:
        return self.hf(input_ids=data["input_ids"],
                       attention_mask=data["attention_mask"]).logits


class HandLoRA(nn.Module):
    """``base(x) + scale · B(A(x))`` with plain ``nn.Linear`` adapters (no peft)."""

    def __init__(self, base: nn.Module, lora_A: Tensor, lora_B: Tensor, scale: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(lora_A.shape[1], lora_A.shape[0], bias=False, dtype=DT)
        self.lora_B = nn.Linear(lora_B.shape[1], lora_B.shape[0], bias=False, dtype=DT)
        with torch.no_grad():
            self.lora_A.weight.copy_(lora_A)
            self.lora_B.weight.copy_(lora_B)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))


def tiny_gpt2() -> GPT2ForSequenceClassification:
    """A 1-layer GPT-2 classifier with random weights, float64, dropout off, eval mode."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=16,
                        num_labels=K, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        attn_implementation="eager")
    return GPT2ForSequenceClassification(config).to(DT).eval()


def dict_data() -> list[dict[str, Tensor]]:
    """``N`` left-padded sequences (1-3 pad tokens in every third) with labels."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (N, LENGTH), generator=g)
    for i in range(0, N, 3):
        ids[i, : 1 + i % 3] = 0
    labels = torch.randint(0, K, (N,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": (ids[i] != 0).long(), "labels": labels[i]}
            for i in range(N)]


def dict_loader() -> DataLoader:
    return DataLoader(dict_data(), batch_size=8)


def full_batch() -> dict[str, Tensor]:
    return next(iter(DataLoader(dict_data(), batch_size=N)))


def dense(la) -> Tensor:
    """``posterior_precision`` as a matrix (dense, Kronecker or diagonal storage)."""
    P = la.posterior_precision
    if hasattr(P, "to_matrix"):
        return P.to_matrix()
    return torch.diag(P) if P.ndim == 1 else P


def fit_tune_predict(la, loader, X) -> dict[str, Tensor]:
    """Fit, the evidence at δ=0.5, 20 marglik steps, then the predictive at ``X``."""
    la.fit(loader)
    out = {"precision": dense(la).clone(),
           "log_marglik": la.log_marginal_likelihood(torch.tensor(0.5, dtype=DT)).detach()}
    with pytest.warns(UserWarning, match="By default `link_approx` is `probit`"):  # as 0.3
        la.optimize_prior_precision(method="marglik", n_steps=20, prior_structure="layerwise")
    out["prior_precision"] = la.prior_precision.detach().clone()
    out["probit"] = la(X, link_approx="probit")
    out["bridge"] = la(X, link_approx="bridge")
    return out


def assert_agree(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOL, msg=lambda m, key=key: f"{key}: {m}")


def assert_round_trip(la, make_la, X) -> None:
    """A fresh ``Laplace`` of the same model loading ``la.state_dict()`` predicts the same."""
    fresh = make_la()
    fresh.load_state_dict(la.state_dict())
    torch.testing.assert_close(fresh(X, link_approx="probit"), la(X, link_approx="probit"),
                               rtol=0, atol=0)
    torch.testing.assert_close(fresh.prior_precision, la.prior_precision, rtol=0, atol=0)


# ----------------------------------------------------------- last layer
def last_token_features(model: DictModel, batch: dict[str, Tensor]) -> Tensor:
    """``φ (B, 16)``: the final hidden state at the last position (left padding)."""
    with torch.no_grad():
        hidden = model.hf.transformer(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"])
    return hidden.last_hidden_state[:, -1]


@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_last_layer_with_feature_reduction_matches_the_head_on_explicit_features(structure):
    model = DictModel(tiny_gpt2())
    X = full_batch()

    def make_la():
        return Laplace(model, "classification", subset_of_weights="last_layer",
                       hessian_structure=structure, last_layer_name="hf.score",
                       feature_reduction="pick_last")

    la = make_la()
    hf = fit_tune_predict(la, dict_loader(), X)
    # The plain route: the same head on the features, as a TensorDataset.
    head = nn.Linear(16, K, bias=False, dtype=DT)
    head.weight.data.copy_(model.hf.score.weight.data)
    phi, y = last_token_features(model, X), X["labels"]
    plain = Laplace(head, "classification", subset_of_weights="last_layer",
                    hessian_structure=structure)
    ref = fit_tune_predict(plain, DataLoader(TensorDataset(phi, y), batch_size=8), phi)
    assert la.n_params == 16 * K and hf["prior_precision"].numel() == 1
    assert_agree(hf, ref)
    # The LA's mean is the model's own output (HF's pooling at the last non-pad token).
    torch.testing.assert_close(la._glm_predictive_distribution(X)[0], model(X).detach())
    assert_round_trip(la, make_la, X)


# ----------------------------------------------------------- LoRA via peft
def peft_and_hand_lora() -> tuple[DictModel, DictModel]:
    """The same GPT-2 with rank-2 adapters on ``c_attn``: through peft, and by hand."""
    base = tiny_gpt2()
    hand = copy.deepcopy(base)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["c_attn"],
                        lora_dropout=0.0, bias="none", fan_in_fan_out=True)
    peft_model = get_peft_model(base, config).eval()
    layer = peft_model.base_model.model.transformer.h[0].attn.c_attn
    with torch.no_grad():  # a "fine-tuned" B (peft starts it at zero)
        layer.lora_B["default"].weight.normal_(generator=torch.Generator().manual_seed(2))
    for p in hand.parameters():
        p.requires_grad_(False)
    attn = hand.transformer.h[0].attn
    attn.c_attn = HandLoRA(attn.c_attn, layer.lora_A["default"].weight.detach(),
                           layer.lora_B["default"].weight.detach(), layer.scaling["default"])
    return DictModel(peft_model), DictModel(hand)


def explicit_ggn_diagonal(model: DictModel, batch: dict[str, Tensor]) -> Tensor:
    """``diag(Σₙ Jₙᵀ (diag pₙ − pₙpₙᵀ) Jₙ)`` over the requires-grad parameters ``(P,)``."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def logits(theta: dict[str, Tensor]) -> Tensor:
        return functional_call(model, theta, (batch,), strict=False)

    jac = jacrev(logits)(params)  # name -> (N, K, *shape)
    J = torch.cat([j.reshape(N, K, -1) for j in jac.values()], dim=-1)  # (N, K, P)
    p = torch.softmax(logits(params), dim=-1).detach()
    Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nkp,nkl,nlp->p", J, Lam, J)


@pytest.mark.parametrize("structure", ["diag", "kron"])
def test_peft_lora_subset_matches_hand_written_lora(structure):
    peft_model, hand = peft_and_hand_lora()
    X = full_batch()
    n_adapter = RANK * 16 + 48 * RANK

    def make_la(model=peft_model):
        return Laplace(model, "classification", subset_of_weights="all",
                       hessian_structure=structure)

    la = make_la()
    result = fit_tune_predict(la, dict_loader(), X)
    ref = fit_tune_predict(make_la(hand), dict_loader(), X)
    assert la.n_params == n_adapter and result["prior_precision"].numel() == 2
    assert_agree(result, ref)
    if structure == "diag":
        la.fit(dict_loader())
        torch.testing.assert_close(la.H, explicit_ggn_diagonal(peft_model, X), **TOL)
    assert_round_trip(la, make_la, X)


def test_a_forward_that_vmap_refuses_is_looped_with_the_same_numbers():
    # The document's "disable grad" example on GPT-2 with its default (SDPA) attention:
    # transformers' mask code branches on tensor values, which vmap refuses; the
    # per-sample Jacobians then loop over the samples and must equal those of the same
    # weights with eager attention, which vmap batches.
    from laplace.curvature import samplewise

    def classifier(attention: str) -> DictModel:
        model = tiny_gpt2()
        model.config._attn_implementation = attention
        for p in model.parameters():
            p.requires_grad = False
        for p in model.score.parameters():
            p.requires_grad = True
        return DictModel(model)

    X = full_batch()
    out = {}
    for attention in ("sdpa", "eager"):
        model = classifier(attention)
        la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="full")
        la.fit(dict_loader())
        out[attention] = (la.H, la(X, link_approx="probit"), la(X, link_approx="mc",
                          n_samples=50, generator=torch.Generator().manual_seed(0)))
        assert (model in samplewise._UNBATCHABLE) == (attention == "sdpa")
    for a, b in zip(out["sdpa"], out["eager"]):
        torch.testing.assert_close(a, b, **TOL)
    assert out["sdpa"][1].shape == (N, K)
