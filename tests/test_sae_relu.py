"""The ReLU-L1 SAE against a numpy reference of its formulas and gradients, its SAELens round trip and one
training run."""

import numpy as np
import pytest
import torch

from randsae.errors import UserError
from randsae.sae.base import SAEConfig, load_sae
from randsae.sae.relu import ReluSAE


def make_sae(d_in=6, d_sae=10, l1=0.3, seed=0):
    sae = ReluSAE(SAEConfig("relu_l1", d_in, d_sae, l1_coefficient=l1), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # non-zero biases, so the test sees where each one enters
        sae.b_enc.copy_(torch.linspace(-0.5, 0.5, d_sae))
        sae.b_dec.copy_(torch.linspace(0.2, -0.3, d_in))
    return sae


def numpy_reference(sae, x):
    W_enc, b_enc, W_dec, b_dec = (p.detach().double().numpy() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    x = x.double().numpy()
    z = np.maximum((x - b_dec) @ W_enc + b_enc, 0.0)
    x_hat = z @ W_dec + b_dec
    mse = np.mean((x_hat - x) ** 2)
    loss = mse + sae.cfg.l1_coefficient * np.mean(np.abs(z))
    fvu = np.sum((x_hat - x) ** 2) / np.sum((x - x.mean(axis=0)) ** 2)
    return z, x_hat, loss, fvu


def test_encode_decode_and_loss_match_numpy():
    sae = make_sae()
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    z, x_hat, loss, fvu = numpy_reference(sae, x)
    assert (z > 0).any() and (z == 0).any()  # the ReLU is doing something on this batch
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sae(x).detach().numpy(), x_hat, rtol=1e-5, atol=1e-6)
    out = sae.loss(x)
    assert out.loss.item() == pytest.approx(loss, rel=1e-5)
    assert out.fvu.item() == pytest.approx(fvu, rel=1e-5)
    np.testing.assert_array_equal(out.fired.numpy(), (z > 0).any(axis=0))


def numpy_gradients(sae, x):
    """The loss's gradients written out in closed form (numpy, float64), chain rule by hand."""
    W_enc, b_enc, W_dec, b_dec = (p.detach().double().numpy() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    x = x.double().numpy()
    (n, d), m = x.shape, W_enc.shape[1]
    pre = (x - b_dec) @ W_enc + b_enc
    z = np.maximum(pre, 0.0)
    d_error = 2 * (z @ W_dec + b_dec - x) / (n * d)
    d_pre = (d_error @ W_dec.T + sae.cfg.l1_coefficient / (n * m)) * (pre > 0)
    return {
        "W_enc": (x - b_dec).T @ d_pre,
        "b_enc": d_pre.sum(axis=0),
        "W_dec": z.T @ d_error,
        "b_dec": d_error.sum(axis=0) - d_pre.sum(axis=0) @ W_enc.T,
    }


def test_loss_gradients_match_the_closed_form_in_float64():
    sae = make_sae(l1=0.75).double()  # λ exact in float32, as its buffer stores it
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sae.loss(x).loss.backward()
    expected = numpy_gradients(sae, x)
    z = sae.encode(x)
    assert (z > 0).any() and (z == 0).any()  # both sides of the ReLU's kink are in the batch
    for name, gradient in expected.items():
        np.testing.assert_allclose(getattr(sae, name).grad.numpy(), gradient, rtol=1e-10, atol=1e-13)


def test_encode_sparse_lists_the_nonzero_latents_with_the_reconstruction():
    sae = make_sae()
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    z, x_hat, _, _ = numpy_reference(sae, x)
    with torch.no_grad():
        latents, reconstruction = sae.encode_sparse(x)
    rows, columns = np.nonzero(z)
    np.testing.assert_array_equal(latents.rows.numpy(), rows)
    np.testing.assert_array_equal(latents.latents.numpy(), columns)
    np.testing.assert_allclose(latents.values.numpy(), z[rows, columns], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reconstruction.numpy(), x_hat, rtol=1e-5, atol=1e-6)


def test_l1_term_scales_with_lambda():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    small, large = make_sae(l1=0.0), make_sae(l1=2.0)
    z = small.encode(x)
    assert (large.loss(x).loss - small.loss(x).loss).item() == pytest.approx(2.0 * z.mean().item(), rel=1e-5)


def test_init_has_unit_decoder_rows_and_transposed_encoder():
    sae = ReluSAE(SAEConfig("relu_l1", 8, 20, l1_coefficient=1.0))
    np.testing.assert_allclose(sae.W_dec.norm(dim=1).detach().numpy(), np.ones(20), rtol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert not sae.b_dec.any() and not sae.b_enc.any()


def test_seeded_init_is_reproducible():
    a, b, c = (
        ReluSAE(SAEConfig("relu_l1", 8, 20, l1_coefficient=1.0), generator=torch.Generator().manual_seed(s))
        for s in (5, 5, 6)
    )
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    sae = make_sae(l1=0.125)
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert isinstance(loaded, ReluSAE) and loaded.cfg == sae.cfg
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name))
    assert loaded.l1_coefficient.item() == 0.125
    x = torch.randn(5, 6)
    assert torch.equal(loaded(x), sae(x))


def test_missing_or_negative_l1_coefficient_is_a_user_error():
    with pytest.raises(UserError, match="l1_coefficient"):
        ReluSAE(SAEConfig("relu_l1", 4, 8))
    with pytest.raises(UserError, match="l1_coefficient"):
        ReluSAE(SAEConfig("relu_l1", 4, 8, l1_coefficient=-1.0))


def test_training_recovers_an_overcomplete_dictionary():
    """Sparse non-negative mixtures of 12 directions in 8 dimensions: the trained decoder finds them."""
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(12, 8, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    codes = (torch.rand(4000, 12, generator=gen) < 0.1) * torch.rand(4000, 12, generator=gen)
    x = codes @ features
    x = x / x.pow(2).mean().sqrt()
    sae = ReluSAE(SAEConfig("relu_l1", 8, 24, l1_coefficient=3.0), generator=torch.Generator().manual_seed(0))
    params = [sae.W_enc, sae.b_enc, sae.W_dec]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    first = sae.loss(x).loss.item()
    for _ in range(10):
        for batch in x.split(128):
            optimizer.zero_grad()
            sae.loss(batch).loss.backward()
            optimizer.step()
            sae.normalize_decoder()
    assert sae.loss(x).loss.item() < 0.5 * first
    cosines = features @ sae.W_dec.detach().T
    assert cosines.max(dim=1).values.mean().item() > 0.9
