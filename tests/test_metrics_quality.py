"""Quality metrics against hand-computed cases and closed forms."""

import numpy as np
import pytest
import torch

from randsae.metrics.downstream import ce_loss_score, downstream_metrics, kl_score
from randsae.metrics.quality import reconstruction_metrics


def test_hand_computed_case():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 2.0]])
    z = torch.tensor([[0.5, 0.0, 0.0], [2.0, 1.0, 0.0]])
    m = reconstruction_metrics([(x, x_hat, z)])
    # mean (2, 1); Σ‖x-μ‖² = (1+1) + (1+1) = 4; Σ‖x-x̂‖² = 1
    assert m.explained_variance_pooled == pytest.approx(1 - 1 / 4)
    # per token against the batch mean: token 0: 1 - 1/2, token 1: 1 - 0/2
    assert m.explained_variance_per_token == pytest.approx((0.5 + 1.0) / 2)
    assert m.mse == pytest.approx(1 / 4)
    assert m.cosine == pytest.approx((1 / np.sqrt(2) + 1) / 2)
    assert m.l0 == pytest.approx(1.5) and m.l1 == pytest.approx(1.75)
    assert m.dead_fraction == pytest.approx(1 / 3) and m.dense_fraction == pytest.approx(2 / 3)


def test_pooled_explained_variance_is_about_the_mean_not_zero_and_streams_exactly():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 8, generator=generator) + 50.0  # a large mean that EV about zero would reward
    x_hat = x.mean(0, keepdim=True).expand_as(x) + 0.5 * (x - x.mean(0))
    z = torch.rand(1000, 4, generator=generator)
    expected = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert expected.item() == pytest.approx(0.75, abs=1e-6)
    streamed = reconstruction_metrics(zip(x.split(128), x_hat.split(128), z.split(128), strict=True))
    assert streamed.explained_variance_pooled == pytest.approx(expected.item(), abs=1e-6)
    about_zero = 1 - ((x - x_hat) ** 2).sum() / (x**2).sum()
    assert about_zero.item() > 0.999, "the flattering number an about-zero formula would give"


def test_dense_fraction_uses_the_ten_percent_threshold():
    z = torch.zeros(100, 3)
    z[:11, 0] = 1.0  # 11% → dense
    z[:10, 1] = 1.0  # exactly 10% → not dense
    m = reconstruction_metrics([(torch.randn(100, 2), torch.randn(100, 2), z)])
    assert m.dense_fraction == pytest.approx(1 / 3) and m.dead_fraction == pytest.approx(1 / 3)


def test_massive_dimensions_are_counted_and_left_out_of_the_second_explained_variance():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=generator)
    x[7, 2] = 1000.0  # one token's massive activation in dimension 2: median |x| is about 0.67
    x_hat = x.clone()
    x_hat[:, 2] = x[:, 2].mean()  # dimension 2 not reconstructed at all
    x_hat[:, :2] += 0.5 * torch.randn(400, 2, generator=generator)
    m = reconstruction_metrics(zip(x.split(64), x_hat.split(64), torch.rand(400, 3).split(64), strict=True))
    assert m.massive_dims == 1
    centred = x - x.mean(0)
    err = (x - x_hat) ** 2
    keep = [0, 1, 3, 4, 5]
    expected_all = 1 - err.sum() / (centred**2).sum()
    expected_rest = 1 - err[:, keep].sum() / (centred[:, keep] ** 2).sum()
    assert m.explained_variance_pooled == pytest.approx(expected_all.item(), abs=1e-6)
    assert m.explained_variance_without_massive == pytest.approx(expected_rest.item(), abs=1e-6)
    assert m.explained_variance_pooled < 0.1 < 0.8 < m.explained_variance_without_massive
    assert reconstruction_metrics([(x[8:], x_hat[8:], torch.rand(392, 3))]).massive_dims == 0


def test_score_formulas():
    assert ce_loss_score(ce_clean=2.0, ce_zero=6.0, ce_sae=3.0) == pytest.approx(0.75)
    assert kl_score(kl_zero=4.0, kl_sae=1.0) == pytest.approx(0.75)


def test_scores_without_a_scale_are_nan_not_an_error():
    assert np.isnan(ce_loss_score(2.0, 2.0, 1.5)) and np.isnan(kl_score(0.0, 0.1))
    x = torch.ones(8, 4)  # no variance about the mean: explained variance is undefined
    z = torch.ones(8, 6)
    assert np.isnan(reconstruction_metrics([(x, x * 0.5, z)]).explained_variance_pooled)


def test_perfect_reconstruction_scores_one_and_zero_ablation_scores_zero(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from randsae.models.hookpoints import find_blocks

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    _, blocks = find_blocks(model)
    ids = torch.randint(1, model.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    results = downstream_metrics(
        model, {1: (blocks[1], lambda r: r), 2: (blocks[2], torch.zeros_like)}, ids, batch_size=3
    )
    identity, zero = results[1], results[2]
    assert identity.ce_sae == pytest.approx(identity.ce_clean, abs=1e-5)
    assert identity.ce_loss_score == pytest.approx(1.0, abs=1e-4) and identity.kl_sae == pytest.approx(0, abs=1e-5)
    assert zero.ce_loss_score == pytest.approx(0.0, abs=1e-6) and zero.kl_score == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert identity.ce_clean == pytest.approx(manual.item(), rel=1e-5)
