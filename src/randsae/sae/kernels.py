"""Sparse TopK encoder and decoder with hand-written backward passes.

A TopK SAE step written densely costs about 10·d·m FLOPs per token: five dense d x m products (encoder and
decoder forward, the decoder's two gradients, the encoder's weight gradient). Only the encoder forward
`x @ W_enc` has to be dense; everything after the top-k selection touches k latents per token:

- decoding gathers k rows of `W_dec` per token (`embedding_bag` with per-token weights);
- the decoder's weight gradient and the encoder's weight gradient are sums of n·k rank-one rows, done as
  one sparse [m, n] @ dense [n, d] product;
- the gradient with respect to the k active values is a dot product per (token, latent) pair, done as a
  sampled matrix product on the same sparsity pattern.

No dense [n, m] tensor is built after the encoder's pre-activations. The functions here take plain tensors
so they are easy to test against the dense formulas (tests/test_sae_kernels.py). `pairs_encode` and
`pairs_decode` do the same for a code with any number of active latents per token (BatchTopK, Matryoshka),
given as `CodePairs` in CSR order.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TopKOutput(NamedTuple):
    """The k active latents of each token."""

    values: Tensor
    """[n, k] activations after ReLU (a selected latent may be 0 when fewer than k pre-activations are > 0)."""
    indices: Tensor
    """[n, k] int64 latent ids, ascending within each token."""


def topk_encode(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, selection_dtype: torch.dtype | None = None
) -> TopKOutput:
    """ReLU of the k largest pre-activations `(x - b_dec) @ W_enc + b_enc`.

    x [n, d], W_enc [d, m], b_enc [m], b_dec [d] -> TopKOutput([n, k], [n, k]); differentiable in x, W_enc,
    b_enc and b_dec through `values`. With `selection_dtype` (e.g. bfloat16, fast on CPUs with AMX and on
    GPUs) the dense product that picks the k latents runs in that dtype; the k values are then recomputed
    in the input's dtype, so only near-ties at the k-th place can pick differently.
    """
    values, indices = _TopKEncode.apply(x, W_enc, b_enc, b_dec, k, selection_dtype)
    return TopKOutput(values, indices)


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Σ_j values[n, j] · W_dec[indices[n, j]]: values [n, k], indices [n, k], W_dec [m, d] -> [n, d].

    Differentiable in `values` and `W_dec`; the caller adds `b_dec`.
    """
    return _SparseDecode.apply(values, indices, W_dec)


def scatter_rows(indices: Tensor, weights: Tensor, rows: Tensor, n_latents: int) -> Tensor:
    """out[m] = Σ_{n, j : indices[n, j] = m} weights[n, j] · rows[n]: [n, k], [n, k], [n, d] -> [m, d].

    The gradient of both weight matrices has this form; a sparse [m, n] @ [n, d] product computes it
    without materializing the n·k weighted rows.
    """
    n, k = indices.shape
    tokens = torch.arange(n, device=indices.device).repeat_interleave(k)
    return scatter_pairs(
        CodePairs(tokens, indices.reshape(-1), _fixed_row_starts(n, k, indices.device)),
        weights.reshape(-1),
        rows,
        n_latents,
    )


def gather_dots(indices: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """out[n, j] = <rows[n], columns[:, indices[n, j]]>: [n, k], [n, d], [d, m] -> [n, k].

    The matrix product `rows @ columns` sampled only at the (n, indices[n, j]) pairs.
    """
    n, k = indices.shape
    pairs = CodePairs(indices.new_empty(0), indices.reshape(-1), _fixed_row_starts(n, k, indices.device))
    return gather_pair_dots(pairs, rows, columns).view(n, k)


def _fixed_row_starts(n: int, k: int, device: torch.device) -> Tensor:
    return torch.arange(0, n * k + 1, k, device=device)


class CodePairs(NamedTuple):
    """The (token, latent) positions of a batch's non-zero code, any number per token (BatchTopK, Matryoshka),
    sorted by token and, within a token, by latent: the CSR order the sampled products want."""

    tokens: Tensor
    """int64 [nnz]: the row of the batch."""
    latents: Tensor
    """int64 [nnz]."""
    row_starts: Tensor
    """int64 [n + 1]: pairs of token t are `row_starts[t]:row_starts[t + 1]`."""

    @classmethod
    def from_flat(cls, flat: Tensor, n: int, n_latents: int) -> CodePairs:
        """The pairs at positions `flat` (int64, any order) of a row-major [n, n_latents] matrix."""
        flat = flat.sort().values
        tokens = flat.div(n_latents, rounding_mode="floor")
        counts = torch.bincount(tokens, minlength=n)
        row_starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return cls(tokens, flat - tokens * n_latents, row_starts)

    def select(self, keep: Tensor) -> CodePairs:
        """The pairs where `keep` (bool [nnz]) holds, still in CSR order."""
        counts = torch.bincount(self.tokens[keep], minlength=self.row_starts.numel() - 1)
        return CodePairs(self.tokens[keep], self.latents[keep], torch.cat([counts.new_zeros(1), counts.cumsum(0)]))


def scatter_pairs(pairs: CodePairs, weights: Tensor, rows: Tensor, n_latents: int) -> Tensor:
    """out[m] = Σ_{i : latents[i] = m} weights[i] · rows[tokens[i]]: [nnz], [n, d] -> [m, d], as one sparse
    [m, n] @ dense [n, d] product."""
    selection = torch.sparse_coo_tensor(
        torch.stack([pairs.latents, pairs.tokens]), weights, (n_latents, rows.shape[0]), check_invariants=False
    )
    return torch.sparse.mm(selection, rows)


def gather_pair_dots(pairs: CodePairs, rows: Tensor, columns: Tensor) -> Tensor:
    """out[i] = <rows[token i], columns[:, latents[i]]>: [n, d], [d, m] -> [nnz] (`pairs.tokens` unused)."""
    n = pairs.row_starts.numel() - 1
    nnz = pairs.latents.numel()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            pairs.row_starts, pairs.latents, rows.new_zeros(nnz), (n, columns.shape[1]), check_invariants=False
        )
    return torch.sparse.sampled_addmm(pattern, rows, columns, beta=0.0).values()


