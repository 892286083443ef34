"""Writing randsae's SAEs in sparsify's layout, checked by loading them with eai-sparsify's own loaders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from randsae.cli import main
from randsae.config import dump_config
from randsae.interop import read_sae
from randsae.interop.sparsify import write_sparsify
from randsae.run_dir import RunDir, SAEKey
from randsae.sae import SAEConfig, build_sae, load_sae
from tests.helpers import tiny_config


def test_sparsify_loads_our_sae_and_encodes_the_same(tmp_path):
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify is not installed: `pip install -e '.[test]'`")
    ours = build_sae(SAEConfig("topk", 12, 48, k=5, metadata={"hook_name": "layers.2"}), seed=0)
    with torch.no_grad():
        ours.b_enc.normal_(0, 0.3)
        ours.b_dec.normal_(0, 0.3)
    write_sparsify(ours, tmp_path / "layers.2")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "layers.2")
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = theirs.encode(x)
        dense = torch.zeros(30, 48).scatter(1, top.top_indices, top.top_acts)
        torch.testing.assert_close(dense, ours.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(top.top_acts, top.top_indices), ours(x), atol=1e-5, rtol=1e-5)
    back = read_sae(tmp_path / "layers.2").sae
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_run_format_sparsify_writes_what_sparsify_load_many_reads(tmp_path, tiny_model_dir, tiny_corpus):
    """`randsae run --format sparsify`: per variant, one folder per hookpoint named by the block module's path,
    the layout delphi reads."""
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify is not installed: `pip install -e '.[test]'`")
    config = tmp_path / "run.toml"
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained", "control"))
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, total_tokens=1024)
    )  # short: the export is what is tested
    config.write_text(dump_config(cfg))
    out = tmp_path / "run"
    skip = ["--skip", "interpret", "analyze", "report"]
    assert main(["run", "--config", str(config), "--out", str(out), "--format", "sparsify", "--quiet", *skip]) == 0
    run = RunDir(out)
    assert {path.name for path in (out / "sparsify").iterdir()} == {"trained", "control"}
    loaded = sparsify.SparseCoder.load_many(str(out / "sparsify" / "control"), local=True)
    assert sorted(loaded) == ["gpt_neox.layers.1", "gpt_neox.layers.3"]
    ours = load_sae(run.sae(SAEKey("control", 3)))
    x = torch.randn(16, ours.cfg.d_in, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        top = loaded["gpt_neox.layers.3"].encode(x)
        reconstruction = loaded["gpt_neox.layers.3"].decode(top.top_acts, top.top_indices)
        torch.testing.assert_close(reconstruction, ours(x), atol=1e-5, rtol=1e-5)
