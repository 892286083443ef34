"""Each variant's defining property, checked on a tiny model."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from randsae.errors import UserError
from randsae.models.variants import (
    PAPER_VARIANTS,
    VARIANTS,
    NoiseEmbedding,
    VariantConfig,
    build_variant,
    norm_parameter_names,
    permute_tensor,
    predicts_language,
    rerandomize_tensor,
)


@pytest.fixture()
def trained(tiny_model_dir):
    """The tiny model with every tensor jittered, so none is constant (as after training)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return model


def _params(model):
    return dict(model.named_parameters())


def test_only_the_trained_model_predicts_language():
    assert [name for name in VARIANTS if predicts_language(name)] == ["trained"]
    assert set(PAPER_VARIANTS) <= set(VARIANTS) and not predicts_language("control")


def test_trained_is_the_model_itself(trained):
    assert build_variant(trained, "trained", VariantConfig()) is trained


def test_rerandomized_matches_each_tensors_mean_and_std_and_keeps_norms(trained):
    before = {name: p.detach().clone() for name, p in trained.named_parameters()}
    variant = build_variant(trained, "rerandomized", VariantConfig(seed=42))
    norms = norm_parameter_names(trained)
    assert norms and all("layernorm" in name or "norm" in name for name in norms)
    for name, param in _params(variant).items():
        assert torch.equal(_params(trained)[name], before[name]), "the trained model must be untouched"
        if name in norms:
            assert torch.equal(param, before[name])
            continue
        assert not torch.equal(param, before[name])
        if param.numel() >= 1000:
            assert param.mean().item() == pytest.approx(
                before[name].mean().item(), abs=5 * before[name].std().item() / param.numel() ** 0.5
            )
            assert param.std().item() == pytest.approx(before[name].std().item(), rel=0.1)


def test_rerandomize_norms_option_redraws_norm_parameters(trained):
    variant = build_variant(trained, "rerandomized", VariantConfig(rerandomize_norms=True))
    name = sorted(norm_parameter_names(trained))[0]
    assert not torch.equal(_params(variant)[name], _params(trained)[name])


def test_rerandomized_is_deterministic_from_its_seed(trained):
    a = _params(build_variant(trained, "rerandomized", VariantConfig(seed=1)))
    b = _params(build_variant(trained, "rerandomized", VariantConfig(seed=1)))
    c = _params(build_variant(trained, "rerandomized", VariantConfig(seed=2)))
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])


def test_keep_embeddings_keeps_input_and_output_embeddings_only(trained):
    variant = _params(build_variant(trained, "rerandomized_keep_embeddings", VariantConfig()))
    for name in ("gpt_neox.embed_in.weight", "lm_head.weight"):  # lm_head: Pythia's embed_out
        assert torch.equal(variant[name], _params(trained)[name])
    assert not torch.equal(
        variant["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"],
        _params(trained)["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"],
    )


def test_permuted_keeps_each_tensors_values(trained):
    variant = _params(build_variant(trained, "permuted", VariantConfig()))
    name = "gpt_neox.layers.2.mlp.dense_4h_to_h.weight"
    original = _params(trained)[name]
    assert not torch.equal(variant[name], original)
    assert torch.equal(variant[name].flatten().sort().values, original.flatten().sort().values)


def test_init_scale_multiplies_the_spread():
    generator = torch.Generator().manual_seed(0)
    tensor = torch.randn(200, 200) * 3 + 1
    wide = rerandomize_tensor(tensor, torch.Generator().manual_seed(0), scale=2.0)
    assert wide.std().item() == pytest.approx(2 * tensor.std().item(), rel=0.02)
    assert wide.mean().item() == pytest.approx(tensor.mean().item(), abs=5 * wide.std().item() / 200)
    permuted = permute_tensor(tensor, generator, scale=0.5)
    assert permuted.std().item() == pytest.approx(0.5 * tensor.std().item(), rel=1e-4)


def test_fresh_init_uses_the_architectures_initialization(trained):
    variant = build_variant(trained, "fresh_init", VariantConfig(seed=3))
    again = build_variant(trained, "fresh_init", VariantConfig(seed=3))
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    weight = _params(variant)[name]
    assert torch.equal(weight, _params(again)[name])
    assert not torch.equal(weight, _params(trained)[name])
    # GPT-NeoX initializes linear weights with N(0, initializer_range) and biases with zeros
    assert weight.std().item() == pytest.approx(trained.config.initializer_range, rel=0.1)
    assert torch.all(_params(variant)["gpt_neox.layers.0.mlp.dense_h_to_4h.bias"] == 0)
    assert torch.all(_params(variant)["gpt_neox.layers.0.input_layernorm.weight"] == 1)


def test_control_feeds_fresh_noise_embeddings_on_every_forward(trained):
    variant = build_variant(trained, "control", VariantConfig())
    embedding = variant.get_input_embeddings()
    assert isinstance(embedding, NoiseEmbedding)
    ids = torch.tensor([[5, 5, 5, 7]])
    first, second = embedding(ids), embedding(ids)
    assert first.shape == (1, 4, trained.config.hidden_size)
    assert not torch.equal(first[0, 0], first[0, 1]), "the same token gets different embeddings"
    assert not torch.equal(first, second), "every forward draws new noise"
    sample = embedding(torch.zeros(1, 4096, dtype=torch.long))
    assert sample.mean().item() == pytest.approx(0, abs=0.02) and sample.std().item() == pytest.approx(1, abs=0.02)
    embedding.reseed(9)
    a = embedding(ids)
    embedding.reseed(9)
    assert torch.equal(a, embedding(ids))
    assert isinstance(trained.get_input_embeddings(), torch.nn.Embedding), "the trained model is untouched"


def test_step0_without_a_hub_checkpoint_is_a_clear_error(trained):
    with pytest.raises(UserError, match="step0"):
        build_variant(trained, "step0", VariantConfig(), load_step0=None)


def test_unknown_variant_is_a_clear_error(trained):
    with pytest.raises(UserError, match="unknown variant 'shuffled'"):
        build_variant(trained, "shuffled", VariantConfig())
