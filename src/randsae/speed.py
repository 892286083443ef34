"""The micro-benchmark a run's plan scales (`randsae.plan`): one batch through the model and one SAE step,
timed on this machine and device, the second of two runs (the first pays for warm-up), and the tokenizer
on the first of the configured text (one call: a fast tokenizer needs no warm-up)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from randsae.models.hookpoints import residual_stream
from randsae.plan import Speeds
from randsae.sae import SAEConfig, build_sae

TOKENIZER_SAMPLE_CHARS = 200_000
"""Characters of text the tokenizer's throughput is measured on (about 0.15 s for SmolLM2's tokenizer here)."""


def _seconds(step: Callable[[], object], device: torch.device) -> float:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times[-1]


@torch.no_grad()
def _forwards(
    model: PreTrainedModel, blocks: nn.ModuleList, layers: Sequence[int], ids: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    truncated = _seconds(lambda: residual_stream(model, blocks, layers, ids), device)
    full = _seconds(lambda: model(input_ids=ids, use_cache=False).logits, device)
    return truncated, full


def measure_speeds(
    model: PreTrainedModel,
    blocks: nn.ModuleList,
    layers: Sequence[int],
    batch_windows: int,
    context_size: int,
    sae_cfg: SAEConfig,
    train_batch_tokens: int,
    device: torch.device,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str] | None,
) -> Speeds:
    """Seconds of one harvest forward, one full forward (`batch_windows` windows) and one SAE training step,
    and the tokenizer's tokens a second on `texts` (None: not measured)."""
    generator = torch.Generator().manual_seed(0)
    vocab = min(model.config.vocab_size, 1000)
    ids = torch.randint(vocab, (batch_windows, context_size), generator=generator).to(device)
    forward, full_forward = _forwards(model, blocks, layers, ids, device)
    sae = build_sae(sae_cfg, seed=0).to(device)
    optimizer = torch.optim.Adam(sae.parameter_groups(lr=1e-3))
    x = torch.randn(train_batch_tokens, sae_cfg.d_in, generator=generator).to(device)

    def step() -> None:
        optimizer.zero_grad()
        sae.loss(x).loss.backward()
        optimizer.step()

    return Speeds(
        forward_s=forward,
        sae_step_s=_seconds(step, device),
        full_forward_s=full_forward,
        tokenize_tokens_per_s=None if texts is None else tokens_per_second(tokenizer, texts),
    )


def tokens_per_second(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> float | None:
    """The tokenizer's throughput on the first documents of `texts` (about `TOKENIZER_SAMPLE_CHARS`
    characters), called on them together as tokenization calls it; None when there is no text."""
    sample: list[str] = []
    chars = 0
    for text in texts:
        sample.append(text)
        chars += len(text)
        if chars >= TOKENIZER_SAMPLE_CHARS:
            break
    if not sample:
        return None
    start = time.perf_counter()
    encoded = tokenizer(sample, add_special_tokens=False)["input_ids"]
    return sum(map(len, encoded)) / (time.perf_counter() - start)
