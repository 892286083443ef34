"""TopK SAE quality: held-out explained variance of our trainer against EleutherAI sparsify at equal tokens.

On one SAE site of a run (by default the default run's trained layer 10), both trainers get the run's width,
k, batch size, token budget and peak learning rate, and the very same batches in the same order: randsae's
seeded shuffle of the train cache, BOS rows left out. Ours is `train_sae` exactly as the pipeline calls it
(same seed: the run's own SAE). sparsify's `SparseCoder` is stepped as its `Trainer` steps it: b_dec at the
first batch's mean, decoder rows renormalized, forward, FVU backward, parallel gradient removed, torch Adam
with its linear warm-up (our warm-up length) and linear decay to 0. Both are scored by the pipeline's own
held-out metric (`reconstruction_on_heldout`: pooled explained variance about the mean, BOS left out); the
sparsify coder is copied into a TopKSAE for that, after checking the copy reconstructs as sparsify does.

    randsae run --out RUN                          # the default run (its caches are what is read)
    python benchmarks/bench_sae_quality.py RUN     # trained layer 10, the run's seed
    python benchmarks/bench_sae_quality.py RUN --variant rerandomized --seeds 0 1 2
    python benchmarks/bench_sae_quality.py RUN --encoder-init-norm 0.577 --decoder-lr-scale 1   # the references' start
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import torch

from randsae.config import load_run_config
from randsae.data.activations import ActivationCache
from randsae.data.tokens import counted_rows
from randsae.experiment import reconstruction_on_heldout
from randsae.run_dir import RunDir, Site
from randsae.sae import SAEConfig, TopKSAE, TrainConfig, default_lr, train_sae
from randsae.sae.trainer import TrainLog, shuffled_buffers


def ours(cache: ActivationCache, cfg: TrainConfig, sae_cfg: SAEConfig, seed: int) -> tuple[TopKSAE, TrainLog]:
    result = train_sae(cache, cfg, sae_cfg, seed=seed, progress=False)
    assert isinstance(result.sae, TopKSAE)
    return result.sae, result.log


def sparsify_trained(
    cache: ActivationCache, cfg: TrainConfig, sae_cfg: SAEConfig, seed: int, log: TrainLog
) -> tuple[TopKSAE, torch.nn.Module]:
    """sparsify's SparseCoder trained on our batches with our schedule's length; also as a TopKSAE."""
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    buffers = shuffled_buffers(cache, cfg, torch.Generator().manual_seed(seed))
    batches = (batch for buffer in buffers for batch in buffer.split(cfg.batch_size))
    torch.manual_seed(seed)
    coder = SparseCoder(sae_cfg.d_in, SparseCoderConfig(num_latents=sae_cfg.d_sae, k=sae_cfg.k))
    adam = torch.optim.Adam(coder.parameters(), lr=log.peak_lr)
    schedule = get_linear_schedule_with_warmup(adam, log.warmup_steps, log.steps)
    for step, x in zip(range(log.steps), batches, strict=False):
        if step == 0:
            coder.b_dec.data = x.mean(0)
        coder.set_decoder_norm_to_unit_norm()
        coder(x).fvu.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()
        schedule.step()
    sae = TopKSAE(sae_cfg)
    with torch.no_grad():
        sae.W_enc.copy_(coder.encoder.weight.T)
        sae.b_enc.copy_(coder.encoder.bias)
        sae.W_dec.copy_(coder.W_dec)
        sae.b_dec.copy_(coder.b_dec)
    return sae.eval(), coder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run directory whose train and held-out caches of the site exist")
    parser.add_argument("--variant", default="trained")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", help="SAE seeds (default: the run's seed)")
    parser.add_argument(
        "--encoder-init-norm",
        type=float,
        default=TopKSAE.encoder_init_norm,
        help="our encoder columns' norm at initialization (1: randsae before it matched the reference trainers)",
    )
    parser.add_argument(
        "--decoder-lr-scale",
        type=float,
        default=TopKSAE.decoder_lr_scale,
        help="our decoder's learning rate as a multiple of the run's (1: the reference trainers')",
    )
    args = parser.parse_args()
    run = RunDir.existing(args.run)
    config = load_run_config(run)
    site = Site(args.variant, args.layer)
    train = ActivationCache.open(run.activations(site, "train"))
    heldout = ActivationCache.open(run.activations(site, "heldout"))
    counted = counted_rows(run.tokens("heldout"))  # the held-out rows the run's metrics use
    d = train.manifest.d_model
    sae_cfg = dataclasses.replace(config.sae, architecture="topk").sae_config(d)
    cfg = dataclasses.replace(
        config.train,
        context_size=train.manifest.context_size,
        activations="cache",
        encoder_init_norm=args.encoder_init_norm,
        decoder_lr_scale=args.decoder_lr_scale,
    )
    print(
        f"{args.variant} layer {args.layer}: d_sae {sae_cfg.d_sae}, k {sae_cfg.k}, batch {cfg.batch_size}, "
        f"{cfg.total_tokens} tokens, peak lr {cfg.lr or default_lr(sae_cfg.d_sae):.2g}; "
        f"our initial encoder norm {args.encoder_init_norm:.3f}, decoder lr x{args.decoder_lr_scale:g}; "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'seed':>4} {'ours EV':>8} {'sparsify EV':>12} {'ours - sparsify':>16} {'ours s':>7} {'sparsify s':>11}")
    rows = []
    for seed in args.seeds or [config.seed]:
        start = time.perf_counter()
        sae, log = ours(train, cfg, sae_cfg, seed)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs, coder = sparsify_trained(train, cfg, sae_cfg, seed, log)
        theirs_s = time.perf_counter() - start
        x = next(itertools.islice(heldout.iter_chunks(1024), 1))
        with torch.no_grad():
            assert torch.allclose(theirs(x), coder(x).sae_out, rtol=1e-4, atol=1e-3), "the copy reconstructs alike"
        device = torch.device("cpu")
        ours_ev, theirs_ev = (
            reconstruction_on_heldout(s, heldout, counted, device).explained_variance_pooled for s in (sae, theirs)
        )
        rows.append((ours_ev, theirs_ev))
        print(
            f"{seed:>4} {ours_ev:>8.4f} {theirs_ev:>12.4f} {ours_ev - theirs_ev:>+16.4f} "
            f"{ours_s:>7.0f} {theirs_s:>11.0f}",
            flush=True,
        )
    if len(rows) > 1:
        mean_ours, mean_theirs = (sum(row[i] for row in rows) / len(rows) for i in (0, 1))
        print(f"{'mean':>4} {mean_ours:>8.4f} {mean_theirs:>12.4f} {mean_ours - mean_theirs:>+16.4f}")


if __name__ == "__main__":
    main()
