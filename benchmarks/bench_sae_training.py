"""TopK SAE training throughput: ours against EleutherAI sparsify, and our fraction of the fp32 roofline.

Everything is measured in one run on the same synthetic activations (d 576, k 32, batch 4096) so the
ratios hold on whatever machine runs it. Rounds alternate ours / sparsify and the best round of each is
kept, which damps noise from other processes sharing the CPU.

    python benchmarks/bench_sae_training.py                 # expansions 16 and 64
    python benchmarks/bench_sae_training.py --expansions 16 --steps 3 --rounds 1

"selection" is `TrainConfig.topk_selection_dtype`: bfloat16 picks the top k with a bf16 encoder product
(AMX on this CPU) and keeps float32 values and gradients; its roofline fraction is still against fp32.

Roofline: tokens/s x 2·d·m FLOPs (the one dense product a TopK step cannot avoid) against a large fp32
matmul timed in every round (best kept). sparsify's step is its trainer's: decoder renorm, forward, FVU backward, parallel
gradient removal, torch Adam (its eager CPU path: no Triton here).
"""

from __future__ import annotations

import argparse
import time

import torch

from randsae.sae import SAEConfig, TensorSource, TrainConfig, train_sae

D_MODEL, K, BATCH = 576, 32, 4096


def synthetic_activations(n_tokens: int, seed: int = 0) -> torch.Tensor:
    """Residual-stream-like rows [n, 576]: 48 active of 8192 directions, heavy-tailed sizes, an offset."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(8192, D_MODEL, generator=g), dim=1)
    active = torch.randint(0, 8192, (n_tokens, 48), generator=g)
    sizes = torch.empty(n_tokens, 48).exponential_(generator=g)
    x = torch.nn.functional.embedding_bag(active, directions, per_sample_weights=sizes, mode="sum")
    return x + 0.1 * torch.randn(n_tokens, D_MODEL, generator=g) + torch.randn(D_MODEL, generator=g)


def matmul_gflops(size: int = 4096, repeats: int = 3) -> float:
    """Best-of fp32 GFLOP/s of a size³ matmul: the machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def ours_tokens_per_s(data: torch.Tensor, d_sae: int, steps: int, selection_dtype: str | None = None) -> float:
    """The real trainer (shuffling, schedule, clipping, renorm included) for `steps` batches."""
    cfg = TrainConfig(batch_size=BATCH, total_tokens=steps * BATCH, warmup_steps=0, buffer_tokens=data.shape[0],
                      topk_selection_dtype=selection_dtype)
    result = train_sae(TensorSource(data), cfg, SAEConfig("topk", D_MODEL, d_sae, k=K), seed=0, progress=False)
    return result.log.tokens_per_s


def sparsify_tokens_per_s(data: torch.Tensor, d_sae: int, steps: int) -> float:
    """sparsify's SparseCoder trained the way its Trainer steps it; one untimed warm-up step."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(D_MODEL, SparseCoderConfig(num_latents=d_sae, k=K))
    sae.b_dec.data = data[:BATCH].mean(0)
    adam = torch.optim.Adam(sae.parameters(), lr=2e-4 / (d_sae / 2**14) ** 0.5)

    def step(x: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        sae(x).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()

    batches = data.split(BATCH)
    step(batches[0])
    seconds = _timed(lambda: [step(batches[i % len(batches)]) for i in range(steps)])
    return steps * BATCH / seconds


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expansions", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    args = parser.parse_args()
    try:
        import sparsify  # noqa: F401
    except ImportError as error:
        sparsify = None
        print(f"sparsify unavailable ({error}); install with `pip install --no-deps eai-sparsify` plus einops, "
              "natsort, simple-parsing, docstring-parser, schedulefree")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d={D_MODEL} k={K} batch={BATCH}")
    peak = 0.0
    data = synthetic_activations(BATCH * args.steps)
    header = f"{'expansion':>9} {'d_sae':>6} {'selection':>9} {'ours tok/s':>11} {'sparsify tok/s':>15} " \
             f"{'ours/sparsify':>14} {'ours GFLOP/s':>13} {'of roofline':>12}"
    results = []
    for expansion in args.expansions:
        d_sae = D_MODEL * expansion
        ours, ours_bf16, theirs = 0.0, 0.0, 0.0
        for _ in range(args.rounds):
            peak = max(peak, matmul_gflops())
            ours = max(ours, ours_tokens_per_s(data, d_sae, args.steps))
            ours_bf16 = max(ours_bf16, ours_tokens_per_s(data, d_sae, args.steps, "bfloat16"))
            if sparsify is not None:
                theirs = max(theirs, sparsify_tokens_per_s(data, d_sae, args.steps))
        results += [(expansion, d_sae, "float32", ours, theirs), (expansion, d_sae, "bfloat16", ours_bf16, theirs)]
        print(f"  done expansion {expansion}", flush=True)
    print(f"roofline: fp32 4096^3 matmul, best of all rounds: {peak:.1f} GFLOP/s")
    print(header)
    for expansion, d_sae, selection, ours, theirs in results:
        gflops = ours * 2 * D_MODEL * d_sae / 1e9
        ratio = f"{ours / theirs:.2f}x" if theirs else "n/a"
        print(f"{expansion:>9} {d_sae:>6} {selection:>9} {ours:>11.0f} {theirs or float('nan'):>15.0f} "
              f"{ratio:>14} {gflops:>13.1f} {gflops / peak:>11.0%}")


if __name__ == "__main__":
    main()
