"""TopK SAE training throughput: ours against EleutherAI sparsify, and our fraction of the fp32 roofline.

Everything is measured in one run on the same synthetic activations (d 576, k 32, batch 4096) so the
ratios hold on whatever machine runs it. Single optimizer steps of each trainer are interleaved (ours,
ours with bf16 selection, sparsify, a matmul, again...) and the median step time kept, so load from other
processes sharing the CPU hits all of them alike.

    python benchmarks/bench_sae_training.py                 # expansions 16 and 64, 8 steps each
    python benchmarks/bench_sae_training.py --expansions 16 --steps 3

"ours bf16-select" is `TrainConfig(topk_selection_dtype="bfloat16")`: a bf16 encoder product picks the top
k (AMX on this CPU), values and gradients stay float32; its roofline fraction is still against fp32.

Roofline: tokens/s x 2·d·m FLOPs (the one dense product a TopK step cannot avoid) against a 2048³ fp32
matmul timed between the steps (best kept). sparsify's step is its trainer's: decoder renorm, forward,
FVU backward, parallel gradient removal, torch Adam (its eager CPU path: no Triton here).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from randsae.sae import SAEConfig, TrainConfig, build_sae, default_lr
from randsae.sae.topk import TopKSAE
from randsae.sae.trainer import train_step

D_MODEL, K, BATCH = 576, 32, 4096


def synthetic_activations(n_tokens: int, seed: int = 0) -> torch.Tensor:
    """Residual-stream-like rows [n, 576]: 48 active of 8192 directions, heavy-tailed sizes, an offset."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(8192, D_MODEL, generator=g), dim=1)
    active = torch.randint(0, 8192, (n_tokens, 48), generator=g)
    sizes = torch.empty(n_tokens, 48).exponential_(generator=g)
    x = torch.nn.functional.embedding_bag(active, directions, per_sample_weights=sizes, mode="sum")
    return x + 0.1 * torch.randn(n_tokens, D_MODEL, generator=g) + torch.randn(D_MODEL, generator=g)


def matmul_gflops(size: int = 2048) -> float:
    """fp32 GFLOP/s of one size³ matmul; the best over the run is the machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / _timed(lambda: a @ b) / 1e9


def ours_step(data: torch.Tensor, d_sae: int, selection_dtype: str | None) -> Callable[[torch.Tensor], object]:
    """The trainer's own step (`train_step`: loss, backward, parallel-gradient removal, clip, fused Adam,
    renorm) on a fresh SAE with b_dec at the data mean."""
    cfg = TrainConfig(batch_size=BATCH, topk_selection_dtype=selection_dtype)
    sae = build_sae(SAEConfig("topk", D_MODEL, d_sae, k=K), seed=0)
    assert isinstance(sae, TopKSAE)
    sae.selection_dtype = getattr(torch, selection_dtype) if selection_dtype else None
    sae.init_from_data(data)
    adam = torch.optim.Adam(sae.parameters(), lr=default_lr(d_sae), fused=True)
    return lambda x: train_step(sae, adam, x, cfg)


def sparsify_step(data: torch.Tensor, d_sae: int) -> Callable[[torch.Tensor], object]:
    """sparsify's SparseCoder stepped the way its Trainer steps it (no AuxK, torch Adam)."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(D_MODEL, SparseCoderConfig(num_latents=d_sae, k=K))
    sae.b_dec.data = data.mean(0)
    adam = torch.optim.Adam(sae.parameters(), lr=default_lr(d_sae))

    def step(x: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        sae(x).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()

    return step


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expansions", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per trainer (interleaved; median kept)")
    args = parser.parse_args()
    try:
        import sparsify
    except ImportError as error:
        sparsify = None
        print(
            f"sparsify unavailable ({error}); install with `pip install --no-deps eai-sparsify` plus einops, "
            "natsort, simple-parsing, docstring-parser, schedulefree"
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d={D_MODEL} k={K} batch={BATCH}")
    peak = matmul_gflops()  # also warms up the BLAS threads
    data = synthetic_activations(BATCH * args.steps)
    batches = data.split(BATCH)
    header = (
        f"{'expansion':>9} {'d_sae':>6} {'trainer':>17} {'tok/s':>7} {'vs sparsify':>12} "
        f"{'GFLOP/s (2dm)':>14} {'of roofline':>12}"
    )
    results = []
    for expansion in args.expansions:
        d_sae = D_MODEL * expansion
        steps = {"ours float32": ours_step(data, d_sae, None), "ours bf16-select": ours_step(data, d_sae, "bfloat16")}
        if sparsify is not None:
            steps["sparsify"] = sparsify_step(data, d_sae)
        seconds: dict[str, list[float]] = {name: [] for name in steps}
        for step in steps.values():
            step(batches[0])  # warm-up: allocations, optimizer state
        for i in range(args.steps):
            peak = max(peak, matmul_gflops())
            for name, step in steps.items():
                seconds[name].append(_timed(step, batches[i % len(batches)]))
        medians = {name: statistics.median(times) for name, times in seconds.items()}
        for name, median in medians.items():
            results.append((expansion, d_sae, name, BATCH / median, medians.get("sparsify", 0.0) / median))
        print(f"  done expansion {expansion}", flush=True)
        del steps
    print(f"roofline: fp32 2048^3 matmul, best between the steps: {peak:.1f} GFLOP/s")
    print(header)
    for expansion, d_sae, name, tokens_per_s, vs_sparsify in results:
        gflops = tokens_per_s * 2 * D_MODEL * d_sae / 1e9
        ratio = f"{vs_sparsify:.2f}x" if vs_sparsify else "n/a"
        print(
            f"{expansion:>9} {d_sae:>6} {name:>17} {tokens_per_s:>7.0f} {ratio:>12} {gflops:>14.1f} "
            f"{gflops / peak:>11.0%}"
        )


if __name__ == "__main__":
    main()
