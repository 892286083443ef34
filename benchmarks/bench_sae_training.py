"""SAE training speed: TopK against sparsify and the fp32 roofline; every architecture against SAELens.

Everything is measured in one run on the same synthetic activations (d 576, k 32, batch 4096) so the
ratios hold on whatever machine runs it. Single optimizer steps of each trainer are interleaved (ours,
ours with bf16 selection, sparsify, a matmul, again...) and the median step time kept, so load from other
processes sharing the CPU hits all of them alike.

    python benchmarks/bench_sae_training.py                 # expansions 16 and 64, 8 steps; all architectures
    python benchmarks/bench_sae_training.py --expansions 16 --steps 3 --architectures topk jumprelu

"ours bf16-select" is `TrainConfig(topk_selection_dtype="bfloat16")`: a bf16 encoder product picks the top
k (AMX on this CPU), values and gradients stay float32; its roofline fraction is still against fp32.

Roofline: tokens/s x 2·d·m FLOPs (the one dense product a TopK step cannot avoid) against a 2048³ fp32
matmul timed between the steps (best kept). sparsify's step is its trainer's: decoder renorm, forward,
FVU backward, parallel gradient removal, torch Adam (its eager CPU path: no Triton here).

Every architecture against SAELens's trainer (the second table): step throughput, and held-out EV and L0 at
equal tokens, on the same synthetic activations for both: ours is `train_step` (the trainer's step),
SAELens's is its `SAETrainer._train_step` (training forward pass, backward, gradient clipping at 1, torch
Adam), both on the same batches with the same lr schedule (linear warm-up over 10% of the steps, then linear
decay to 0) and the same b_dec start (the data mean). Steps of the two are interleaved, so load from other
processes hits both alike. Quality is the held-out explained variance (about the mean) and L0 of each
trained SAE's inference code; SAELens's is its saved inference model (BatchTopKs as JumpReLU), loaded back
with `SAE.load_from_disk`.

The sparsity settings are the same loss in each library's units: JumpReLU's L0 price λ (ours: FVU per
latent) is λ·(the batch's variance per token) in SAELens's summed squared error; an L1 λ (ours: means over
every element) is λ·d_in/d_sae in SAELens's; JumpReLU's initial threshold and bandwidth are scaled by the
data's norm as ours are. AuxK is off in both (its default here), so the comparison is the architectures'.

Matched L0 (`--match-l0 L0...`, in place of the second table): JumpReLU, gated and ReLU-L1 set their L0
through a penalty, and one penalty leaves the two libraries at different L0s. Each of them is trained by both
libraries at every scale of `--penalty-grid` (times the setting above; same batches, lr schedule and tokens),
and each library's held-out EV at each target L0 is read off its own (L0, EV) points, linear in log L0 between
the two runs that bracket the target; a target outside a library's L0s is "not reached", not extrapolated.
BatchTopK and Matryoshka are trained at k per token on average, but their inference code keeps the latents
above a threshold each library estimates in training, so its L0 is not exactly k: they are trained at every k
of `--k-grid` and compared the same way.

    python benchmarks/bench_sae_training.py --expansions --architectures jumprelu gated relu_l1 \
        --arch-expansion 4 --arch-batch 256 --arch-steps 600 --arch-lr 3e-3 --match-l0 16 32 64 128
    python benchmarks/bench_sae_training.py --expansions --architectures batchtopk matryoshka_batchtopk \
        --arch-expansion 4 --arch-batch 256 --arch-steps 600 --arch-lr 1.5e-3 --match-l0 16 32 64 128 \
        --k-grid 4 8 16 32 64 128 192

The budget is in steps rather than tokens for JumpReLU: Adam moves a threshold by about the lr per step
whatever its gradient, so the L0 a penalty can reach is bounded by lr x steps (at 1e-3 and 150 steps the
thresholds of both libraries moved less than 0.1 against pre-activations of spread 0.2-0.3: L0 did not follow
the penalty). Both libraries start θ at 0.01 and use ε 0.05 in the data's norm units.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from randsae.sae import SAEConfig, TrainConfig, build_sae, default_lr
from randsae.sae.kernels import pairs_decode
from randsae.sae.topk import TopKSAE
from randsae.sae.trainer import explained_variance, lr_factor, train_step

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
    adam = torch.optim.Adam(sae.parameter_groups(default_lr(d_sae)), fused=True)
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


SETTINGS: dict[str, dict[str, Any]] = {
    "topk": {"k": K},
    "batchtopk": {"k": K},
    "matryoshka_batchtopk": {"k": K},
    "jumprelu": {"l0_coefficient": 2e-3, "jumprelu_bandwidth": 0.05},
    "gated": {"l1_coefficient": 0.3},
    "relu_l1": {"l1_coefficient": 0.3},
}
"""Our sparsity settings per architecture (chosen to give L0 of the order of k = 32 on this data)."""

PENALIZED = ("jumprelu", "gated", "relu_l1")
"""The architectures whose L0 follows from a penalty, not from k: the matched-L0 mode sweeps their penalty."""

THRESHOLDED = ("batchtopk", "matryoshka_batchtopk")
"""The architectures trained at k per token on average whose inference L0 follows from a threshold each
library estimates in training: the matched-L0 mode sweeps their k."""


def sparsity(architecture: str, penalty_scale: float = 1.0, k: int = K) -> dict[str, Any]:
    """Our settings for `architecture` with its L1 or L0 penalty multiplied by `penalty_scale`, k set to `k`."""
    scaled = {
        name: value * penalty_scale if name in ("l0_coefficient", "l1_coefficient") else value
        for name, value in SETTINGS[architecture].items()
    }
    return scaled | {"k": k} if "k" in scaled else scaled


def saelens_sae(architecture: str, d_sae: int, data: torch.Tensor, penalty_scale: float = 1.0, k: int = K) -> Any:
    """SAELens's training SAE for `architecture` with our settings in its units, b_dec at the data mean."""
    import sae_lens

    settings = sparsity(architecture, penalty_scale, k)
    per_token_variance = (data - data.mean(0)).pow(2).sum(1).mean().item()
    scale = data.norm(dim=1).mean().item() / math.sqrt(D_MODEL)
    configs: dict[str, tuple[Any, Any, dict[str, Any]]] = {
        "topk": (sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig, {"k": k, "aux_loss_coefficient": 0.0}),
        "batchtopk": (
            sae_lens.BatchTopKTrainingSAE,
            sae_lens.BatchTopKTrainingSAEConfig,
            {"k": k, "aux_loss_coefficient": 0.0},
        ),
        "matryoshka_batchtopk": (
            sae_lens.MatryoshkaBatchTopKTrainingSAE,
            sae_lens.MatryoshkaBatchTopKTrainingSAEConfig,
            {"k": k, "aux_loss_coefficient": 0.0, "matryoshka_widths": list(matryoshka_widths(d_sae))},
        ),
        "jumprelu": (
            sae_lens.JumpReLUTrainingSAE,
            sae_lens.JumpReLUTrainingSAEConfig,
            {
                "l0_coefficient": settings.get("l0_coefficient", 0.0) * per_token_variance,
                "jumprelu_bandwidth": settings.get("jumprelu_bandwidth", 0.0) * scale,
                "jumprelu_init_threshold": 0.01 * scale,
            },
        ),
        "gated": (
            sae_lens.GatedTrainingSAE,
            sae_lens.GatedTrainingSAEConfig,
            {"l1_coefficient": settings.get("l1_coefficient", 0.0) * D_MODEL / d_sae},
        ),
        "relu_l1": (
            sae_lens.StandardTrainingSAE,
            sae_lens.StandardTrainingSAEConfig,
            {"l1_coefficient": settings.get("l1_coefficient", 0.0) * D_MODEL / d_sae},
        ),
    }
    sae_cls, cfg_cls, fields = configs[architecture]
    torch.manual_seed(0)
    sae = sae_cls(cfg_cls(d_in=D_MODEL, d_sae=d_sae, **fields))
    with torch.no_grad():
        sae.b_dec.copy_(data.mean(0))
    return sae


