"""The analysis stage: measure every SAE of a run directory, compare each variant with trained, write the files.

Reads `RUN/tokens/`, `RUN/activations/`, `RUN/saes/` and, when present, `RUN/interp/latents.csv`; writes
`RUN/analysis/`. Each SAE's measurements are saved in `RUN/analysis/parts/` as soon as they exist, keyed by
the settings and inputs they depend on, so an interrupted or re-thresholded analysis redoes only what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from randsae.analysis.codes import row_layout
from randsae.analysis.config import AnalysisConfig
from randsae.analysis.interp_split import LatentScores, read_interp_scores, split_by_latent_type
from randsae.analysis.measure import (
    LatentMeasures, SAEAnalysis, analyse_sae, latent_samples, summarize, token_samples,
)
from randsae.analysis.results import AnalysisSummary, write_outputs
from randsae.analysis.seed_stability import match_decoders, reproduced, second_seed_sae
from randsae.analysis.separation import REFERENCE, MeanSample, Sample, separation_table, variant_rank
from randsae.analysis.token_lookup import TokenErrors, fit_token_lookup
from randsae.atomic import atomic_path
from randsae.data.activations import ActivationCache, cache_folder
from randsae.data.tokens import load_tokens
from randsae.errors import UserError
from randsae.sae.base import CONFIG_FILE, WEIGHTS_FILE, load_sae

INTERP_TABLE = Path("interp") / "latents.csv"
# Settings that change the per-latent arrays (the thresholds only change what is derived from them).
_MEASURE_SETTINGS = ("top_windows", "window_tokens", "position_bins", "min_token_count", "max_heldout_tokens",
                     "max_lookup_tokens")


class SAEEntry(NamedTuple):
    variant: str
    layer: int
    folder: Path


def discover_saes(run_dir: Path) -> list[SAEEntry]:
    """Every SAE folder `RUN/saes/{variant}/layer{L}/`, trained first, then in the usual variant order."""
    entries = []
    for cfg_path in run_dir.glob(f"saes/*/layer*/{CONFIG_FILE}"):
        folder = cfg_path.parent
        metadata = json.loads(cfg_path.read_text()).get("metadata", {})
        variant = metadata.get("variant", folder.parent.name)
        layer = int(metadata.get("layer", folder.name.removeprefix("layer")))
        entries.append(SAEEntry(variant, layer, folder))
    if not entries:
        raise UserError(f"no SAEs under {run_dir / 'saes'}", "Run `randsae run` first, or pass its --out folder")
    return sorted(entries, key=lambda e: (variant_rank(e.variant), e.layer))


def _open_cache(run_dir: Path, entry: SAEEntry, split: str, input_ids: torch.Tensor) -> ActivationCache:
    cache = ActivationCache.open(cache_folder(run_dir, entry.variant, entry.layer, split))
    if cache.manifest.context_size != input_ids.shape[1] or cache.n_tokens != input_ids.numel():
        raise UserError(f"activation cache {cache.folder} ({cache.n_tokens} rows, context "
                        f"{cache.manifest.context_size}) does not match RUN/tokens/{split}.safetensors "
                        f"({input_ids.numel()} tokens, context {input_ids.shape[1]})",
                        "Delete the run's activations folder and rerun `randsae run` to harvest it again")
    return cache


def _part_key(entry: SAEEntry, caches: list[ActivationCache], cfg: AnalysisConfig) -> str:
    weights = (entry.folder / WEIGHTS_FILE).stat()
    inputs = {
        "settings": {name: getattr(cfg, name) for name in _MEASURE_SETTINGS},
        "sae": [weights.st_size, weights.st_mtime_ns],
        "caches": [[shard.sha256 for shard in cache.manifest.shards] for cache in caches],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _load_part(path: Path, key: str) -> SAEAnalysis | None:
    try:
        with np.load(path) as part:
            if str(part["key"]) != key:
                return None
            latents = LatentMeasures(*(part[name] for name in LatentMeasures._fields))
            errors = TokenErrors(*(torch.from_numpy(part[name]) for name in TokenErrors._fields))
    except (OSError, KeyError, ValueError):
        return None
    return SAEAnalysis(latents, errors)


def _save_part(path: Path, key: str, analysis: SAEAnalysis) -> None:
    errors = {name: value.numpy() for name, value in analysis.errors._asdict().items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, key=np.array(key), **analysis.latents._asdict(), **errors)


def measure_entry(run_dir: Path, entry: SAEEntry, cfg: AnalysisConfig, heldout_ids: torch.Tensor,
                  train_ids: torch.Tensor) -> SAEAnalysis:
    """The per-latent and per-token arrays of one SAE, from its saved part when its inputs are unchanged."""
    heldout = _open_cache(run_dir, entry, "heldout", heldout_ids)
    train = _open_cache(run_dir, entry, "train", train_ids)
    key = _part_key(entry, [heldout, train], cfg)
    part_path = run_dir / "analysis" / "parts" / f"{entry.variant}_layer{entry.layer}.npz"
    saved = _load_part(part_path, key)
    if saved is not None:
        return saved
    lookup_sequences = max(1, cfg.max_lookup_tokens // train_ids.shape[1])
    lookup = fit_token_lookup(train.iter_chunks(cfg.chunk_rows), train_ids[:lookup_sequences])
    layout = row_layout(heldout_ids, cfg.max_heldout_tokens, cfg.window_tokens)
    sae = load_sae(entry.folder)
    analysis = analyse_sae(sae, heldout.iter_chunks(cfg.chunk_rows), layout, lookup, cfg)
    _save_part(part_path, key, analysis)
    return analysis


def interp_samples(scores: LatentScores, latents: LatentMeasures, cfg: AnalysisConfig) -> dict[str, MeanSample]:
    """Per-latent AUROCs by latent type, named `{score}_{kind}` like the SAEMeasurements fields."""
    split = split_by_latent_type(scores, latents.top_token_share, cfg.single_token_threshold)
    return {name: MeanSample(values) for name, values in split.items()}


def seed_match_cosine(run_dir: Path, entry: SAEEntry, train_ids: torch.Tensor, cfg: AnalysisConfig, *,
                      device: str | torch.device = "cpu", progress: bool = True) -> np.ndarray:
    """Per latent, the decoder cosine of its Hungarian partner in the SAE retrained with `cfg.stability_seed`."""
    first = load_sae(entry.folder)
    second = second_seed_sae(first, entry.folder, _open_cache(run_dir, entry, "train", train_ids),
                             run_dir / "analysis" / f"seed{cfg.stability_seed}" / entry.variant / f"layer{entry.layer}",
                             cfg.stability_seed, device=device, progress=progress)
    return match_decoders(first.W_dec, second.W_dec).cosine


def analyze_run(run_dir: Path, cfg: AnalysisConfig, *, progress: bool = True,
                device: str | torch.device = "cpu") -> AnalysisSummary:
    """Measure every SAE in `run_dir`, build the separation table, write `RUN/analysis/`.

    `device` only serves the seed-stability retraining (when `cfg.seed_stability` is on).
    """
    run_dir = Path(run_dir)
    entries = discover_saes(run_dir)
    interp = read_interp_scores(run_dir / INTERP_TABLE)   # read first: a malformed table fails before the work
    heldout_ids = load_tokens(run_dir / "tokens", "heldout")
    train_ids = load_tokens(run_dir / "tokens", "train")
    latents: dict[tuple[str, int], LatentMeasures] = {}
    samples: dict[tuple[str, int], dict[str, Sample]] = {}
    n_rows: dict[tuple[str, int], int] = {}
    for entry in tqdm(entries, desc="analysis", unit="sae", disable=not progress, leave=False):
        key = (entry.variant, entry.layer)
        analysis = measure_entry(run_dir, entry, cfg, heldout_ids, train_ids)
        latents[key], n_rows[key] = analysis.latents, analysis.errors.sae_error.numel()
        samples[key] = {**latent_samples(analysis.latents, cfg), **token_samples(analysis.errors)}
    notes = []
    if not interp:
        notes.append(f"auto-interp split skipped: no {INTERP_TABLE} (run `randsae interpret` first)")
    for key in latents.keys() & interp.keys():
        samples[key].update(interp_samples(interp[key], latents[key], cfg))

    matches: dict[tuple[str, int], np.ndarray] = {}
    if cfg.seed_stability:
        for entry in entries:
            key = (entry.variant, entry.layer)
            matches[key] = seed_match_cosine(run_dir, entry, train_ids, cfg, device=device, progress=progress)
            samples[key]["seed_stable_share"] = MeanSample(reproduced(matches[key], cfg.match_threshold) * 1.0)

    if REFERENCE not in {variant for variant, _ in latents}:
        notes.append("no separation table: the run has no `trained` SAE to compare with")
    by_metric: dict[str, dict[tuple[str, int], Sample]] = {}
    for key, named in samples.items():
        for metric, sample in named.items():
            by_metric.setdefault(metric, {})[key] = sample
    rows = separation_table(by_metric, cfg.bootstrap_samples, cfg.seed)
    records = tuple(summarize(*key, latents[key], samples[key], n_rows[key]) for key in latents)
    summary = AnalysisSummary(cfg, records, tuple(rows), tuple(notes))
    write_outputs(run_dir / "analysis", summary, latents, matches)
    return summary
