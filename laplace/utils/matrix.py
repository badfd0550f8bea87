"""Kronecker-factored matrices: ``Kron`` (raw factors) and ``KronDecomposed``.

A Kronecker-factored curvature is block-diagonal over parameter tensors. Each block is
``kron(B, A)`` for a weight of shape ``(out, in[, kh, kw])`` (``B``: ``out×out``, ``A``:
``(in·kh·kw)×(in·kh·kw)``, acting on the row-major flattened weight), or a single
dense factor ``F`` for any other parameter tensor (biases: ``out×out``).

Any factor may also be diagonal, given as a vector ``(d,)`` that stands for
``diag(d)`` (as in laplace-torch).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from laplace.utils.errors import NotPositiveDefiniteError, not_pd_message


class Kron:
    """Raw Kronecker factors, one list ``[B, A]`` or ``[F]`` per parameter tensor.

    Args:
        kfacs: the factors; sums of ``Kron`` objects add factor-wise (the
            laplace-torch convention for accumulating batches).
    """

    def __init__(self, kfacs: list[list[Tensor]]) -> None:
        for i, F in enumerate(kfacs):
            if not 1 <= len(F) <= 2 or any(
                not isinstance(f, Tensor) or not (f.ndim == 1 or (f.ndim == 2
                                                               and f.shape[0] == f.shape[1]))
                for f in F
            ):
                raise ValueError(f"Kronecker factors of parameter tensor {i} must be one or two "
                                 "square matrices (or vectors: diagonal factors).")
        self.kfacs = kfacs

    @classmethod
    def init_from_model(
        cls, model: nn.Module | Sequence[Tensor], device: torch.device, dtype: torch.dtype
    ) -> Kron:
        """Zero factors shaped for the trainable parameters of ``model``."""
        params = model.parameters() if isinstance(model, nn.Module) else model
        kfacs = []
        for p in params:
            if isinstance(model, nn.Module) and not p.requires_grad:
                continue
            kfacs.append([torch.zeros(s, s, device=device, dtype=dtype) for s in factor_sizes(p)])
        return cls(kfacs)

    def __add__(self, other: Kron) -> Kron:
        if not isinstance(other, Kron):
            raise ValueError("Can only add Kron to Kron.")
        shapes = [[tuple(f.shape) for f in F] for F in self.kfacs]
        if shapes != [[tuple(f.shape) for f in F] for F in other.kfacs]:
            raise ValueError("Can only add Kron objects with the same blocks and factor "
                             f"shapes; got {len(self.kfacs)} and {len(other.kfacs)} blocks.")
        return Kron([[a + b for a, b in zip(F, G)] for F, G in zip(self.kfacs, other.kfacs)])

    def __mul__(self, scalar: float | Tensor) -> Kron:
        """Scale the blocks by ``scalar`` (each of ``k`` factors by ``scalar^(1/k)``)."""
        _check_scale(scalar)
        return Kron([[f * scalar ** (1 / len(F)) for f in F] for F in self.kfacs])

    __rmul__ = __mul__

    def __len__(self) -> int:
        return len(self.kfacs)

    def decompose(self, damping: bool = False) -> KronDecomposed:
        """Eigendecompose each factor (eigenvalues clamped at zero)."""
        eigvals, eigvecs = [], []
        for F in self.kfacs:
            ls, Qs = [], []
            for f in F:
                if not bool(torch.isfinite(f).all()):
                    raise NotPositiveDefiniteError(
                        not_pd_message("Kronecker", " (a curvature factor is not finite)")
                    )
                if f.ndim == 1:  # diagonal factor: its own eigenvalues, basis I
                    lam, Q = f, torch.eye(len(f), device=f.device, dtype=f.dtype)
                else:
                    lam, Q = torch.linalg.eigh(f)
                ls.append(lam.clamp(min=0.0))
                Qs.append(Q)
            eigvals.append(ls)
            eigvecs.append(Qs)
        return KronDecomposed(eigvecs, eigvals, damping=damping)

    def to_matrix(self) -> Tensor:
        """Dense block-diagonal matrix ``(P, P)``."""
        return torch.block_diag(*[_kron_all([_dense(f) for f in F]) for F in self.kfacs])

    def diag(self) -> Tensor:
        """Diagonal ``(P,)``."""
        return torch.cat([_kron_all([_diagonal(f) for f in F], vec=True) for F in self.kfacs])

    def logdet(self) -> Tensor:
        return self.decompose().logdet()

    def bmm(self, W: Tensor, exponent: float = 1) -> Tensor:
        """``M^exponent W`` for ``W`` ``(P,)``, ``(n, P)`` or ``(n, K, P)``: directly from
        the factors for ``exponent=1``, through ``decompose`` otherwise."""
        if exponent != 1:
            return self.decompose().bmm(W, exponent)
        _check_width(W, sum(_numel(F) for F in self.kfacs))
        outs, start = [], 0
        for F in self.kfacs:
            sizes = [len(f) for f in F]
            size = sizes[0] * (sizes[1] if len(F) == 2 else 1)
            Wi = W[..., start : start + size]
            start += size
            if len(F) == 1:
                outs.append(_left(F[0], Wi.unsqueeze(-1)).squeeze(-1))
                continue
            Wm = Wi.reshape(*Wi.shape[:-1], *sizes)
            outs.append(_left(F[1], _left(F[0], Wm).transpose(-1, -2)).transpose(-1, -2)
                        .flatten(start_dim=-2))
        return torch.cat(outs, dim=-1)

    def state(self) -> list[list[Tensor]]:
        return self.kfacs


def _numel(F: list[Tensor]) -> int:
    """Parameters of one block: the product of its factors' sizes."""
    n = 1
    for f in F:
        n *= len(f)
    return n


