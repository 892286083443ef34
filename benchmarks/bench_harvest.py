"""Harvest throughput against a bare truncated forward of the same model, measured in one run.

The bare forward runs only blocks 0..deepest (the later ones are cut off the model) with no hooks and
writes nothing; the harvest is randsae's real path: hooks on every requested layer, a stop exception after
the deepest, and every layer's activations written to the on-disk cache with checksums.

    python benchmarks/bench_harvest.py [--layers 3 10 17] [--windows 32]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from randsae.data.activations import CacheManifest, CacheWriter, harvest
from randsae.data.text import EMBEDDED, TextConfig, iter_texts
from randsae.data.tokens import TokenConfig, load_tokens, tokenize_splits
from randsae.models.hookpoints import find_blocks, residual_stream
from randsae.models.load import ModelConfig, load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 10, 17])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device("cpu")
    lm = load_model(ModelConfig(name=EMBEDDED), device)
    path, blocks = find_blocks(lm.model)
    cfg = TokenConfig(context_size=256, train_tokens=args.windows * 256, heldout_tokens=256)
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train.safetensors"
        tokenize_splits(iter_texts(TextConfig(source=EMBEDDED)), lm.tokenizer, cfg, {"train": train})
        ids = load_tokens(train).long()
    deepest = max(args.layers)

    bare = copy.deepcopy(lm.model.model)
    bare.layers = bare.layers[: deepest + 1]

    @torch.no_grad()
    def bare_forward() -> None:
        for start in range(0, ids.shape[0], args.batch):
            bare(input_ids=ids[start : start + args.batch], use_cache=False)

    def randsae_harvest() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            writers = {}
            for layer in args.layers:
                spec = CacheManifest(
                    model="smollm2",
                    variant="trained",
                    layer=layer,
                    hook_name=f"{path}.{layer}",
                    split="train",
                    n_tokens=ids.numel(),
                    d_model=lm.model.config.hidden_size,
                    dtype="float32",
                    context_size=256,
                )
                writers[layer] = CacheWriter(Path(tmp) / str(layer), spec, windows_per_shard=64)
            harvest(
                lambda batch: residual_stream(lm.model, blocks, args.layers, batch),
                ids,
                writers,
                args.batch,
                device,
                progress=False,
            )

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    bare_forward()  # warm-up
    # Alternate the two and keep each one's best round, so load from other processes hits both alike.
    rounds = [(timed(bare_forward), timed(randsae_harvest)) for _ in range(args.repeats)]
    t_bare, t_harvest = min(r[0] for r in rounds), min(r[1] for r in rounds)
    n = ids.numel()
    print(
        f"model: SmolLM2-135M (30 blocks), layers {args.layers}, {n} tokens, batch {args.batch} x 256, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"bare truncated forward (blocks 0..{deepest}): {n / t_bare:8.0f} tok/s")
    print(f"randsae harvest ({len(args.layers)} layers to disk):  {n / t_harvest:8.0f} tok/s")
    print(f"harvest / bare forward: {t_bare / t_harvest:.3f}")


if __name__ == "__main__":
    main()
