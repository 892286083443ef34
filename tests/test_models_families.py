"""Beyond transformers: hook point, final norm and every variant on Mamba, RWKV and the other families
transformers ships, each built tiny and random from its config (offline), checked against transformers'
own `output_hidden_states` and the families' documented initializations."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from randsae.cli import main
from randsae.errors import UserError
from randsae.metrics.results import load_metrics
from randsae.models.hookpoints import (
    block_list_by_structure,
    final_norm,
    final_norm_weight,
    find_blocks,
    is_norm,
    replace_residual,
    residual_stream,
)
from randsae.models.variants import NoiseEmbedding, VariantConfig, build_variant, norm_parameter_names
from randsae.run_dir import RunDir
from tests.helpers import build_tiny_model

VOCAB, WIDTH, DEPTH = 40, 32, 4
SIZE: dict[str, Any] = {"vocab_size": VOCAB, "hidden_size": WIDTH, "num_hidden_layers": DEPTH}


@dataclasses.dataclass(frozen=True)
class Family:
    config: transformers.PretrainedConfig
    blocks: str
    """Where its blocks are."""
    norm: str
    """Its final norm."""
    offset: int
    """Index of block i's output in transformers' hidden_states, minus i: 1 after the embeddings, 0 where
    (the state-space and RNN families) hidden_states leave the embeddings out."""


FAMILIES = {
    "gpt_neox": Family(
        transformers.GPTNeoXConfig(**SIZE, num_attention_heads=4, intermediate_size=64),
        "gpt_neox.layers",
        "gpt_neox.final_layer_norm",
        1,
    ),
    "llama": Family(
        transformers.LlamaConfig(**SIZE, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
        "model.layers",
        "model.norm",
        1,
    ),
    "gpt2": Family(
        transformers.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=DEPTH, n_head=4),
        "transformer.h",
        "transformer.ln_f",
        1,
    ),
    "recurrent_gemma": Family(
        transformers.RecurrentGemmaConfig(
            **SIZE, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, lru_width=WIDTH
        ),
        "model.layers",
        "model.final_norm",
        1,
    ),
    "gemma3": Family(  # the text model inside transformers' multimodal wrapper, beside a vision tower
        transformers.Gemma3Config(
            text_config={**SIZE, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64},
            vision_config={
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "image_size": 28,
                "patch_size": 14,
                "intermediate_size": 64,
            },
            mm_tokens_per_image=4,
        ),
        "model.language_model.layers",
        "model.language_model.norm",
        1,
    ),
    "jamba": Family(  # attention and Mamba blocks, of two classes, in one list; MoE in every other block
        transformers.JambaConfig(
            **SIZE,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            num_experts=4,
            mamba_d_state=8,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            use_mamba_kernels=False,
        ),
        "model.layers",
        "model.final_layernorm",
        1,
    ),
    "lfm2": Family(  # convolution and attention blocks; its final norm is called `embedding_norm`
        transformers.Lfm2Config(
            **SIZE,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            layer_types=["conv", "full_attention", "conv", "full_attention"],
        ),
        "model.layers",
        "model.embedding_norm",
        1,
    ),
    "xlstm": Family(transformers.xLSTMConfig(**SIZE, num_heads=2), "backbone.blocks", "backbone.out_norm", 1),
    "mamba": Family(transformers.MambaConfig(**SIZE, state_size=8), "backbone.layers", "backbone.norm_f", 0),
    "mamba2": Family(
        transformers.Mamba2Config(**SIZE, state_size=8, num_heads=8, head_dim=8, n_groups=1, chunk_size=16),
        "backbone.layers",
        "backbone.norm_f",
        0,
    ),
    "falcon_mamba": Family(
        transformers.FalconMambaConfig(**SIZE, state_size=8), "backbone.layers", "backbone.norm_f", 0
    ),
    "rwkv": Family(
        transformers.RwkvConfig(**SIZE, attention_hidden_size=WIDTH, intermediate_size=64),
        "rwkv.blocks",
        "rwkv.ln_out",
        0,
    ),
}


def _build(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(FAMILIES[family].config).eval()


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_and_final_norm_are_found_for_each_family(family):
    model = _build(family)
    blocks_path, norm_path = FAMILIES[family].blocks, FAMILIES[family].norm
    path, blocks = find_blocks(model)
    assert path == blocks_path and blocks is model.get_submodule(blocks_path) and len(blocks) == DEPTH
    assert block_list_by_structure(model)[0] == blocks_path, "the structural search agrees with the known path"
    assert final_norm(model) is model.get_submodule(norm_path)


@pytest.mark.parametrize(
    "family, scale",
    [
        ("gpt_neox", lambda norm: norm.weight),  # LayerNorm: weight * (x - mean) / std + bias
        ("llama", lambda norm: norm.weight),  # RMSNorm: weight * x / rms
        ("mamba", lambda norm: norm.weight),
        ("rwkv", lambda norm: norm.weight),
        ("recurrent_gemma", lambda norm: 1 + norm.weight),  # Gemma's RMSNorm: (1 + weight) * x / rms
    ],
)
def test_the_final_norm_scale_follows_each_familys_convention(family, scale):
    model = _build(family)
    norm = model.get_submodule(FAMILIES[family].norm)
    with torch.no_grad():
        for param in norm.parameters():  # away from the initial ones (zeros for Gemma), bias included
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(final_norm_weight(model), scale(norm).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_hooked_output_is_the_residual_stream_each_next_block_reads(family):
    """Block i's hooked output is what block i + 1 receives, and what transformers reports as that block's
    hidden state; the truncated forward never runs the blocks after the deepest layer."""
    model = _build(family)
    offset = FAMILIES[family].offset
    _, blocks = find_blocks(model)
    ids = _ids()
    received: dict[int, torch.Tensor] = {}

    def record(index):
        def hook(_module, args, kwargs):
            received[index] = args[0] if args else next(iter(kwargs.values()))

        return hook

    handles = [block.register_forward_pre_hook(record(i), with_kwargs=True) for i, block in enumerate(blocks)]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    for handle in handles:
        handle.remove()
    ran = []
    handle = blocks[3].register_forward_hook(lambda *_: ran.append(3))
    captured = residual_stream(model, blocks, [0, 1, 2], ids)
    handle.remove()
    assert ran == [], "blocks after the deepest requested layer must not run"
    for layer in (0, 1, 2):
        torch.testing.assert_close(captured[layer], received[layer + 1], rtol=0, atol=0)
        torch.testing.assert_close(captured[layer], hidden[layer + offset])


@pytest.mark.parametrize("family", ["mamba", "rwkv"])
def test_replacing_the_residual_changes_the_logits(family):
    model = _build(family)
    _, blocks = find_blocks(model)
    ids = _ids()
    with torch.no_grad():
        clean = model(input_ids=ids, use_cache=False).logits
        with replace_residual(blocks[1], torch.zeros_like):
            zeroed = model(input_ids=ids, use_cache=False).logits
        with replace_residual(blocks[1], lambda resid: resid):
            same = model(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(clean, zeroed)
    torch.testing.assert_close(clean, same)


def test_rwkv_rescaling_reads_block_i_at_scale_two_to_the_minus_i_over_rescale_every():
    """RWKV's inference rescaling (weights divided by powers of two, the stream halved every
    `rescale_every` blocks) reads block i at 2^-(i // rescale_every) of the unrescaled stream."""
    config = transformers.RwkvConfig(**SIZE, attention_hidden_size=WIDTH, intermediate_size=64, rescale_every=2)
    streams = []
    for rescale_every in (2, 0):
        torch.manual_seed(0)
        config.rescale_every = rescale_every
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        streams.append(residual_stream(model, find_blocks(model)[1], range(DEPTH), _ids()))
    rescaled, plain = streams
    for layer in range(DEPTH):  # equal up to the LayerNorms' epsilon, which a halved input feels more
        torch.testing.assert_close(rescaled[layer], plain[layer] / 2 ** (layer // 2), rtol=0.01, atol=1e-4)


def test_norms_are_found_by_module_type():
    mamba, rwkv = _build("mamba"), _build("rwkv")
    assert norm_parameter_names(mamba) == {f"backbone.layers.{i}.norm.weight" for i in range(DEPTH)} | {
        "backbone.norm_f.weight"
    }
    rwkv_norms = {f"rwkv.blocks.{i}.ln{n}.{p}" for i in range(DEPTH) for n in (1, 2) for p in ("weight", "bias")}
    rwkv_norms |= {f"rwkv.{norm}.{p}" for norm in ("blocks.0.pre_ln", "ln_out") for p in ("weight", "bias")}
    assert norm_parameter_names(rwkv) == rwkv_norms
    assert any(".mixer.norm." in name for name in norm_parameter_names(_build("mamba2"))), "Mamba2's gated RMSNorm"

    class NormHead(nn.Linear):
        """Baichuan's unembedding, which normalizes its rows: named with "Norm", but not a norm."""

    class Normalizer(nn.Linear):
        pass

    assert is_norm(nn.LayerNorm(4)) and is_norm(nn.RMSNorm(4))
    assert not is_norm(NormHead(2, 2)) and not is_norm(Normalizer(2, 2))


def _jittered(family: str) -> nn.Module:
    """A tiny model with every tensor jittered, so none is constant (as after training)."""
    model = _build(family)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return model


def test_mamba_variants_keep_the_tied_unembedding_tied():
    trained = _jittered("mamba")
    embedding = "backbone.embeddings.weight"
    assert trained.lm_head.weight is trained.backbone.embeddings.weight, "Mamba ties its unembedding"
    before = {name: p.detach().clone() for name, p in trained.named_parameters()}
    norms = norm_parameter_names(trained)
    for name in ("rerandomized", "permuted", "rerandomized_keep_embeddings"):
        variant = build_variant(trained, name, VariantConfig(seed=3))
        params = dict(variant.named_parameters())
        assert variant.lm_head.weight is variant.backbone.embeddings.weight, f"{name} keeps the tie"
        for pname, param in params.items():
            kept = pname in norms or (name == "rerandomized_keep_embeddings" and pname == embedding)
            assert torch.equal(param, before[pname]) == kept, (name, pname)
        assert all(torch.equal(p, before[n]) for n, p in trained.named_parameters()), "the trained model is untouched"
    control = build_variant(trained, "control", VariantConfig())
    assert isinstance(control.get_input_embeddings(), NoiseEmbedding)
    assert torch.equal(control.lm_head.weight, before[embedding]), "the control keeps the trained unembedding"
    with torch.no_grad():
        assert control(input_ids=_ids(), use_cache=False).logits.shape == (2, 12, VOCAB)


def test_rwkv_rerandomized_draws_every_tensor_but_the_norms():
    trained = _jittered("rwkv")
    variant = build_variant(trained, "rerandomized", VariantConfig(seed=3))
    norms = norm_parameter_names(trained)
    for (name, param), original in zip(variant.named_parameters(), trained.parameters(), strict=True):
        assert torch.equal(param, original) == (name in norms), name
    kept = dict(build_variant(trained, "rerandomized_keep_embeddings", VariantConfig()).named_parameters())
    assert torch.equal(kept["rwkv.embeddings.weight"], trained.rwkv.embeddings.weight)
    assert torch.equal(kept["head.weight"], trained.head.weight), "RWKV's untied unembedding is kept too"


def test_mamba_fresh_init_is_its_s4d_initialization():
    trained = _jittered("mamba")
    variant = build_variant(trained, "fresh_init", VariantConfig(seed=3))
    mixer = variant.backbone.layers[2].mixer
    n = FAMILIES["mamba"].config.state_size
    expected_a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(mixer.intermediate_size, n)
    torch.testing.assert_close(mixer.A_log, expected_a_log)  # A = -(1, 2, ..., N) in every channel
    assert torch.all(mixer.D == 1)
    assert variant.lm_head.weight is variant.backbone.embeddings.weight
    dt = nn.functional.softplus(mixer.dt_proj.bias)  # drawn log-uniformly in [time_step_min, time_step_max]
    assert dt.min().item() >= 0.001 * (1 - 1e-4) and dt.max().item() <= 0.1 * (1 + 1e-4)
    assert not math.isclose(dt.std().item(), 0)


def test_a_model_without_one_block_list_names_the_option_to_set():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList([nn.Linear(2, 2) for _ in range(8)])

    class MixtureLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([Block() for _ in range(3)])

    assert find_blocks(MixtureLM())[0] == "stack", "a block's experts are not the block list"

    class PerLayerNorms(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.norms = nn.ModuleList([nn.LayerNorm(4) for _ in range(4)])  # longer, but smaller

    assert find_blocks(PerLayerNorms())[0] == "blocks"

    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
            self.decoder = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    with pytest.raises(UserError, match=r"'encoder' and 'decoder' are alike.*Set model\.blocks"):
        find_blocks(EncoderDecoder())
    assert find_blocks(EncoderDecoder(), "decoder")[0] == "decoder"
    with pytest.raises(UserError, match=r"cannot find the block list of Linear\. Set model\.blocks"):
        find_blocks(nn.Linear(2, 2))
    with pytest.raises(UserError, match=r"model\.blocks = 'encoder\.0' is a Linear, not a list of blocks"):
        find_blocks(EncoderDecoder(), "encoder.0")


@pytest.mark.parametrize("family", ["mamba", "rwkv"])
def test_the_pipeline_runs_on_a_non_transformer(tmp_path, tiny_corpus, family):
    """configs/mamba.toml with the model swapped for a tiny random one of `family` and every size scaled down."""
    model = build_tiny_model(tmp_path / "model", family=family)
    out = tmp_path / "run"
    sizes = [
        f"model.name={model}",
        f"data.source={tiny_corpus}/*.jsonl",
        "layers=[1, 3]",
        'variants=["trained", "rerandomized_keep_embeddings", "control"]',
        'activation_dtype="float32"',
        "tokens.context_size=32",
        "tokens.train_tokens=1024",
        "tokens.heldout_tokens=512",
        "tokens.heldout_fraction=0.3",
        "sae.expansion=2",
        "sae.k=4",
        "train.batch_size=128",
        "train.total_tokens=1024",
        "eval.ce_windows=2",
        "eval.batch_windows=4",
    ]
    config = Path(__file__).parents[1] / "configs" / "mamba.toml"
    argv = ["run", "--config", str(config), "--out", str(out), "--quiet", "--skip", "interpret", "analyze", "report"]
    assert main([*argv, *(arg for value in sizes for arg in ("--set", value))]) == 0
    rows = load_metrics(RunDir(out))
    blocks_path = FAMILIES[family].blocks
    assert [(r.variant, r.layer, r.hook_name) for r in rows] == [
        (variant, layer, f"{blocks_path}.{layer}")
        for variant in ("trained", "rerandomized_keep_embeddings", "control")
        for layer in (1, 3)
    ]
    assert all(0 < row.explained_variance_pooled <= 1 for row in rows)
    saved = transformers.AutoModelForCausalLM.from_pretrained(model)
    unembedding = load_file(RunDir(out).unembedding())
    norm_weight = saved.get_submodule(FAMILIES[family].norm).weight  # a plain-weight norm: Mamba's RMSNorm, LayerNorm
    torch.testing.assert_close(unembedding["final_norm_weight"], norm_weight.detach())
    assert torch.equal(unembedding["W_U"], saved.get_output_embeddings().weight.T.half())