def _check_width(W: Tensor, P: int) -> None:
    if W.shape[-1] != P:
        raise ValueError(f"W must have the {P} parameters in its last dimension, got shape "
                         f"{tuple(W.shape)}.")


def _check_scale(scalar: object) -> None:
    """A non-negative scalar (each factor is scaled by a root of it)."""
    valid = isinstance(scalar, numbers.Real) and not isinstance(scalar, bool) or (
        isinstance(scalar, Tensor) and scalar.numel() == 1 and scalar.ndim <= 1)
    if not valid or float(torch.as_tensor(scalar).detach()) < 0:
        raise ValueError(f"A Kronecker matrix can only be scaled by a non-negative scalar, "
                         f"not {scalar!r}.")


def factor_sizes(p: Tensor) -> list[int]:
    """Factor sizes of a parameter: ``[out, in·kh·kw]`` for weights, ``[numel]`` else."""
    if p.ndim >= 2:
        return [p.shape[0], p[0].numel()]
    return [p.numel()]


def _dense(f: Tensor) -> Tensor:
    """A factor as a matrix: a diagonal factor ``(d,)`` becomes ``diag(d)``."""
    return torch.diag(f) if f.ndim == 1 else f


def _diagonal(f: Tensor) -> Tensor:
    """The diagonal ``(d,)`` of a dense or diagonal factor."""
    return f if f.ndim == 1 else f.diagonal()


def _left(f: Tensor, M: Tensor) -> Tensor:
    """``f @ M`` over the second-to-last axis of ``M`` for a dense or diagonal ``f``."""
    return f.unsqueeze(-1) * M if f.ndim == 1 else f @ M


def _kron_all(factors: Sequence[Tensor], vec: bool = False) -> Tensor:
    out = factors[0]
    for f in factors[1:]:  # torch.kron fails on some mixes of memory layouts
        out = torch.outer(out, f).flatten() if vec else torch.kron(out.contiguous(),
                                                                   f.contiguous())
    return out


