"""What a latent dashboard shows, computed from the interp stage's sparse latent cache.

The cache holds every nonzero activation of every latent over the held-out tokens, so a dashboard sees
the latent's true top windows, windows from each rank quantile, its activation histogram and its top
tokens by activation mass, not only the handful of windows the judge was shown. Windows are cut exactly
as the interp stage cuts them (`randsae.interp.examples`), so a window here is a window there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file

from randsae.data.tokens import counted_rows, load_tokens
from randsae.interp.entropy import token_activation_mass
from randsae.interp.examples import active_windows, window_tokens
from randsae.interp.explainers import StrTokens
from randsae.interp.latent_cache import (
    LatentEntries,
    load_latent_entries,
    open_latent_cache,
)
from randsae.interp.stage import tokenizer_str_tokens
from randsae.interp.summary import LatentResult
from randsae.report.run_inputs import RunInputs, as_row
from randsae.run_dir import SAEKey
from randsae.sae.base import WEIGHTS_FILE

DEFAULT_WINDOW_SIZE = 32
N_TOP_WINDOWS = 10
N_QUANTILES = 5
WINDOWS_PER_QUANTILE = 3
N_TOP_TOKENS = 10
N_LOGITS = 10
HISTOGRAM_BINS = 40


class Window(NamedTuple):
    tokens: tuple[str, ...]
    activations: tuple[float, ...]

    @property
    def max_activation(self) -> float:
        return max(self.activations)


class QuantileGroup(NamedTuple):
    """Windows drawn at random from one rank quantile of the latent's active windows (strongest first)."""

    first_rank: int
    last_rank: int
    min_max_activation: float
    """Smallest window max in the quantile."""
    max_max_activation: float
    windows: tuple[Window, ...]


class TokenWeight(NamedTuple):
    token: str
    value: float


@dataclasses.dataclass(frozen=True)
class LatentView:
    """Everything one latent's dashboard and its Neuronpedia JSON show."""

    variant: str
    layer: int
    latent: int
    explanation: str | None
    scores: Mapping[str, Any]
    """The interp stage's row for this latent (AUROCs, entropy, ...)."""
    n_firing: int
    n_tokens: int
    """Held-out positions the cache covers (BOS excluded): the denominator of the firing rate."""
    max_activation: float
    histogram_counts: tuple[int, ...]
    histogram_edges: tuple[float, ...]
    top_windows: tuple[Window, ...]
    quantiles: tuple[QuantileGroup, ...]
    top_tokens: tuple[TokenWeight, ...]
    """Tokens carrying most activation mass, with their share of the total."""
    promoted_logits: tuple[TokenWeight, ...] | None
    """Top of W_dec[latent] @ W_U (final-norm scale applied); None when the run has no unembedding."""
    suppressed_logits: tuple[TokenWeight, ...] | None

    @property
    def firing_rate(self) -> float:
        return self.n_firing / self.n_tokens if self.n_tokens else math.nan


class Unembedding(NamedTuple):
    W_U: torch.Tensor
    """[d_model, vocab]."""
    final_norm_weight: torch.Tensor | None


def read_unembedding(path: Path) -> Unembedding | None:
    """`RUN/unembedding.safetensors` ("W_U", optional "final_norm_weight"), or None when absent."""
    if not path.is_file():
        return None
    tensors = load_file(path)
    norm = tensors.get("final_norm_weight")
    return Unembedding(tensors["W_U"].float(), norm.float() if norm is not None else None)


class LogitEffects(NamedTuple):
    promoted: tuple[TokenWeight, ...]
    """Largest logits of W_dec[latent] @ W_U, largest first."""
    suppressed: tuple[TokenWeight, ...]
    """Smallest, smallest first."""


