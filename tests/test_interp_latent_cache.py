"""The sparse latent cache against the SAE's dense encode(), and latent selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from randsae.errors import UserError
from randsae.interp.latent_cache import build_latent_cache, load_latent_entries, open_latent_cache
from randsae.interp.selection import select_latents
from randsae.sae.base import SAEConfig
from tests.helpers import BrokenTopK, TinyTopK

CONTEXT = 32


def tiny_sae(cls=TinyTopK, d_sae=40, k=3, seed=0):
    torch.manual_seed(seed)
    sae = cls(SAEConfig(architecture=cls.architecture, d_in=8, d_sae=d_sae, k=k))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.normal_(std=0.1)
    return sae


def chunks(x: torch.Tensor, rows: int):
    return [x[i : i + rows] for i in range(0, len(x), rows)]


def test_entries_equal_dense_encode_without_bos(tmp_path):
    sae = tiny_sae()
    x = torch.randn(10 * CONTEXT, 8)
    cache = build_latent_cache(
        tmp_path / "c", sae, "hash", chunks(x, 70), n_tokens=len(x), context_size=CONTEXT, verify_rows=50, seed=0
    )
    dense = sae.encode(x).detach()
    dense[::CONTEXT] = 0  # BOS rows are left out
    entries = load_latent_entries(cache, range(40))
    rebuilt = torch.zeros_like(dense)
    for latent, (rows, values) in entries.items():
        assert (np.diff(rows) > 0).all()
        rebuilt[rows, latent] = torch.from_numpy(values)
    torch.testing.assert_close(rebuilt, dense, rtol=1e-3, atol=1e-3)  # float16 storage
    assert cache.counts.tolist() == (dense > 0).sum(0).tolist()
    assert np.allclose(cache.max_values, dense.max(0).values.numpy(), rtol=1e-3)
    reopened = open_latent_cache(tmp_path / "c")
    assert reopened.manifest == cache.manifest and reopened.manifest.verified_rows >= 50


def test_small_dtypes_are_used(tmp_path):
    from safetensors.torch import load_file

    sae = tiny_sae()
    x = torch.randn(4 * CONTEXT, 8)
    cache = build_latent_cache(
        tmp_path / "c", sae, "hash", [x], n_tokens=len(x), context_size=CONTEXT, verify_rows=8, seed=0
    )
    shard = load_file(tmp_path / "c" / cache.manifest.shards[0])
    assert (shard["rows"].dtype, shard["latents"].dtype, shard["values"].dtype) == (
        torch.int32,
        torch.int16,
        torch.float16,
    )


def test_a_fast_path_that_disagrees_with_encode_is_caught(tmp_path):
    sae = tiny_sae(BrokenTopK)
    x = torch.randn(4 * CONTEXT, 8)
    with pytest.raises(UserError, match="disagrees with the SAE's encode"):
        build_latent_cache(
            tmp_path / "c", sae, "hash", [x], n_tokens=len(x), context_size=CONTEXT, verify_rows=16, seed=0
        )
    assert open_latent_cache(tmp_path / "c") is None  # never marked complete


def test_a_short_activation_cache_is_an_error(tmp_path):
    x = torch.randn(2 * CONTEXT, 8)
    with pytest.raises(UserError, match="manifest says"):
        build_latent_cache(
            tmp_path / "c", tiny_sae(), "hash", [x], n_tokens=3 * CONTEXT, context_size=CONTEXT, verify_rows=4, seed=0
        )


def test_selection_is_matched_seeded_and_eligible():
    counts = {
        "trained.layer0": np.array([500, 0, 300, 199, 250, 900]),
        "random.layer0": np.array([200, 201, 0, 0, 5, 1000]),
    }
    chosen = select_latents(counts, n_latents=2, min_examples=200, seed=0)
    assert chosen == select_latents(counts, n_latents=2, min_examples=200, seed=0)
    for module, selection in chosen.items():
        assert len(selection.latents) == 2
        assert all(counts[module][i] >= 200 for i in selection.latents)
    assert chosen["random.layer0"].n_eligible == 3 and chosen["random.layer0"].n_dead == 2
    reduced = select_latents(counts, n_latents=10, min_examples=200, seed=0)
    assert {len(s.latents) for s in reduced.values()} == {3}  # the fewest eligible, in every SAE
    assert all(s.n_requested == 10 for s in reduced.values())
    with pytest.raises(UserError, match="Lower interp.min_examples"):
        select_latents(counts, n_latents=2, min_examples=950, seed=0)
