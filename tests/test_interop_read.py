"""Reading SAEs of other libraries: each written by the library itself (sae-lens, eai-sparsify) or in its
documented layout (dictionary_learning), then randsae's encode and decode checked against the library's own
on the same inputs."""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import torch

from randsae.errors import UserError
from randsae.interop import read_sae

D_IN, D_SAE, K = 12, 48, 5
NOT_INSTALLED = "{} is not installed: `pip install -e '.[test]'` installs the interop libraries"


def inputs(seed: int = 0, n: int = 40) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter drawn afresh (biases included), so a reader that dropped one would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


# --- SAELens ---


def saelens_sae(architecture: str, **cfg):
    sae_lens = pytest.importorskip("sae_lens", reason=NOT_INSTALLED.format("sae-lens"))
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(model_name="EleutherAI/pythia-70m", hook_name="blocks.2.hook_resid_post", context_size=64)
    if architecture == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, metadata=metadata, **cfg))
    else:
        classes = {
            "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
            "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
            "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
        }
        sae_cls, cfg_cls = classes[architecture]
        sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=metadata, **cfg))
    randomize(sae)
    return sae


@pytest.mark.parametrize("architecture", ["topk", "standard", "jumprelu", "gated"])
@pytest.mark.parametrize(
    "cfg",
    [{}, {"apply_b_dec_to_input": False}, {"rescale_acts_by_decoder_norm": True}],
    ids=["plain", "no_b_dec_on_input", "rescaled_by_decoder_norm"],
)
def test_saelens_folder_encodes_and_decodes_as_sae_lens(tmp_path, architecture, cfg):
    if "rescale_acts_by_decoder_norm" in cfg and architecture != "topk":
        pytest.skip("only SAELens's TopK SAE has rescale_acts_by_decoder_norm")
    if "apply_b_dec_to_input" in cfg and architecture == "gated":
        pytest.skip("a gated SAE has no b_enc to fold an unsubtracted b_dec into (refused, as read.py says)")
    theirs = saelens_sae(architecture, **cfg)
    theirs.save_model(tmp_path)
    imported = read_sae(tmp_path)
    ours, origin = imported.sae, imported.origin
    assert ours.cfg.architecture == {"standard": "relu_l1"}.get(architecture, architecture)
    assert (origin.format, origin.model_name, origin.hook_name, origin.layer) == (
        "saelens",
        "EleutherAI/pythia-70m",
        "blocks.2.hook_resid_post",
        2,
    )
    x = inputs()
    with torch.no_grad():
        z_theirs = theirs.encode(x)
        z_ours = ours.encode(x)
        if cfg.get("rescale_acts_by_decoder_norm"):
            assert origin.conversions
        assert (z_ours != 0).equal(z_theirs != 0)
        torch.testing.assert_close(z_ours, z_theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(z_ours), theirs.decode(z_theirs), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_saelens_scaling_factor_of_a_training_checkpoint_is_folded(tmp_path):
    """`expected_average_only_in`: sae-lens's SAE reads x times the factor and answers in that scale."""
    theirs = saelens_sae("topk", normalize_activations="expected_average_only_in")
    theirs.save_model(tmp_path)
    with pytest.raises(UserError, match="scaling factor"):
        read_sae(tmp_path)
    factor = 3.5
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": factor}))
    ours = read_sae(tmp_path).sae
    x = inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x * factor), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x * factor) / factor, atol=1e-5, rtol=1e-5)


def test_saelens_layer_norm_is_refused(tmp_path):
    saelens_sae("standard", normalize_activations="layer_norm").save_model(tmp_path)
    with pytest.raises(UserError, match="normalizes every token"):
        read_sae(tmp_path)


