"""The sparse TopK kernels against the plain dense formulas, forward and every gradient."""

import pytest
import torch

from randsae.sae.kernels import (
    CodePairs,
    gather_dots,
    pairs_decode,
    pairs_encode,
    scatter_rows,
    sparse_decode,
    topk_encode,
)

N, D, M, K = 37, 12, 50, 5


def dense_topk_sae(x, W_enc, b_enc, b_dec, W_dec, k):
    """Reference: the whole [n, m] latent matrix, masked to each token's top k, decoded densely."""
    pre = (x - b_dec) @ W_enc + b_enc
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.topk(k, dim=1).indices, True)
    z = torch.where(keep, pre.relu(), torch.zeros_like(pre))
    return z, z @ W_dec + b_dec


def random_params(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    return make(N, D), make(D, M), make(M), make(D), make(M, D)


def test_topk_encode_matches_dense_latents():
    x, W_enc, b_enc, b_dec, W_dec = random_params(0)
    b_enc = b_enc.detach() - 7  # some selected pre-activations negative: ReLU must zero them
    top = topk_encode(x, W_enc, b_enc, b_dec, K)
    z_ref, _ = dense_topk_sae(x, W_enc, b_enc, b_dec, W_dec, K)
    z = torch.zeros(N, M, dtype=x.dtype).scatter(1, top.indices, top.values)
    assert torch.allclose(z, z_ref)
    assert (top.indices.diff(dim=1) > 0).all(), "indices ascend within each token"
    assert (top.values >= 0).all() and (top.values == 0).any(), "ReLU applied after the top-k"


@pytest.mark.parametrize("with_input_grad", [False, True])
def test_all_gradients_match_dense_reference(with_input_grad):
    x, W_enc, b_enc, b_dec, W_dec = random_params(1)
    x.requires_grad_(with_input_grad)
    target = torch.randn(N, D, dtype=x.dtype, generator=torch.Generator().manual_seed(2))

    top = topk_encode(x, W_enc, b_enc, b_dec, K)
    recon = sparse_decode(top.values, top.indices, W_dec) + b_dec
    ((recon - target).pow(2) * torch.linspace(0.5, 2, D, dtype=x.dtype)).sum().backward()
    named = dict(zip(["x", "W_enc", "b_enc", "b_dec", "W_dec"], (x, W_enc, b_enc, b_dec, W_dec), strict=True))
    fast = {name: p.grad.clone() for name, p in named.items() if p.grad is not None}
    for p in (x, W_enc, b_enc, b_dec, W_dec):
        p.grad = None

    _, recon_ref = dense_topk_sae(x, W_enc, b_enc, b_dec, W_dec, K)
    ((recon_ref - target).pow(2) * torch.linspace(0.5, 2, D, dtype=x.dtype)).sum().backward()
    assert torch.allclose(recon, recon_ref)
    expected = {"W_enc", "b_enc", "b_dec", "W_dec"} | ({"x"} if with_input_grad else set())
    assert set(fast) == expected
    for name, p in named.items():
        if name in fast:
            assert torch.allclose(fast[name], p.grad), name


def test_scatter_rows_and_gather_dots_match_dense():
    g = torch.Generator().manual_seed(3)
    indices = torch.rand(N, M, generator=g).topk(K, dim=1).indices.sort(dim=1).values
    weights, rows = torch.randn(N, K, generator=g), torch.randn(N, D, generator=g)
    table = torch.randn(M, D, generator=g)
    dense_weights = torch.zeros(N, M).scatter(1, indices, weights)
    assert torch.allclose(scatter_rows(indices, weights, rows, M), dense_weights.T @ rows, atol=1e-5)
    assert torch.allclose(gather_dots(indices, rows, table.T), (rows @ table.T).gather(1, indices), atol=1e-5)


def test_kernels_are_deterministic():
    params = random_params(4, torch.float32)
    grads = []
    for _ in range(2):
        for p in params:
            p.grad = None
        x, W_enc, b_enc, b_dec, W_dec = params
        top = topk_encode(x, W_enc, b_enc, b_dec, K)
        sparse_decode(top.values, top.indices, W_dec).square().sum().backward()
        grads.append([p.grad.clone() for p in params[1:]])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_low_precision_selection_keeps_exact_values_and_gradients():
    """bf16 only picks the latents: values and gradients are the float32 ones for the latents picked."""
    x, W_enc, b_enc, b_dec, W_dec = (p.float().detach().requires_grad_() for p in random_params(6))
    top = topk_encode(x, W_enc, b_enc, b_dec, K, selection_dtype=torch.bfloat16)
    exact = topk_encode(x, W_enc, b_enc, b_dec, K)
    pre = (x - b_dec) @ W_enc + b_enc
    assert torch.allclose(top.values, pre.gather(1, top.indices).relu(), atol=1e-5)
    assert (top.indices.diff(dim=1) > 0).all()
    same = (top.indices[:, :, None] == exact.indices[:, None, :]).any(-1).float().mean()
    assert same > 0.9, "bf16 changes the pick only near ties at the k-th place"

    sparse_decode(top.values, top.indices, W_dec).square().sum().backward()
    fast = [p.grad.clone() for p in (W_enc, b_enc, b_dec, W_dec)]
    for p in (W_enc, b_enc, b_dec, W_dec):
        p.grad = None
    keep = torch.zeros(N, M, dtype=torch.bool).scatter(1, top.indices, True)
    z = torch.where(keep, ((x - b_dec) @ W_enc + b_enc).relu(), 0.0)
    (z @ W_dec).square().sum().backward()
    for name, a, p in zip(["W_enc", "b_enc", "b_dec", "W_dec"], fast, (W_enc, b_enc, b_dec, W_dec), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-3, rtol=1e-4), name


def test_pair_kernels_match_dense_for_any_count_per_token():
    """`pairs_encode` / `pairs_decode` on an irregular pattern (some tokens with no pair) against the dense
    masked formulas: values, reconstruction and every gradient, the input's included."""
    x, W_enc, b_enc, b_dec, W_dec = random_params(3)
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(N, M, generator=g) < 0.15
    mask[::5] = False
    pairs = CodePairs.from_flat(mask.flatten().nonzero().squeeze(1), N, M)
    assert torch.equal(pairs.row_starts.diff(), mask.sum(1)) and bool((pairs.tokens.diff() >= 0).all())
    target = torch.randn(N, D, generator=g, dtype=x.dtype)

    pre = pairs_encode(x, W_enc, b_enc, b_dec, pairs)
    recon = pairs_decode(pre.relu(), pairs, W_dec) + b_dec
    (recon - target).pow(2).sum().backward()
    params = (x, W_enc, b_enc, b_dec, W_dec)
    fast = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    dense_pre = (x - b_dec) @ W_enc + b_enc
    z = torch.where(mask, dense_pre.relu(), torch.zeros_like(dense_pre))
    recon_ref = z @ W_dec + b_dec
    (recon_ref - target).pow(2).sum().backward()
    assert torch.allclose(pre, dense_pre[mask]) and torch.allclose(recon, recon_ref)
    for name, got, p in zip(("x", "W_enc", "b_enc", "b_dec", "W_dec"), fast, params, strict=True):
        assert torch.allclose(got, p.grad), name
