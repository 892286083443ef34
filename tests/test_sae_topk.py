"""TopK SAE: dense encode, loss, AuxK and decoder-row handling against hand-written formulas."""

import pytest
import torch

from randsae.errors import UserError
from randsae.sae import SAEConfig, TopKSAE, build_sae
from randsae.sae.base import SparseAutoencoder

D, M, K, N = 10, 40, 4, 64


@pytest.fixture
def sae():
    model = build_sae(SAEConfig("topk", D, M, k=K), seed=0)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.3)
        model.b_dec.normal_(0, 0.3)
    return model


@pytest.fixture
def x():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(1)) + 2.0


def dense_latents(sae, x):
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = pre.topk(sae.cfg.k, dim=1)
    return torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())


def test_initialization_unit_rows_and_tied_encoder():
    model = build_sae(SAEConfig("topk", D, M, k=K), seed=3)
    assert torch.allclose(model.W_dec.norm(dim=1), torch.ones(M))
    assert torch.allclose(model.W_enc, model.W_dec.T * 0.3)
    assert torch.equal(model.W_dec, build_sae(SAEConfig("topk", D, M, k=K), seed=3).W_dec)
    assert not torch.equal(model.W_dec, build_sae(SAEConfig("topk", D, M, k=K), seed=4).W_dec)


def test_default_encoder_init_norm_is_the_reference_trainers():
    """Gao et al.'s code and sparsify draw the encoder as torch's default Linear init: its rows' mean norm."""
    torch.manual_seed(0)
    reference = torch.nn.Linear(512, 4096).weight.norm(dim=1).mean().item()
    assert reference == pytest.approx(SparseAutoencoder.encoder_init_norm, rel=1e-3)
    gated = build_sae(SAEConfig("gated", D, M, l1_coefficient=1.0), seed=3)
    assert torch.allclose(gated.W_enc.norm(dim=0), torch.full((M,), reference), rtol=1e-3)


def test_encode_forward_and_decode_agree_with_dense_formulas(sae, x):
    z = sae.encode(x)
    assert torch.allclose(z, dense_latents(sae, x), atol=1e-6)
    assert ((z > 0).sum(dim=1) <= K).all() and (z > 0).sum(dim=1).max() == K
    assert torch.allclose(sae(x), z @ sae.W_dec + sae.b_dec, atol=1e-5)
    assert torch.allclose(sae.decode(z), z @ sae.W_dec + sae.b_dec)


def test_encode_sparse_is_the_nonzero_part_of_encode_and_the_forward(sae, x):
    with torch.no_grad():
        sae.b_enc[:] = -3.0  # some tokens get fewer than k positive pre-activations: their zeros are dropped
        z = sae.encode(x)
        latents, reconstruction = sae.encode_sparse(x)
    assert (latents.values != 0).all() and latents.values.numel() == (z != 0).sum() < N * K
    assert torch.equal(latents.rows, z.nonzero()[:, 0]) and torch.equal(latents.latents, z.nonzero()[:, 1])
    assert torch.equal(latents.values, z[latents.rows, latents.latents])
    torch.testing.assert_close(reconstruction, sae(x))


def test_loss_is_batch_fvu_and_fired_mask(sae, x):
    out = sae.loss(x)
    z = dense_latents(sae, x)
    recon = z @ sae.W_dec + sae.b_dec
    fvu = ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert torch.allclose(out.loss, fvu, rtol=1e-5) and torch.allclose(out.fvu, fvu, rtol=1e-5)
    assert torch.equal(out.fired, (z > 0).any(dim=0))
    assert out.aux_loss is None
    assert out.loss.requires_grad and not out.fvu.requires_grad


def test_auxk_loss_matches_reference_and_only_trains_dead_latents(sae, x):
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::3] = True
    out = sae.loss(x, dead)
    z = dense_latents(sae, x)
    residual = x - (z @ sae.W_dec + sae.b_dec)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    pre_dead = torch.where(dead, pre, torch.tensor(-torch.inf))
    k_aux = min(D // 2, int(dead.sum()))
    top = pre_dead.topk(k_aux, dim=1)
    z_aux = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    expected = ((z_aux @ sae.W_dec - residual) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert torch.allclose(out.aux_loss, expected, rtol=1e-5)

    sae.zero_grad()
    out.aux_loss.backward()
    assert sae.W_enc.grad[:, ~dead].abs().max() == 0 and sae.W_enc.grad[:, dead].abs().max() > 0
    assert sae.W_dec.grad[~dead].abs().max() == 0
    assert sae.loss(x, torch.zeros(M, dtype=torch.bool)).aux_loss is None


def test_parallel_gradient_removal_and_renormalization(sae):
    grad = torch.randn(M, D, generator=torch.Generator().manual_seed(5))
    sae.W_dec.grad = grad.clone()
    sae.remove_parallel_decoder_grad()
    w = sae.W_dec.detach()
    expected = grad - (grad * w).sum(1, keepdim=True) * w
    assert torch.allclose(sae.W_dec.grad, expected, atol=1e-6)
    assert (sae.W_dec.grad * w).sum(1).abs().max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.1, 5, M)[:, None])
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(M))


@pytest.mark.parametrize("k", [None, 0, M + 1])
def test_bad_k_is_a_user_error(k):
    with pytest.raises(UserError, match="k"):
        TopKSAE(SAEConfig("topk", D, M, k=k))


def test_training_gradients_after_projection_match_a_dense_reference(sae, x):
    """The sparse fast path's gradients for the whole loss, then projected, equal plain dense autograd."""
    sae.loss(x).loss.backward()
    sae.remove_parallel_decoder_grad()
    fast = {name: p.grad.clone() for name, p in sae.named_parameters()}

    params = {name: p.detach().clone().requires_grad_() for name, p in sae.named_parameters()}
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.topk(K, dim=1).indices, True)
    recon = torch.where(keep, pre.relu(), 0.0) @ params["W_dec"] + params["b_dec"]
    (((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()).backward()
    w, g = params["W_dec"].detach(), params["W_dec"].grad
    params["W_dec"].grad = g - (g * w).sum(1, keepdim=True) * w
    for name, p in params.items():
        assert torch.allclose(fast[name], p.grad, atol=1e-6, rtol=1e-4), name
