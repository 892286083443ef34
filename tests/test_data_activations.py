"""The activation cache: shards + manifest, row order, resume after an interruption, corruption detected."""

import pytest
import torch

from randsae.data.activations import ActivationCache, CacheManifest, CacheWriter, harvest
from randsae.errors import UserError

CONTEXT, D = 4, 3


def _spec(n_windows, layer=0):
    return CacheManifest(
        model="m",
        variant="trained",
        layer=layer,
        hook_name=f"layers.{layer}",
        split="train",
        n_tokens=n_windows * CONTEXT,
        d_model=D,
        dtype="float32",
        context_size=CONTEXT,
    )


def _forward(calls):
    """Fake truncated forward: activation = token id, plus the layer, on every dimension."""

    def forward(ids):
        calls.append(ids.shape[0])
        base = ids.float().unsqueeze(-1).expand(*ids.shape, D)
        return {0: base, 1: base + 100}

    return forward


def _ids(n_windows):
    return torch.arange(n_windows * CONTEXT, dtype=torch.int32).view(n_windows, CONTEXT)


def test_rows_follow_token_order_and_every_layer_comes_from_one_forward(tmp_path):
    ids, calls = _ids(10), []
    writers = {layer: CacheWriter(tmp_path / str(layer), _spec(10, layer), windows_per_shard=4) for layer in (0, 1)}
    harvest(_forward(calls), ids, writers, batch_size=2, device=torch.device("cpu"), progress=False)
    assert sum(calls) == 10, "one forward per batch feeds both layers"
    cache = ActivationCache.open(tmp_path / "0")
    assert cache.n_tokens == 40 and len(cache.manifest.shards) == 3
    torch.testing.assert_close(cache.load()[:, 0], ids.flatten().float())
    torch.testing.assert_close(ActivationCache.open(tmp_path / "1").load()[:, 1], ids.flatten().float() + 100)
    chunks = list(cache.iter_chunks(rows=6))
    assert max(chunk.shape[0] for chunk in chunks) <= 6
    torch.testing.assert_close(torch.cat(chunks), cache.load())


def test_interrupted_harvest_resumes_at_the_first_missing_shard(tmp_path):
    ids, calls = _ids(12), []
    writer = CacheWriter(tmp_path / "c", _spec(12), windows_per_shard=4)

    def failing(batch):
        if len(calls) == 4:
            raise KeyboardInterrupt
        return _forward(calls)(batch)

    with pytest.raises(KeyboardInterrupt):
        harvest(failing, ids, {0: writer}, batch_size=2, device=torch.device("cpu"), progress=False)
    with pytest.raises(UserError, match="incomplete"):
        ActivationCache.open(tmp_path / "c")
    calls.clear()
    resumed = CacheWriter(tmp_path / "c", _spec(12), windows_per_shard=4)
    assert resumed.windows_done == 8
    harvest(_forward(calls), ids, {0: resumed}, batch_size=2, device=torch.device("cpu"), progress=False)
    assert sum(calls) == 4, "only the windows of the missing shard are recomputed"
    torch.testing.assert_close(ActivationCache.open(tmp_path / "c").load()[:, 0], ids.flatten().float())


def test_a_changed_spec_starts_the_cache_over(tmp_path):
    harvest(_forward([]), _ids(4), {0: CacheWriter(tmp_path, _spec(4), 2)}, 2, torch.device("cpu"), progress=False)
    fresh = CacheWriter(tmp_path, CacheManifest(**{**_spec(4).__dict__, "variant": "control"}), 2)
    assert fresh.windows_done == 0 and not fresh.manifest.complete


def test_corrupt_shard_and_manifest_are_clear_errors(tmp_path):
    harvest(_forward([]), _ids(4), {0: CacheWriter(tmp_path, _spec(4), 2)}, 2, torch.device("cpu"), progress=False)
    shard = tmp_path / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    cache = ActivationCache.open(tmp_path)  # the cheap check: every shard there, at its recorded size
    with pytest.raises(UserError, match=r"shard_00001.safetensors is corrupt \(checksum mismatch\)"):
        cache.verify()
    shard.write_bytes(bytes(data[:-1]))
    with pytest.raises(UserError, match="shard_00001.safetensors is missing or truncated"):
        ActivationCache.open(tmp_path)
    shard.unlink()
    with pytest.raises(UserError, match="shard_00001.safetensors is missing or truncated"):
        ActivationCache.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest .* is corrupt"):
        ActivationCache.open(tmp_path)
    with pytest.raises(UserError, match="no activation cache"):
        ActivationCache.open(tmp_path / "nothing")
