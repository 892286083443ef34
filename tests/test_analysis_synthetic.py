"""A synthetic run directory with known latents, for the analysis tests (and the tests of the builder itself).

Activations are x = a @ D + noise + offset, D orthonormal dictionary rows and the noise orthogonal to them,
so a hand-built ReLU SAE with decoder D and encoder D^T recovers the planted latent activations a exactly.
Latent kinds:
  single     fires with a fixed value on one token
  lookup     token-dependent value on a set of four tokens (multi-token, but a pure function of the token)
  positional a smooth function of the position, on every token
  context    fires on a set of three tokens only when the previous token is in the first half of the vocabulary
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import randsae.sae.relu  # noqa: F401  (registers the relu_l1 architecture for load_sae)
from randsae.data.activations import CacheManifest, CacheWriter
from randsae.run_dir import RunDir, Site
from randsae.data.tokens import save_tokens
from randsae.sae.base import SAEConfig
from randsae.sae.relu import ReluSAE

VOCAB = 40
CONTEXT = 33
D_IN = 64
STRUCTURED = {"single": 6, "lookup": 6, "positional": 6, "context": 6}
TOKEN_ONLY = {"single": 6, "lookup": 18}


def latent_kinds(kinds: dict[str, int]) -> list[str]:
    return [kind for kind, count in kinds.items() for _ in range(count)]


def planted_activations(input_ids: np.ndarray, kinds: list[str], seed: int) -> np.ndarray:
    """a [n_windows * CONTEXT, n_latents] for the planted latent kinds (BOS rows included, zero)."""
    rng = np.random.default_rng(seed)
    n_windows = input_ids.shape[0]
    tokens = input_ids.reshape(-1)
    position = np.tile(np.arange(CONTEXT), n_windows)
    previous = np.roll(input_ids, 1, axis=1).reshape(-1)
    acts = np.zeros((tokens.size, len(kinds)))
    for j, kind in enumerate(kinds):
        chosen = rng.choice(np.arange(1, VOCAB), size=4, replace=False)
        if kind == "single":
            acts[:, j] = 2.0 * (tokens == chosen[0])
        elif kind == "lookup":
            values = np.zeros(VOCAB)
            values[chosen] = rng.uniform(0.5, 2.0, size=4)
            acts[:, j] = values[tokens]
        elif kind == "positional":
            phase = rng.uniform(0, 2 * np.pi)
            acts[:, j] = 1.0 + np.sin(2 * np.pi * position / (CONTEXT - 1) + phase)
        elif kind == "context":
            acts[:, j] = 2.0 * np.isin(tokens, chosen[:3]) * (previous < VOCAB // 2)
    acts[position == 0] = 0.0
    return acts


def build_run(root: Path, variants: dict[str, dict[str, int]], layers=(0, 1), n_windows=(96, 64),
              noise=0.5, seed=0) -> Path:
    """Write tokens, activation caches and exact SAEs for every variant x layer; returns the run dir.

    `noise` is the noise variance relative to the planted variance, so every variant's exact SAE explains
    about the same share of variance (SAE quality alike, as the paper found for trained and random models).
    """
    rng = np.random.default_rng(seed)
    ids = {split: rng.integers(1, VOCAB, size=(n, CONTEXT)) for split, n in zip(("train", "heldout"), n_windows)}
    for split in ids:
        ids[split][:, 0] = 0  # BOS
    for split, v in ids.items():
        save_tokens(root / "tokens" / f"{split}.safetensors", torch.from_numpy(v).int())
    for v_index, (variant, kinds) in enumerate(variants.items()):
        names = latent_kinds(kinds)
        for layer in layers:
            layer_seed = 1000 * v_index + layer
            basis = np.linalg.qr(np.random.default_rng(layer_seed).normal(size=(D_IN, D_IN)))[0].T
            dictionary, noise_basis = basis[:len(names)], basis[len(names):]
            offset = np.random.default_rng(layer_seed + 1).normal(size=D_IN)
            signal_variance = planted_activations(ids["train"], names, seed=layer_seed).var(0).sum()
            noise_std = np.sqrt(noise * signal_variance / noise_basis.shape[0])
            for s_index, split in enumerate(("train", "heldout")):
                acts = planted_activations(ids[split], names, seed=layer_seed)
                noise_rng = np.random.default_rng(layer_seed + 10 + s_index)
                x = acts @ dictionary + noise_std * noise_rng.normal(size=(acts.shape[0], noise_basis.shape[0])) @ noise_basis
                write_cache(root, variant, layer, split, (x + offset).astype(np.float32))
            sae = ReluSAE(SAEConfig("relu_l1", D_IN, len(names), l1_coefficient=0.0,
                                    metadata={"variant": variant, "layer": layer, "context_size": CONTEXT}))
            with torch.no_grad():
                sae.W_dec.copy_(torch.from_numpy(dictionary))
                sae.W_enc.copy_(torch.from_numpy(dictionary.T))
                sae.b_enc.zero_()
                sae.b_dec.copy_(torch.from_numpy(offset))
            sae.save(root / "saes" / variant / f"layer{layer}")
    return root


def write_cache(root: Path, variant: str, layer: int, split: str, x: np.ndarray) -> None:
    spec = CacheManifest(model="synthetic", variant=variant, layer=layer, hook_name=f"layer{layer}", split=split,
                         n_tokens=x.shape[0], d_model=x.shape[1], dtype="float32", context_size=CONTEXT)
    writer = CacheWriter(RunDir(root).activations(Site(variant, layer), split), spec, windows_per_shard=40)
    windows = torch.from_numpy(x).reshape(-1, CONTEXT, x.shape[1])
    for start in range(0, windows.shape[0], 16):
        writer.add(windows[start:start + 16])
    writer.finish()


@pytest.fixture
def structured_run(tmp_path: Path) -> Path:
    return build_run(tmp_path, {"trained": STRUCTURED, "step0": TOKEN_ONLY})


def test_exact_sae_recovers_the_planted_activations(structured_run: Path):
    from randsae.data.activations import ActivationCache
    from randsae.data.tokens import load_tokens
    from randsae.sae.base import load_sae

    sae = load_sae(structured_run / "saes" / "trained" / "layer1")
    x = ActivationCache.open(RunDir(structured_run).activations(Site("trained", 1), "heldout")).load()
    ids = load_tokens(structured_run / "tokens" / "heldout.safetensors").numpy()
    expected = planted_activations(ids, latent_kinds(STRUCTURED), seed=1)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), expected, atol=1e-4)
    assert json.loads((structured_run / "saes" / "trained" / "layer1" / "cfg.json").read_text())["metadata"]["layer"] == 1