def logit_effects(
    sae_folder: Path,
    latents: Sequence[int],
    unembedding: Unembedding,
    decode: StrTokens,
    device: str | torch.device = "cpu",
) -> dict[int, LogitEffects]:
    """Per latent, the tokens its decoder direction promotes and suppresses most through the unembedding."""
    decoder = load_file(sae_folder / WEIGHTS_FILE)["W_dec"]
    directions = decoder[torch.as_tensor(list(latents), dtype=torch.long)].float().to(device)
    if unembedding.final_norm_weight is not None:
        directions = directions * unembedding.final_norm_weight.to(device)
    logits = (directions @ unembedding.W_U.to(device)).cpu()
    k = min(N_LOGITS, logits.shape[1])
    top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
    values = torch.cat([top.values, bottom.values], dim=1).tolist()
    texts = decode(torch.cat([top.indices, bottom.indices], dim=1).flatten().tolist())
    effects = {}
    for n, latent in enumerate(latents):
        weights = [
            TokenWeight(text, value) for text, value in zip(texts[2 * k * n : 2 * k * (n + 1)], values[n], strict=True)
        ]
        effects[latent] = LogitEffects(tuple(weights[:k]), tuple(weights[k:]))
    return effects


class WindowLayout(NamedTuple):
    """The held-out tokens, their display text, and how rows are cut into windows (the interp stage's way)."""

    tokens: np.ndarray
    """int64 [n_tokens]: the flattened held-out input_ids."""
    token_texts: np.ndarray
    """object [max id + 1]: display text of every id that occurs in `tokens`."""
    context_size: int
    window_size: int

    @classmethod
    def build(cls, input_ids: torch.Tensor, window_size: int, decode: StrTokens) -> WindowLayout:
        """Decode every distinct held-out token once, so windows are looked up, not decoded, per page."""
        tokens = input_ids.flatten().numpy().astype(np.int64)
        distinct = np.unique(tokens)
        texts = np.empty(int(distinct.max()) + 1 if distinct.size else 0, dtype=object)
        texts[distinct] = decode(distinct.tolist())
        return cls(tokens, texts, int(input_ids.shape[1]), window_size)


def latent_view(
    variant: str,
    layer: int,
    latent: int,
    entries: LatentEntries,
    layout: WindowLayout,
    n_tokens: int,
    rng: np.random.Generator,
    *,
    explanation: str | None,
    scores: Mapping[str, Any],
    logits: LogitEffects | None,
) -> LatentView:
    """Build one latent's view from all its nonzero activations (rows sorted ascending)."""
    ctx, size = layout.context_size, layout.window_size
    active = active_windows(entries, ctx, size)
    rows, values, window_ids, starts, maxima = active.rows, active.values, active.ids, active.first, active.maxima
    ends = np.r_[starts[1:], len(rows)]
    ranked = active.by_strength

    rank_groups = [g for g in np.array_split(np.arange(len(ranked)), max(1, min(N_QUANTILES, len(ranked)))) if len(g)]
    picks = [
        np.sort(rng.choice(ranks, size=min(WINDOWS_PER_QUANTILE, len(ranks)), replace=False)) for ranks in rank_groups
    ]
    n_top = min(N_TOP_WINDOWS, len(ranked))
    shown = np.concatenate([ranked[:n_top], *(ranked[p] for p in picks)]).astype(np.int64)
    texts = layout.token_texts[window_tokens(layout.tokens, window_ids[shown], ctx, size)]
    dense = np.zeros((len(shown), size), np.float32)
    for j, k in enumerate(shown):
        dense[j, (rows[starts[k] : ends[k]] % ctx) % size] = values[starts[k] : ends[k]]
    shown_windows = [Window(tuple(t), tuple(np.round(d, 4).tolist())) for t, d in zip(texts, dense, strict=True)]
    top_windows, rest = shown_windows[:n_top], iter(shown_windows[n_top:])
    quantiles = tuple(
        QuantileGroup(
            int(ranks[0]) + 1,
            int(ranks[-1]) + 1,
            float(maxima[ranked[ranks]].min()),
            float(maxima[ranked[ranks]].max()),
            tuple(next(rest) for _ in picked),
        )
        for ranks, picked in zip(rank_groups, picks, strict=True)
    )

    mass = token_activation_mass(layout.tokens[entries.rows], entries.values)
    total = float(mass.mass.sum()) or 1.0
    counts, edges = np.histogram(
        entries.values, bins=HISTOGRAM_BINS, range=(0.0, float(entries.values.max()) if len(entries.values) else 1.0)
    )
    return LatentView(
        variant=variant,
        layer=layer,
        latent=latent,
        explanation=explanation,
        scores=scores,
        n_firing=len(entries.values),
        n_tokens=n_tokens,
        max_activation=float(entries.values.max()) if len(entries.values) else 0.0,
        histogram_counts=tuple(counts.tolist()),
        histogram_edges=tuple(edges.tolist()),
        top_windows=tuple(top_windows),
        quantiles=quantiles,
        top_tokens=tuple(
            TokenWeight(t, float(m) / total)
            for t, m in zip(layout.token_texts[mass.token_ids[:N_TOP_TOKENS]], mass.mass[:N_TOP_TOKENS], strict=True)
        ),
        promoted_logits=logits.promoted if logits else None,
        suppressed_logits=logits.suppressed if logits else None,
    )