def pairs_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pairs: CodePairs) -> Tensor:
    """The pre-activations `(x - b_dec) @ W_enc + b_enc` at `pairs` only: [n, d] ... -> [nnz].

    Differentiable in x, W_enc, b_enc and b_dec with sparse backward products; the caller picks the pairs
    (without gradient) from a dense pre-activation matrix.
    """
    return _PairsEncode.apply(x, W_enc, b_enc, b_dec, pairs)


def pairs_decode(values: Tensor, pairs: CodePairs, W_dec: Tensor) -> Tensor:
    """Σ_i values[i] · W_dec[latents[i]] summed per token: [nnz], [m, d] -> [n, d]; the caller adds b_dec.

    Differentiable in `values` and `W_dec`."""
    return _PairsDecode.apply(values, pairs, W_dec)


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, selection_dtype: torch.dtype | None
    ):
        centred = x - b_dec
        if selection_dtype is None or selection_dtype == x.dtype:
            pre = torch.addmm(b_enc, centred, W_enc)
            values, indices = pre.topk(k, dim=1, sorted=False)
            del pre
            # Latent ids ascending within each token: the CSR pattern in `gather_dots` wants sorted columns.
            indices, order = indices.sort(dim=1)
            values = values.gather(1, order).relu_()
        else:
            pre = torch.addmm(b_enc.to(selection_dtype), centred.to(selection_dtype), W_enc.to(selection_dtype))
            indices = pre.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
            del pre
            values = (gather_dots(indices, centred, W_enc) + b_enc[indices]).relu_()
        ctx.save_for_backward(centred, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices: Tensor | None):
        centred, W_enc, values, indices = ctx.saved_tensors
        grad_pre = grad_values * (values > 0)  # ReLU; unselected latents get no gradient
        n_latents = W_enc.shape[1]
        # d(loss)/d(b_enc)[m]: the summed pre-activation gradient of latent m over the batch.
        per_latent = torch.zeros(n_latents, dtype=grad_pre.dtype, device=grad_pre.device)
        per_latent.index_add_(0, indices.reshape(-1), grad_pre.reshape(-1))
        grad_x = grad_W_enc = grad_b_dec = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, W_enc.T.contiguous(), per_sample_weights=grad_pre, mode="sum")
        if ctx.needs_input_grad[1]:
            grad_W_enc = scatter_rows(indices, grad_pre, centred, n_latents).T
        if ctx.needs_input_grad[3]:
            # Σ_n of the per-token input gradient, without forming it: W_enc @ per_latent.
            grad_b_dec = -(W_enc @ per_latent)
        grad_b_enc = per_latent if ctx.needs_input_grad[2] else None
        return grad_x, grad_W_enc, grad_b_enc, grad_b_dec, None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor):
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_values = gather_dots(indices, grad_out, W_dec.T) if ctx.needs_input_grad[0] else None
        grad_W_dec = scatter_rows(indices, values, grad_out, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_W_dec


class _PairsEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pairs: CodePairs):
        centred = x - b_dec
        ctx.save_for_backward(centred, W_enc, *pairs)
        return gather_pair_dots(pairs, centred, W_enc) + b_enc[pairs.latents]

    @staticmethod
    def backward(ctx, grad_pre: Tensor):
        centred, W_enc, *saved = ctx.saved_tensors
        pairs = CodePairs(*saved)
        n_latents = W_enc.shape[1]
        per_latent = torch.zeros(n_latents, dtype=grad_pre.dtype, device=grad_pre.device)
        per_latent.index_add_(0, pairs.latents, grad_pre)
        grad_x = grad_W_enc = grad_b_dec = None
        if ctx.needs_input_grad[0]:
            grad_x = _bag_sum(grad_pre, pairs, W_enc.T.contiguous())
        if ctx.needs_input_grad[1]:
            grad_W_enc = scatter_pairs(pairs, grad_pre, centred, n_latents).T
        if ctx.needs_input_grad[3]:
            grad_b_dec = -(W_enc @ per_latent)
        grad_b_enc = per_latent if ctx.needs_input_grad[2] else None
        return grad_x, grad_W_enc, grad_b_enc, grad_b_dec, None


class _PairsDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, pairs: CodePairs, W_dec: Tensor):
        ctx.save_for_backward(values, W_dec, *pairs)
        return _bag_sum(values, pairs, W_dec)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, W_dec, *saved = ctx.saved_tensors
        pairs = CodePairs(*saved)
        grad_out = grad_out.contiguous()
        grad_values = gather_pair_dots(pairs, grad_out, W_dec.T) if ctx.needs_input_grad[0] else None
        grad_W_dec = scatter_pairs(pairs, values, grad_out, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_W_dec


def _bag_sum(weights: Tensor, pairs: CodePairs, table: Tensor) -> Tensor:
    """out[t] = Σ_{i of token t} weights[i] · table[latents[i]]: [nnz], [m, d] -> [n, d]."""
    return F.embedding_bag(
        pairs.latents, table, pairs.row_starts, mode="sum", per_sample_weights=weights, include_last_offset=True
    )
