"""SAELens folder format: bit-identical round trip, clear errors, and the real sae-lens reading our files."""

import json

import pytest
import torch

from randsae.errors import UserError
from randsae.sae import SAEConfig, build_sae, load_sae

METADATA = {"model_name": "tiny", "hook_name": "model.layers.1", "context_size": 32, "prepend_bos": True}


def perturbed(sae):
    """Non-default biases and thresholds (positive, as training keeps them), so a round trip that dropped one
    would show."""
    with torch.no_grad():
        for name, p in sae.state_dict(keep_vars=True).items():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
            if name == "threshold":
                p.abs_()
    return sae


CONFIGS = [
    (SAEConfig("topk", 12, 48, k=5, metadata=METADATA), "topk"),
    (SAEConfig("relu_l1", 12, 48, l1_coefficient=0.01, metadata=METADATA), "standard"),
    (SAEConfig("batchtopk", 12, 48, k=5, metadata=METADATA), "jumprelu"),
    (SAEConfig("matryoshka_batchtopk", 12, 48, k=5, matryoshka_widths=(12, 48), metadata=METADATA), "jumprelu"),
    (SAEConfig("jumprelu", 12, 48, l0_coefficient=1e-3, jumprelu_bandwidth=0.05, metadata=METADATA), "jumprelu"),
    (SAEConfig("gated", 12, 48, l1_coefficient=0.01, metadata=METADATA), "gated"),
]
"""One SAE of every architecture, and the architecture SAELens reads its folder as."""
SHAPES = {"W_enc": (12, 48), "W_dec": (48, 12), "b_dec": (12,)}
EXTRA_SHAPES = {"gated": {"b_gate": (48,), "r_mag": (48,), "b_mag": (48,)}, "topk": {"b_enc": (48,)}}


@pytest.mark.parametrize("cfg, saelens_name", CONFIGS, ids=lambda c: getattr(c, "architecture", c))
def test_round_trip_is_bit_identical(tmp_path, cfg, saelens_name):
    sae = perturbed(build_sae(cfg, seed=0))
    sae.save(tmp_path)
    on_disk = json.loads((tmp_path / "cfg.json").read_text())
    assert on_disk["architecture"] == saelens_name and on_disk["d_sae"] == 48
    trained_as = (
        {}
        if saelens_name != "jumprelu" or cfg.architecture == "jumprelu"
        else {"training_architecture": cfg.architecture}
    )
    assert on_disk["metadata"] == {**METADATA, **trained_as}
    loaded = load_sae(tmp_path)
    assert type(loaded) is type(sae) and loaded.cfg == cfg
    shapes = {**SHAPES, **EXTRA_SHAPES.get(saelens_name, {"b_enc": (48,)})}
    if saelens_name == "jumprelu":
        shapes["threshold"] = (48,)
    assert {name: tuple(t.shape) for name, t in loaded.state_dict().items()} == shapes
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.randn(7, 12)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_folder_and_unknown_architecture_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no SAE at"):
        load_sae(tmp_path / "nowhere")
    build_sae(SAEConfig("topk", 4, 8, k=2), seed=0).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matching_pursuit"}))
    with pytest.raises(UserError, match="matching_pursuit"):
        load_sae(tmp_path)


@pytest.mark.parametrize("cfg, saelens_name", CONFIGS, ids=lambda c: getattr(c, "architecture", c))
def test_real_sae_lens_loads_our_folder_and_encodes_the_same(tmp_path, cfg, saelens_name):
    sae_lens = pytest.importorskip(
        "sae_lens",
        reason="sae-lens is not installed (it pulls transformer-lens, wandb and ~45 packages; "
        "`pip install sae-lens` into a separate venv sharing this torch to run this test)",
    )
    ours = perturbed(build_sae(cfg, seed=1))
    ours.save(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.architecture() == saelens_name
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-6)
        assert torch.allclose(theirs.decode(theirs.encode(x)), ours(x), atol=1e-5)