class LatentViews(NamedTuple):
    views: dict[tuple[str, int], list[LatentView]]
    """(variant, layer) -> views of its scored latents, ascending latent index."""
    notes: tuple[str, ...]
    """Why some or all dashboards are missing, or shown with less (no tokenizer, no unembedding)."""


def collect_latent_views(run: RunInputs, progress: bool = False, device: str | torch.device = "cpu") -> LatentViews:
    """Views of every latent the interp stage scored, one latent-cache pass per SAE."""
    if run.interp is None or not run.interp.summary.latents:
        return LatentViews(
            {},
            ("No latent dashboards: the run has no interp/*/latents.csv (run `randsae interpret RUN_DIR`).",)
            if run.interp is not None
            else (),
        )
    heldout = run.run.tokens("heldout")
    if not heldout.is_file():
        return LatentViews({}, (f"No latent dashboards: {heldout} is missing.",))
    input_ids = load_tokens(heldout)
    counted = counted_rows(heldout)  # the rows firing frequencies are counted over, once for every SAE
    notes = []
    if run.run.tokenizer().is_dir():
        decode = tokenizer_str_tokens(run.run.tokenizer())
    else:
        decode = _token_ids_as_text
        notes.append("The run has no tokenizer/ folder: tokens are shown as #id.")
    layout = WindowLayout.build(input_ids, int(run.interp.settings.get("window_size", DEFAULT_WINDOW_SIZE)), decode)
    unembedding = read_unembedding(run.run.unembedding())
    if unembedding is None:
        notes.append("The run has no unembedding.safetensors: top promoted logits are not shown.")
    scored: dict[tuple[str, int], dict[int, LatentResult]] = {}
    keys: dict[tuple[str, int], SAEKey] = {}
    for row in run.interp.summary.latents:
        key = SAEKey.from_parts(tuple(row.module.split(".")))
        if key is None or key.replicate not in ("", "seed0", "draw0", "draw0 seed0"):
            continue  # one replicate per variant and layer: the first
        keys[(row.variant, row.layer)] = key
        scored.setdefault((row.variant, row.layer), {})[row.latent] = row
    if any(key.replicate for key in keys.values()):
        notes.append("Dashboards show each variant's first replicate (random draw 0, SAE seed 0).")
    views = {}
    items = sorted(scored.items(), key=lambda item: (run.variants.index(item[0][0]), item[0][1]))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="dashboards", unit="SAE", leave=False)
    for (variant, layer), rows in items:
        key = keys[(variant, layer)]
        cache = open_latent_cache(run.run.latent_cache(key))
        if cache is None:
            notes.append(f"No dashboards for {variant} layer {layer}: its latent cache is missing.")
            continue
        latents = sorted(rows)
        entries = load_latent_entries(cache, latents)
        sae_folder = run.run.sae(key)
        logits = (
            logit_effects(sae_folder, latents, unembedding, decode, device)
            if unembedding is not None and (sae_folder / WEIGHTS_FILE).is_file()
            else {}
        )
        n_tokens = int(counted[: cache.manifest.n_tokens].sum())
        rng = np.random.default_rng([layer, *variant.encode()])
        views[(variant, layer)] = [
            latent_view(
                variant,
                layer,
                latent,
                entries[latent],
                layout,
                n_tokens,
                rng,
                explanation=rows[latent].explanation or None,
                scores=as_row(rows[latent]),
                logits=logits.get(latent),
            )
            for latent in latents
        ]
    return LatentViews(views, tuple(notes))


def _token_ids_as_text(ids: Sequence[int]) -> list[str]:
    return [f"#{i}" for i in ids]