def matryoshka_widths(d_sae: int) -> tuple[int, ...]:
    """Four nested prefixes: 1/16, 1/4, 1/2 and all of the latents."""
    return (d_sae // 16, d_sae // 4, d_sae // 2, d_sae)


def ours_sae(architecture: str, d_sae: int, data: torch.Tensor, penalty_scale: float = 1.0, k: int = K):
    widths = matryoshka_widths(d_sae) if architecture == "matryoshka_batchtopk" else None
    settings = sparsity(architecture, penalty_scale, k)
    sae = build_sae(SAEConfig(architecture, D_MODEL, d_sae, matryoshka_widths=widths, **settings), 0)
    sae.init_from_data(data)
    return sae


Step = Callable[[torch.Tensor, float], object]


def ours_arch_step(sae, lr: float) -> Step:
    """The trainer's own step at lr `lr`·`factor` (the decoder's at its multiple of that)."""
    cfg = TrainConfig(batch_size=1)
    adam = torch.optim.Adam(sae.parameter_groups(lr), fused=True)
    peaks = [group["lr"] for group in adam.param_groups]

    def step(x: torch.Tensor, factor: float) -> None:
        for group, peak in zip(adam.param_groups, peaks, strict=True):
            group["lr"] = peak * factor
        train_step(sae, adam, x, cfg)

    return step


def saelens_arch_step(sae, lr: float) -> Step:
    """SAELens's `SAETrainer._train_step`, less its logging: forward pass, fired-latent bookkeeping, backward,
    clipping at 1, Adam."""
    from sae_lens.saes.sae import TrainStepInput

    adam = torch.optim.Adam(sae.parameters(), lr=lr)
    coefficients = {name: c.value if hasattr(c, "value") else c for name, c in sae.get_coefficients().items()}
    since_fired = torch.zeros(sae.cfg.d_sae)

    def step(x: torch.Tensor, factor: float) -> None:
        for group in adam.param_groups:
            group["lr"] = lr * factor
        sae.train()
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
            )
        )
        with torch.no_grad():
            since_fired.add_(1)
            since_fired[out.feature_acts.bool().any(0)] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        adam.step()
        adam.zero_grad()

    return step