def test_saelens_pre_6_config_of_a_topk_sae(tmp_path):
    """SAELens 5 wrote TopK SAEs as architecture `standard` with `activation_fn_str = topk`."""
    theirs = saelens_sae("topk")
    theirs.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    old = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "hook_name": "blocks.2.hook_resid_post",
        "model_name": "pythia-70m",
        "sae_lens_training_version": "5.1.0",
    }
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    imported = read_sae(tmp_path)
    assert cfg["architecture"] == "topk" and imported.sae.cfg.k == K and imported.origin.layer == 2
    x = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(imported.sae(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_saelens_pretrained_release_resolves_through_sae_lens_registry(tmp_path, monkeypatch):
    """The registry path with the Hub unreachable: sae-lens's download answered from a local folder laid
    out as the release's repository."""
    theirs = saelens_sae("standard")
    release, sae_id = "pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post"
    from sae_lens.loading import pretrained_sae_loaders
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    repo_id, folder = get_repo_id_and_folder_name(release, sae_id)
    repo = tmp_path / repo_id.replace("/", "--")
    theirs.save_model(repo / folder)

    def offline_download(repo_id: str, filename: str, **_):
        path = tmp_path / repo_id.replace("/", "--") / filename
        if not path.is_file():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} is not in the local copy")
        return str(path)

    monkeypatch.setattr(pretrained_sae_loaders, "hf_hub_download", offline_download)
    imported = read_sae(f"saelens:{release}:{sae_id}")
    assert imported.origin.format == "saelens_pretrained"
    assert imported.origin.source == f"saelens:{release}:{sae_id}" and imported.origin.layer == 2
    x = inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(imported.sae(x), theirs(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="cannot resolve"):
        read_sae(f"saelens:{release}:blocks.99.hook_resid_post")


# --- sparsify ---


def sparsify_sae(**cfg):
    sparsify = pytest.importorskip("sparsify", reason=NOT_INSTALLED.format("eai-sparsify"))
    sae = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=K, **cfg))
    randomize(sae)
    return sae


def dense(top_acts: torch.Tensor, top_indices: torch.Tensor) -> torch.Tensor:
    return torch.zeros(top_acts.shape[0], D_SAE).scatter(1, top_indices, top_acts)


@pytest.mark.parametrize("multi_topk", [False, True])
def test_sparsify_folder_encodes_and_decodes_as_sparsify(tmp_path, multi_topk):
    theirs = sparsify_sae(multi_topk=multi_topk)
    (tmp_path / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m", "ctx_len": 64}))
    theirs.save_to_disk(tmp_path / "gpt_neox.layers.3")
    imported = read_sae(tmp_path / "gpt_neox.layers.3")
    ours, origin = imported.sae, imported.origin
    assert (origin.format, origin.model_name, origin.layer) == ("sparsify", "EleutherAI/pythia-70m", 3)
    assert origin.recorded["multi_topk"] is multi_topk and ours.cfg.k == K
    x = inputs(4)
    with torch.no_grad():
        top = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x), dense(top.top_acts, top.top_indices), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs.decode(top.top_acts, top.top_indices), atol=1e-5, rtol=1e-5)


def test_sparsify_root_with_several_hookpoints_asks_for_one(tmp_path):
    for hook in ("layers.0", "layers.1"):
        sparsify_sae().save_to_disk(tmp_path / hook)
    with pytest.raises(UserError, match=r"layers\.0, layers\.1"):
        read_sae(tmp_path)


# --- dictionary_learning (its documented state-dict layouts; the formulas of its encode/decode) ---


def dictionary_learning_state(architecture: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    state = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g) * 0.3,
        "encoder.bias": torch.randn(D_SAE, generator=g) * 0.3,
        "decoder.weight": torch.randn(D_IN, D_SAE, generator=g) * 0.3,  # columns deliberately not unit-norm
    }
    if architecture == "AutoEncoder":
        state["bias"] = torch.randn(D_IN, generator=g)
    else:
        state.update(b_dec=torch.randn(D_IN, generator=g), k=torch.tensor(K), threshold=torch.tensor(-1.0))
    return state


def dictionary_learning_reference(state, x):
    """dictionary_learning's AutoEncoder / AutoEncoderTopK forward, written from its documented formulas."""
    linear = torch.nn.functional.linear
    if "bias" in state:
        f = torch.relu(linear(x - state["bias"], state["encoder.weight"], state["encoder.bias"]))
        return f, linear(f, state["decoder.weight"]) + state["bias"]
    post = torch.relu(linear(x - state["b_dec"], state["encoder.weight"], state["encoder.bias"]))
    top = post.topk(K, dim=-1)
    f = torch.zeros_like(post).scatter(-1, top.indices, top.values)
    return f, linear(f, state["decoder.weight"]) + state["b_dec"]


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "AutoEncoderTopK"])
def test_dictionary_learning_folder_reconstructs_as_the_library(tmp_path, dict_class):
    state = dictionary_learning_state(dict_class)
    torch.save(state, tmp_path / "ae.pt")
    trainer = {"dict_class": dict_class, "lm_name": "EleutherAI/pythia-70m", "submodule_name": "resid_post_layer_4"}
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {**trainer, "k": K}, "buffer": {}}))
    imported = read_sae(tmp_path)
    ours, origin = imported.sae, imported.origin
    assert (origin.format, origin.layer, ours.cfg.d_in, ours.cfg.d_sae) == ("dictionary_learning", 4, D_IN, D_SAE)
    f, reconstruction = dictionary_learning_reference(state, inputs(6))
    with torch.no_grad():
        z = ours.encode(inputs(6))
        torch.testing.assert_close(ours.decode(z), reconstruction, atol=1e-5, rtol=1e-5)
        assert (z != 0).equal(f != 0)
        if dict_class == "AutoEncoder":  # latents scaled by the decoder norms, as its from_pretrained does
            torch.testing.assert_close(z, f * state["decoder.weight"].norm(dim=0), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.W_dec.norm(dim=1), torch.ones(D_SAE))
        else:
            torch.testing.assert_close(z, f, atol=1e-5, rtol=1e-5)


