"""Sparse latent activations of one SAE over the held-out tokens, streamed to disk and checked.

Only the nonzero activations are kept: a shard holds `rows` (int32, the activation-cache row = token
position in `tokens/heldout.safetensors` flattened), `latents` (int16 when d_sae fits, else int32) and
`values` (float16, float32 only when a value overflows float16). BOS rows (position 0) are left out, as in
SAE training: their activations are attention-sink outliers.

Before anything is scored the cache is checked against the SAE's own `encode()` on a seeded sample of
rows read back from disk, so a broken fast path, dtype overflow or stale cache stops the run
(the Gemma-2 replication of the paper was wrong for exactly this reason).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from randsae.atomic import file_sha256, save_safetensors_atomic, write_text_atomic
from randsae.data.tokens import not_bos
from randsae.errors import UserError
from randsae.sae.base import WEIGHTS_FILE, SparseAutoencoder

MANIFEST = "manifest.json"
STATS_FILE = "stats.safetensors"
FLOAT16_MAX = float(torch.finfo(torch.float16).max)


@dataclasses.dataclass(frozen=True)
class LatentCacheManifest:
    """What a latent-cache folder holds; `sae_sha256` ties it to the SAE weights it was computed from."""

    n_tokens: int
    context_size: int
    d_sae: int
    sae_sha256: str
    n_entries: int
    shards: tuple[str, ...]
    verified_rows: int
    """Rows re-encoded with `encode()` and matched against the stored entries."""


class LatentEntries(NamedTuple):
    """The nonzero activations of one latent, in row order."""

    rows: np.ndarray
    """int64 [n]: activation-cache rows (window = row // context_size, position = row % context_size)."""
    values: np.ndarray
    """float32 [n]: activation values (> 0)."""


class LatentCache(NamedTuple):
    """An opened latent cache: manifest, per-latent firing counts and maxima, and the shard folder."""

    folder: Path
    manifest: LatentCacheManifest
    counts: np.ndarray
    """int64 [d_sae]: positions each latent fires on."""
    max_values: np.ndarray
    """float32 [d_sae]: each latent's largest activation (0 for a dead latent)."""


def sae_fingerprint(sae_folder: Path) -> str:
    """sha256 of the SAE's weight file."""
    return file_sha256(sae_folder / WEIGHTS_FILE)


def open_latent_cache(folder: Path) -> LatentCache | None:
    """The cache in `folder`, or None when it is missing, was never completed or is damaged (it is then
    built again: it is derived from the SAE and the held-out activations alone)."""
    if not (folder / MANIFEST).is_file() or not (folder / STATS_FILE).is_file():
        return None
    try:
        raw = json.loads((folder / MANIFEST).read_text())
        manifest = LatentCacheManifest(**{**raw, "shards": tuple(raw["shards"])})
        stats = load_file(folder / STATS_FILE)
        for name in manifest.shards:  # the header parse catches a missing or truncated shard
            with safe_open(folder / name, "pt"):
                pass
    except Exception:  # JSON, field and safetensors errors alike: any damage means rebuild
        return None
    return LatentCache(folder, manifest, stats["counts"].numpy(), stats["max_values"].numpy())


@torch.no_grad()
def build_latent_cache(
    folder: Path,
    sae: SparseAutoencoder,
    sae_sha256: str,
    chunks: Iterable[Tensor],
    *,
    n_tokens: int,
    context_size: int,
    verify_rows: int,
    seed: int,
    progress: bool = False,
    keep: Tensor | None = None,
) -> LatentCache:
    """Encode every chunk of activation rows, write the nonzero entries as shards, then verify a sample.

    Only the rows where `keep` (bool [n_tokens], `randsae.data.tokens.counted`) are stored; None leaves out
    the BOS rows. The manifest is written last, so an interrupted build is simply redone.
    """
    if keep is None:
        keep = not_bos(torch.arange(n_tokens), context_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    d_sae = sae.cfg.d_sae
    latent_dtype = torch.int16 if d_sae <= torch.iinfo(torch.int16).max else torch.int32
    check_rows = _verification_sample(n_tokens, context_size, verify_rows, seed)
    counts = torch.zeros(d_sae, dtype=torch.int64)
    max_values = torch.zeros(d_sae)
    shards: list[str] = []
    checked_x: list[Tensor] = []
    start = 0
    device = next(sae.parameters()).device
    for chunk in _progress(chunks, progress, f"latent cache {folder.name}"):
        stop = start + chunk.shape[0]
        sparse, _ = sae.encode_sparse(chunk.to(device))
        offsets, latents, values = sparse.to("cpu")
        rows = offsets + start
        stored = keep[rows] & (values > 0)
        rows, latents, values = rows[stored], latents[stored], values[stored].float()
        counts += torch.bincount(latents, minlength=d_sae)
        max_values.scatter_reduce_(0, latents, values, reduce="amax")
        value_dtype = torch.float16 if values.numel() == 0 or values.max() <= FLOAT16_MAX else torch.float32
        name = f"shard_{len(shards):05d}.safetensors"
        save_safetensors_atomic(
            folder / name,
            {"rows": rows.to(torch.int32), "latents": latents.to(latent_dtype), "values": values.to(value_dtype)},
        )
        shards.append(name)
        in_chunk = check_rows[(check_rows >= start) & (check_rows < stop)]
        checked_x.append(chunk[torch.as_tensor(in_chunk - start, dtype=torch.long)])
        start = stop
    if start != n_tokens:
        raise UserError(
            f"activation cache gave {start} rows but its manifest says {n_tokens}",
            "Delete the activation cache and re-run the harvest",
        )
    reference = sae.encode(torch.cat(checked_x).to(device)).cpu() if checked_x else torch.zeros(0, d_sae)
    save_safetensors_atomic(folder / STATS_FILE, {"counts": counts, "max_values": max_values})
    manifest = LatentCacheManifest(
        n_tokens=n_tokens,
        context_size=context_size,
        d_sae=d_sae,
        sae_sha256=sae_sha256,
        n_entries=int(counts.sum()),
        shards=tuple(shards),
        verified_rows=len(check_rows),
    )
    cache = LatentCache(folder, manifest, counts.numpy(), max_values.numpy())
    verify_against_encode(cache, check_rows, reference, keep)
    write_text_atomic(folder / MANIFEST, json.dumps(dataclasses.asdict(manifest), indent=1))
    return cache


def verify_against_encode(cache: LatentCache, rows: np.ndarray, reference: Tensor, keep: Tensor) -> None:
    """Raise UserError unless the entries stored for `rows` equal `reference` = sae.encode(x[rows]) up to
    float16 rounding (rows not kept, BOS among them, are expected to be empty)."""
    stored = torch.zeros_like(reference)
    position = {int(row): i for i, row in enumerate(rows)}
    for name in cache.manifest.shards:
        shard = load_file(cache.folder / name)
        hit = np.isin(shard["rows"].numpy(), rows)
        if hit.any():
            where = torch.as_tensor([position[int(r)] for r in shard["rows"].numpy()[hit]], dtype=torch.long)
            stored[where, shard["latents"][hit].long()] = shard["values"][hit].float()
    expected = reference.clone()
    expected[~keep[torch.as_tensor(rows, dtype=torch.long)]] = 0
    tolerance = 2e-3 * expected.abs() + 1e-4 * expected.abs().amax(dim=1, keepdim=True) + 1e-6
    bad = ((stored - expected).abs() > tolerance).any(dim=1)
    if bad.any():
        diff = float((stored - expected).abs().max())
        raise UserError(
            f"latent cache {cache.folder} disagrees with the SAE's encode() on {int(bad.sum())} of "
            f"{len(rows)} sampled rows (max abs difference {diff:.3g})",
            "Delete that folder and re-run; if it persists the SAE's fast encode path or its "
            "conversion is broken, so fix the SAE before scoring",
        )


def load_latent_entries(cache: LatentCache, latents: Sequence[int]) -> dict[int, LatentEntries]:
    """All nonzero activations of the given latents, one shard pass."""
    wanted = np.asarray(sorted(set(latents)), dtype=np.int64)
    parts_rows, parts_latents, parts_values = [], [], []
    for name in cache.manifest.shards:
        shard = load_file(cache.folder / name)
        shard_latents = shard["latents"].numpy().astype(np.int64)
        hit = np.isin(shard_latents, wanted)
        parts_rows.append(shard["rows"].numpy()[hit].astype(np.int64))
        parts_latents.append(shard_latents[hit])
        parts_values.append(shard["values"].float().numpy()[hit])
    rows = np.concatenate(parts_rows) if parts_rows else np.zeros(0, np.int64)
    owner = np.concatenate(parts_latents) if parts_latents else np.zeros(0, np.int64)
    values = np.concatenate(parts_values) if parts_values else np.zeros(0, np.float32)
    order = np.lexsort((rows, owner))
    rows, owner, values = rows[order], owner[order], values[order]
    bounds = np.searchsorted(owner, wanted, side="left"), np.searchsorted(owner, wanted, side="right")
    return {
        int(latent): LatentEntries(rows[lo:hi], values[lo:hi]) for latent, lo, hi in zip(wanted, *bounds, strict=True)
    }


def _verification_sample(n_tokens: int, context_size: int, verify_rows: int, seed: int) -> np.ndarray:
    """Sorted distinct rows to re-encode, always including a BOS row (which must come out empty)."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(n_tokens, size=min(verify_rows, n_tokens), replace=False) if verify_rows else np.zeros(0)
    return np.unique(np.concatenate([np.asarray(sample, dtype=np.int64), [0]])) if n_tokens else np.zeros(0, np.int64)


def _progress(items: Iterable, enabled: bool, description: str) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="chunk", leave=False)