@torch.no_grad()
def saelens_quality(sae, heldout: torch.Tensor) -> tuple[float, float]:
    """(held-out EV, L0) of SAELens's saved inference model, as a user of the trained SAE would load it."""
    import sae_lens

    with tempfile.TemporaryDirectory() as folder:
        sae.save_inference_model(folder)
        inference = sae_lens.SAE.load_from_disk(folder)
    z = inference.encode(heldout)
    residual = heldout - inference.decode(z)
    ev = 1 - residual.pow(2).sum().item() / (heldout - heldout.mean(0)).pow(2).sum().item()
    return ev, (z != 0).sum(1).float().mean().item()


@torch.no_grad()
def ours_quality(sae, heldout: torch.Tensor) -> tuple[float, float]:
    return explained_variance(sae, heldout), (sae.encode(heldout) != 0).sum(1).float().mean().item()


@torch.no_grad()
def batch_code_ev(sae, heldout: torch.Tensor, batch: int, ours: bool) -> float:
    """The BatchTopKs' held-out EV with their training code (the k·n largest of each held-out batch of `batch`
    rows, L0 = k on average for both libraries whatever their inference thresholds): the dictionaries compared
    at exactly the same L0."""
    residual = 0.0
    for x in heldout.split(batch):
        if ours:
            code = sae.batch_code(x)
            reconstruction = pairs_decode(code.values, code.pairs, sae.W_dec) + sae.b_dec
        else:
            reconstruction = sae.decode(sae.encode(x))
        residual += (x - reconstruction).pow(2).sum().item()
    return 1 - residual / (heldout - heldout.mean(0)).pow(2).sum().item()


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expansions", type=int, nargs="*", default=[16, 64], help="TopK table (none: skip it)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per trainer (interleaved; median kept)")
    parser.add_argument("--architectures", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--arch-expansion", type=int, default=8, help="architectures table: d_sae / d")
    parser.add_argument("--arch-batch", type=int, default=1024)
    parser.add_argument("--arch-steps", type=int, default=300, help="training steps of each SAE (all timed)")
    parser.add_argument("--arch-lr", type=float, default=1e-3, help="peak lr of both libraries")
    parser.add_argument("--penalty-scale", type=float, default=1.0, help="multiplies every L1 and L0 penalty")
    parser.add_argument(
        "--match-l0",
        type=float,
        nargs="*",
        help="instead of the architectures table: EV at these L0s for the penalized architectures, each trained "
        "at every --penalty-grid scale, and the BatchTopKs' inference code, each trained at every --k-grid k",
    )
    parser.add_argument("--penalty-grid", type=float, nargs="*", default=[2.0**i for i in range(6)])
    parser.add_argument("--k-grid", type=int, nargs="*", default=[8, 16, 32, 64])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.expansions and args.steps:
        topk_against_sparsify(args.expansions, args.steps)
    shape = (args.arch_expansion, args.arch_batch, args.arch_steps, args.arch_lr)
    if args.match_l0:
        architectures = [name for name in args.architectures if name in PENALIZED + THRESHOLDED]
        matched_l0(architectures, *shape, args.match_l0, args.penalty_grid, args.k_grid)
    elif args.architectures:
        architectures_against_saelens(args.architectures, *shape, args.penalty_scale)


def topk_against_sparsify(expansions: list[int], n_steps: int) -> None:
    try:
        import sparsify
    except ImportError as error:
        sparsify = None
        print(
            f"sparsify unavailable ({error}); install with `pip install --no-deps eai-sparsify` plus einops, "
            "natsort, simple-parsing, docstring-parser, schedulefree"
        )
    print(f"TopK: d={D_MODEL} k={K} batch={BATCH}")
    peak = matmul_gflops()  # also warms up the BLAS threads
    data = synthetic_activations(BATCH * n_steps)
    batches = data.split(BATCH)
    header = (
        f"{'expansion':>9} {'d_sae':>6} {'trainer':>17} {'tok/s':>7} {'vs sparsify':>12} "
        f"{'GFLOP/s (2dm)':>14} {'of roofline':>12}"
    )
    results = []
    for expansion in expansions:
        d_sae = D_MODEL * expansion
        steps = {"ours float32": ours_step(data, d_sae, None), "ours bf16-select": ours_step(data, d_sae, "bfloat16")}
        if sparsify is not None:
            steps["sparsify"] = sparsify_step(data, d_sae)
        seconds: dict[str, list[float]] = {name: [] for name in steps}
        for step in steps.values():
            step(batches[0])  # warm-up: allocations, optimizer state
        for i in range(n_steps):
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


def architectures_data(batch: int, n_steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(training batches, 8192 held-out rows) of the architectures' comparisons."""
    data = synthetic_activations(batch * n_steps + 8192, seed=1)
    return list(data[: batch * n_steps].split(batch)), data[-8192:]


def train_both(
    architecture: str, d_sae: int, batches: list[torch.Tensor], lr: float, penalty_scale: float = 1.0, k: int = K
):
    """Ours and SAELens's SAE trained on the same batches with the same lr schedule (peak `lr`), steps interleaved:
    ({library: SAE}, {library: seconds of each step})."""
    train = torch.cat(batches)
    saes = {
        "ours": ours_sae(architecture, d_sae, train, penalty_scale, k),
        "SAELens": saelens_sae(architecture, d_sae, train, penalty_scale, k),
    }
    saes["ours"].set_run_length(len(batches))
    steps = {"ours": ours_arch_step(saes["ours"], lr), "SAELens": saelens_arch_step(saes["SAELens"], lr)}
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for i, x in enumerate(batches):
        factor = lr_factor(i, len(batches) // 10, len(batches))
        for name, step in steps.items():
            seconds[name].append(_timed(step, x, factor))
    return saes, seconds


def qualities(saes: dict[str, Any], heldout: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{library: (held-out EV, L0)} of each library's trained SAE, through its own inference code."""
    return {"ours": ours_quality(saes["ours"], heldout), "SAELens": saelens_quality(saes["SAELens"], heldout)}


def architectures_against_saelens(
    architectures: list[str], expansion: int, batch: int, n_steps: int, lr: float, penalty_scale: float
) -> None:
    d_sae = D_MODEL * expansion
    print(
        f"architectures: d={D_MODEL} d_sae={d_sae} batch={batch} steps={n_steps} ({batch * n_steps} tokens), "
        f"peak lr {lr}"
    )
    batches, heldout = architectures_data(batch, n_steps)
    rows = []
    for architecture in architectures:
        saes, seconds = train_both(architecture, d_sae, batches, lr, penalty_scale)
        quality: dict[str, tuple[float, ...]] = dict(qualities(saes, heldout))
        if "batchtopk" in architecture:
            quality = {
                name: (*quality[name], batch_code_ev(saes[name], heldout, batch, name == "ours")) for name in saes
            }
        median = {name: statistics.median(times) for name, times in seconds.items()}
        rows.append((architecture, median, quality))
        print(f"  done {architecture}", flush=True)
    print(
        f"{'architecture':>21} {'ours tok/s':>10} {'SAELens tok/s':>13} {'speed ratio':>11} "
        f"{'ours EV':>8} {'SAELens EV':>10} {'ours L0':>8} {'SAELens L0':>10} {'batch-code EV ours/SAELens':>27}"
    )
    for architecture, median, quality in rows:
        print(
            f"{architecture:>21} {batch / median['ours']:>10.0f} {batch / median['SAELens']:>13.0f} "
            f"{median['SAELens'] / median['ours']:>10.2f}x {quality['ours'][0]:>8.4f} {quality['SAELens'][0]:>10.4f} "
            f"{quality['ours'][1]:>8.1f} {quality['SAELens'][1]:>10.1f} "
            + (f"{quality['ours'][2]:>16.4f} / {quality['SAELens'][2]:.4f}" if len(quality["ours"]) > 2 else "")
        )


def ev_at_l0(points: list[tuple[float, float]], target: float) -> float | None:
    """EV at L0 `target` on a library's frontier of (L0, EV) points: linear in log L0 between the two runs whose
    L0s bracket it (adjacent in L0), None when the target is outside the runs' L0s (no extrapolation)."""
    for (l0_a, ev_a), (l0_b, ev_b) in itertools.pairwise(sorted(points)):
        if l0_a <= target <= l0_b:
            if l0_a == l0_b:
                return (ev_a + ev_b) / 2
            return ev_a + (ev_b - ev_a) * math.log(target / l0_a) / math.log(l0_b / l0_a)
    return None


def matched_l0(
    architectures: list[str],
    expansion: int,
    batch: int,
    n_steps: int,
    lr: float,
    targets: list[float],
    penalty_grid: list[float],
    k_grid: list[int],
) -> None:
    """Each architecture trained by both libraries at every penalty scale of `penalty_grid` (PENALIZED) or every
    k of `k_grid` (THRESHOLDED), on the same batches, lr schedule and tokens; then each library's held-out EV of
    its inference code at each target L0, from its own (L0, EV) frontier."""
    d_sae = D_MODEL * expansion
    print(
        f"matched L0: d={D_MODEL} d_sae={d_sae} batch={batch} steps={n_steps} ({batch * n_steps} tokens), "
        f"peak lr {lr}, penalty scales {penalty_grid}, k {k_grid}"
    )
    batches, heldout = architectures_data(batch, n_steps)
    for architecture in architectures:
        points: dict[str, list[tuple[float, float]]] = {"ours": [], "SAELens": []}
        knob = "scale" if architecture in PENALIZED else "k"
        print(f"{architecture}: {knob:>8} {'ours L0':>8} {'ours EV':>8} {'SAELens L0':>10} {'SAELens EV':>10}")
        for value in penalty_grid if architecture in PENALIZED else k_grid:
            setting = {"penalty_scale": value} if architecture in PENALIZED else {"k": int(value)}
            quality = qualities(train_both(architecture, d_sae, batches, lr, **setting)[0], heldout)
            for name, (ev, l0) in quality.items():
                points[name].append((l0, ev))
            print(
                f"{'':>{len(architecture) + 1}} {value:>8.3g} {quality['ours'][1]:>8.1f} {quality['ours'][0]:>8.4f} "
                f"{quality['SAELens'][1]:>10.1f} {quality['SAELens'][0]:>10.4f}",
                flush=True,
            )
        print(f"{architecture}: {'L0':>8} {'ours EV':>11} {'SAELens EV':>11} {'difference':>10}")
        for target in targets:
            ours, theirs = ev_at_l0(points["ours"], target), ev_at_l0(points["SAELens"], target)
            difference = f"{ours - theirs:>+10.4f}" if ours is not None and theirs is not None else f"{'':>10}"
            print(
                f"{'':>{len(architecture) + 1}} {target:>8g} {_ev(ours):>11} {_ev(theirs):>11} {difference}", flush=True
            )


def _ev(ev: float | None) -> str:
    return "not reached" if ev is None else f"{ev:.4f}"


if __name__ == "__main__":
    main()