class KronDecomposed:
    """Eigendecomposed Kronecker factors plus a per-block diagonal shift ``deltas``.

    Block ``i`` is ``kron(Q₁,Q₂) diag(λ₁⊗λ₂ + δᵢ) kron(Q₁,Q₂)ᵀ``; with ``damping=True``
    it is ``kron(Q₁,Q₂) diag((λ₁+√δᵢ)⊗(λ₂+√δᵢ)) kron(Q₁,Q₂)ᵀ`` instead.

    Args:
        eigenvectors, eigenvalues: per block, one entry per factor.
        deltas: ``(n_blocks,)`` shifts (the prior precision), or ``None`` for zero.
        damping: shift each factor by ``√δ`` instead of the product by ``δ``.
    """

    def __init__(
        self,
        eigenvectors: list[list[Tensor]],
        eigenvalues: list[list[Tensor]],
        deltas: Tensor | None = None,
        damping: bool = False,
    ) -> None:
        self.eigenvectors = eigenvectors
        self.eigenvalues = eigenvalues
        ref = eigenvalues[0][0]
        self.deltas = (
            torch.zeros(len(eigenvalues), device=ref.device, dtype=ref.dtype)
            if deltas is None
            else deltas
        )
        self.damping = damping

    def __add__(self, deltas: Tensor) -> KronDecomposed:
        """Add a scalar or per-block diagonal shift (one per block)."""
        deltas = torch.as_tensor(deltas, device=self.deltas.device, dtype=self.deltas.dtype)
        if deltas.numel() not in (1, len(self.deltas)) or deltas.ndim > 1:
            raise ValueError(f"Invalid shape of delta: {tuple(deltas.shape)}; a scalar or one "
                             f"per Kronecker block ({len(self.deltas)},) is expected.")
        return KronDecomposed(
            self.eigenvectors, self.eigenvalues, self.deltas + deltas, self.damping
        )

    def __mul__(self, scalar: float | Tensor) -> KronDecomposed:
        """Scale the curvature part (each of ``k`` factors by ``scalar^(1/k)``)."""
        _check_scale(scalar)
        eigvals = [[lam * scalar ** (1 / len(ls)) for lam in ls] for ls in self.eigenvalues]
        return KronDecomposed(self.eigenvectors, eigvals, self.deltas, self.damping)

    __rmul__ = __mul__

    def __len__(self) -> int:
        return len(self.eigenvalues)

    def detach(self) -> KronDecomposed:
        """Detach every tensor (eigenvectors, eigenvalues, shifts) from the autograd
        graph, in place, and return ``self`` (as laplace-torch's ``detach``)."""
        self.eigenvectors = [[Q.detach() for Q in Qs] for Qs in self.eigenvectors]
        self.eigenvalues = [[lam.detach() for lam in ls] for ls in self.eigenvalues]
        self.deltas = self.deltas.detach()
        return self

    # -------------------------------------------------------------- block spectra
    def block_eigenvalues(self, i: int) -> Tensor:
        """Eigenvalues of block ``i`` shaped like the (reshaped) parameter."""
        ls, delta = self.eigenvalues[i], self.deltas[i]
        if len(ls) == 1:
            return ls[0] + delta
        l1, l2 = ls
        if self.damping:
            root = delta.sqrt()
            return torch.outer(l1 + root, l2 + root)
        return torch.outer(l1, l2) + delta

    def _block_sizes(self) -> list[int]:
        return [int(torch.tensor([q.shape[0] for q in Qs]).prod()) for Qs in self.eigenvectors]

    def logdet(self) -> Tensor:
        """``log det`` of the whole matrix."""
        return sum(self.block_eigenvalues(i).log().sum() for i in range(len(self)))

    def _apply(self, W: Tensor, power: float) -> Tensor:
        """``M^power W`` for ``W`` of shape ``(..., P)``."""
        _check_width(W, sum(self._block_sizes()))
        outs, start = [], 0
        for i, size in enumerate(self._block_sizes()):
            Wi = W[..., start : start + size]
            start += size
            outs.append(self._apply_block(i, Wi, power))
        return torch.cat(outs, dim=-1)

    def _to_eigenbasis(self, i: int, Wi: Tensor) -> Tensor:
        Qs = self.eigenvectors[i]
        if len(Qs) == 1:
            return Wi @ Qs[0]
        Q1, Q2 = Qs
        Wm = Wi.reshape(*Wi.shape[:-1], Q1.shape[0], Q2.shape[0])
        return (Q1.T @ Wm @ Q2).flatten(start_dim=-2)

    def _from_eigenbasis(self, i: int, Vi: Tensor) -> Tensor:
        Qs = self.eigenvectors[i]
        if len(Qs) == 1:
            return Vi @ Qs[0].T
        Q1, Q2 = Qs
        Vm = Vi.reshape(*Vi.shape[:-1], Q1.shape[0], Q2.shape[0])
        return (Q1 @ Vm @ Q2.T).flatten(start_dim=-2)

    def _apply_block(self, i: int, Wi: Tensor, power: float) -> Tensor:
        lam = self.block_eigenvalues(i).flatten()
        return self._from_eigenbasis(i, self._to_eigenbasis(i, Wi) * lam.pow(power))

    def bmm(self, W: Tensor, exponent: float = -1) -> Tensor:
        """``M^exponent`` applied to ``W`` of shape ``(P,)``, ``(n, P)`` or ``(n, K, P)``."""
        return self._apply(W, exponent)

    def inv_square_form(self, W: Tensor) -> Tensor:
        """``W M⁻¹ Wᵀ`` for ``W`` ``(n, K, P)``: ``(n, K, K)``."""
        whitened = self.whiten(W)
        return whitened @ whitened.transpose(-1, -2)

    def whiten(self, W: Tensor) -> Tensor:
        """``W`` in the eigenbasis scaled by ``λ^{-1/2}``, so ``W M⁻¹ Wᵀ = VVᵀ``."""
        _check_width(W, sum(self._block_sizes()))
        outs, start = [], 0
        for i, size in enumerate(self._block_sizes()):
            Vi = self._to_eigenbasis(i, W[..., start : start + size])
            start += size
            outs.append(Vi * self.block_eigenvalues(i).flatten().rsqrt())
        return torch.cat(outs, dim=-1)

    def diag(self, exponent: float = 1) -> Tensor:
        """Diagonal of ``M^exponent``: ``(P,)``."""
        outs = []
        for i in range(len(self)):
            lam = self.block_eigenvalues(i).pow(exponent)
            Qs = self.eigenvectors[i]
            if len(Qs) == 1:
                outs.append((Qs[0].square() * lam).sum(-1))
            else:
                Q1, Q2 = Qs
                outs.append((Q1.square() @ lam @ Q2.square().T).flatten())
        return torch.cat(outs)

    def to_matrix(self, exponent: float = 1) -> Tensor:
        """Dense ``M^exponent`` ``(P, P)``."""
        blocks = []
        for i in range(len(self)):
            lam = self.block_eigenvalues(i).flatten().pow(exponent)
            Q = _kron_all(self.eigenvectors[i])
            blocks.append((Q * lam) @ Q.T)
        return torch.block_diag(*blocks)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``M^{-1/2} ε`` for ``ε ~ N(0, I)``: ``(n_samples, P)``."""
        P = sum(self._block_sizes())
        ref = self.deltas
        eps = torch.randn(n_samples, P, device=ref.device, dtype=ref.dtype, generator=generator)
        outs, start = [], 0
        for i, size in enumerate(self._block_sizes()):
            scaled = eps[:, start : start + size] * self.block_eigenvalues(i).flatten().rsqrt()
            start += size
            outs.append(self._from_eigenbasis(i, scaled))
        return torch.cat(outs, dim=-1)

from laplace.utils.reexports import reexports  # noqa: E402

__getattr__ = reexports(__name__, ("kron", "block_diag", "symeig"))