class NotATensor:
    """Stands for any object an ae.pt might pickle instead of tensors."""


def test_dictionary_learning_pickle_is_refused_not_unpickled(tmp_path):
    torch.save({"encoder.weight": NotATensor()}, tmp_path / "ae.pt")
    with pytest.raises(UserError, match="pickled Python objects"):
        read_sae(tmp_path)
    (tmp_path / "ae.pt").write_bytes(pickle.dumps(NotATensor()))
    with pytest.raises(UserError, match="not a state dict|pickled"):
        read_sae(tmp_path)


# --- format detection and damaged files ---


def test_unknown_folder_and_damaged_weights(tmp_path):
    (tmp_path / "notes.txt").write_text("no SAE here")
    with pytest.raises(UserError, match="holds no SAE randsae can read"):
        read_sae(tmp_path)
    with pytest.raises(UserError, match="is not a folder"):
        read_sae(tmp_path / "missing")
    state = dictionary_learning_state("AutoEncoderTopK")
    del state["b_dec"]
    torch.save(state, tmp_path / "ae.pt")
    with pytest.raises(UserError, match="lacks b_dec"):
        read_sae(tmp_path)


def test_saelens_weights_of_the_wrong_shape(tmp_path):
    from safetensors.torch import load_file, save_file

    saelens_sae("topk").save_model(tmp_path)
    tensors = load_file(tmp_path / "sae_weights.safetensors")
    save_file({**tensors, "W_dec": tensors["W_dec"][:, :-1].contiguous()}, tmp_path / "sae_weights.safetensors")
    with pytest.raises(UserError, match=r"W_dec .* has shape \[48, 11\], expected \[48, 12\]"):
        read_sae(tmp_path)


@pytest.mark.parametrize(
    "hook, layer",
    [
        ("blocks.3.hook_resid_post", 3),
        ("blocks.3.hook_resid_pre", 2),  # the same tensor as block 2's output
        ("blocks.0.hook_resid_pre", None),  # the embeddings
        ("blocks.3.hook_mlp_out", None),
        ("blocks.3.attn.hook_z", None),
        ("layers.5", 5),  # sparsify's name for the Llama / GPT-NeoX blocks
        ("gpt_neox.layers.5", 5),
        ("model.layers.12", 12),
        ("transformer.h.0", 0),
        ("model.layers.12.mlp", None),
        ("resid_post_layer_4", 4),  # dictionary_learning
        ("embed_tokens.0", None),
    ],
)
def test_hook_names_map_to_the_residual_stream_after_a_block(hook, layer):
    from randsae.interop.hook_names import residual_layer

    assert residual_layer(hook) == layer


def test_an_architecture_randsae_does_not_have_is_named(tmp_path):
    from randsae.sae import SAEConfig, build_sae

    build_sae(SAEConfig("topk", D_IN, D_SAE, k=K), seed=0).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "transcoder_of_the_future"}))
    with pytest.raises(UserError, match="'transcoder_of_the_future' SAE, an architecture randsae cannot evaluate"):
        read_sae(tmp_path)


def test_a_registry_id_without_sae_lens_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # `import sae_lens` now raises ImportError
    with pytest.raises(UserError, match=r"needs sae-lens.*randsae\[interop\]"):
        read_sae("saelens:pythia-70m-deduped-res-sm:blocks.2.hook_resid_post")
    with pytest.raises(UserError, match="is not saelens:RELEASE:SAE_ID"):
        read_sae("saelens:only-a-release")
