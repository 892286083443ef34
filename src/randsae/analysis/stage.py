"""The analysis stage: measure every SAE of a run directory, compare each variant with trained, write the files.

Reads `RUN/tokens/`, `RUN/activations/`, `RUN/saes/` and, when present, `RUN/interp/{judge}/latents.csv`; writes
`RUN/analysis/`. Each SAE's measurements are saved in `RUN/analysis/parts/` as soon as they exist, keyed by
the settings and inputs they depend on, so an interrupted or re-thresholded analysis redoes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from randsae.analysis.codes import row_layout
from randsae.analysis.config import AnalysisConfig
from randsae.analysis.interp_split import LatentScores, read_interp_scores, split_by_latent_type
from randsae.analysis.lr_gaps import ev_gaps, lr_dependent
from randsae.analysis.measure import (
    LatentMeasures,
    SAEAnalysis,
    analyse_sae,
    context_samples,
    latent_samples,
    summarize,
    token_samples,
)
from randsae.analysis.replicates import replicate_spread
from randsae.analysis.results import AnalysisSummary, write_outputs
from randsae.analysis.seed_stability import live_reproduced, match_decoders, second_seed_sae
from randsae.analysis.separation import MIN_REPLICATES, REFERENCE, MeanSample, Sample, separation_table
from randsae.analysis.token_lookup import TokenErrors, fit_token_lookup
from randsae.analysis.verdict import verdict_table
from randsae.atomic import atomic_path
from randsae.data.activations import ActivationCache
from randsae.data.tokens import load_excluded_ids, load_tokens
from randsae.errors import UserError
from randsae.interp.calibration import load_calibration
from randsae.run_dir import SAE_TRAINING_FILE, RunDir, SAEKey
from randsae.sae.base import WEIGHTS_FILE, load_sae

# Settings that change the per-latent arrays (the thresholds only change what is derived from them).
_MEASURE_SETTINGS = (
    "top_windows",
    "window_tokens",
    "position_bins",
    "min_token_count",
    "max_heldout_tokens",
    "max_lookup_tokens",
)
# Bumped when what a part holds changes meaning, so parts of an older version are measured again
# (2: the shrunk, error-corrected token lookup).
_PART_VERSION = 2


def _open_cache(run: RunDir, entry: SAEKey, split: str, input_ids: torch.Tensor) -> ActivationCache:
    cache = ActivationCache.open(run.activations(entry.site, split))
    if cache.manifest.context_size != input_ids.shape[1] or cache.n_tokens != input_ids.numel():
        raise UserError(
            f"activation cache {cache.folder} ({cache.n_tokens} rows, context "
            f"{cache.manifest.context_size}) does not match RUN/tokens/{split}.safetensors "
            f"({input_ids.numel()} tokens, context {input_ids.shape[1]})",
            "Delete the run's activations folder and rerun `randsae run` to harvest it again",
        )
    return cache


def _part_key(sae_folder: Path, caches: list[ActivationCache], cfg: AnalysisConfig) -> str:
    weights = (sae_folder / WEIGHTS_FILE).stat()
    inputs = {
        "version": _PART_VERSION,
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
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # a damaged part is measured again
        return None
    return SAEAnalysis(latents, errors)


def _save_part(path: Path, key: str, analysis: SAEAnalysis) -> None:
    errors = {name: value.numpy() for name, value in analysis.errors._asdict().items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, key=np.array(key), **analysis.latents._asdict(), **errors)


def measure_entry(
    run: RunDir,
    entry: SAEKey,
    cfg: AnalysisConfig,
    heldout_ids: torch.Tensor,
    train_ids: torch.Tensor,
    excluded_ids: tuple[int, ...] = (),
    device: str | torch.device = "cpu",
) -> SAEAnalysis:
    """The per-latent and per-token arrays of one SAE, from its saved part when its inputs are unchanged.

    The token lookup is fit on the train cache's first rows; an SAE trained on streamed activations has no
    train cache, so its lookup is fit on the held-out windows after the analysed ones, which are then at
    most the first half of the held-out split (the lookup never sees the rows it is scored on).
    """
    heldout = _open_cache(run, entry, "heldout", heldout_ids)
    lookup_sequences = max(1, cfg.max_lookup_tokens // train_ids.shape[1])
    if has_train_cache(run, entry):
        train = _open_cache(run, entry, "train", train_ids)
        caches = [heldout, train]
        lookup_chunks, lookup_ids, analysed_ids = train.iter_chunks(cfg.chunk_rows), train_ids, heldout_ids
    else:
        if heldout_ids.shape[0] < 2:
            raise UserError(
                f"{run.sae(entry)} was trained on streamed activations and the held-out split has one window: "
                "the token lookup needs others to be fit on",
                "Raise tokens.heldout_tokens to at least two windows",
            )
        n_analysed = max(1, min(cfg.max_heldout_tokens // heldout_ids.shape[1], heldout_ids.shape[0] // 2))
        caches = [heldout]
        skipped = n_analysed * heldout_ids.shape[1]
        lookup_chunks = _rows_from(heldout.iter_chunks(cfg.chunk_rows), skipped)
        lookup_ids, analysed_ids = heldout_ids[n_analysed:], heldout_ids[:n_analysed]
    key = f"{_part_key(run.sae(entry), caches, cfg)} excluded {list(excluded_ids)}"
    part_path = run.analysis_part(entry)
    saved = _load_part(part_path, key)
    if saved is not None:
        return saved
    lookup = fit_token_lookup(lookup_chunks, lookup_ids[:lookup_sequences], excluded_ids)
    layout = row_layout(analysed_ids, cfg.max_heldout_tokens, cfg.window_tokens, excluded_ids)
    sae = load_sae(run.sae(entry), device=device)
    analysis = analyse_sae(sae, heldout.iter_chunks(cfg.chunk_rows), layout, lookup, cfg)
    _save_part(part_path, key, analysis)
    return analysis


def swept_candidates(run: RunDir, entries: Sequence[SAEKey]) -> dict[SAEKey, dict[float, float]]:
    """Per SAE trained with `train.lr_sweep`, each learning rate's held-out EV ({} without a sweep)."""
    found = {}
    for entry in entries:
        log = run.sae(entry) / SAE_TRAINING_FILE
        tried = json.loads(log.read_text()).get("lr_sweep") if log.is_file() else None
        if tried:
            found[entry] = {float(c["lr"]): float(c["explained_variance"]) for c in tried}
    return found


def has_train_cache(run: RunDir, entry: SAEKey) -> bool:
    """Whether the SAE's train activations were cached (absent when it was trained on streamed ones)."""
    return run.activations(entry.site, "train").exists()


def _rows_from(chunks: Iterator[torch.Tensor], start: int) -> Iterator[torch.Tensor]:
    """The rows of `chunks` from row `start` on."""
    for chunk in chunks:
        if start < chunk.shape[0]:
            yield chunk[start:]
        start = max(0, start - chunk.shape[0])


JUDGE_NOT_CALIBRATED = "not meaningful: the judge failed its calibration"
"""The verdict's reading of an auto-interp measurement whose judge failed calibration (interp/calibration.py)."""


def interp_samples(scores: LatentScores, latents: LatentMeasures, cfg: AnalysisConfig) -> dict[str, MeanSample]:
    """Per-latent AUROCs, all together and by latent type, named like the SAEMeasurements fields."""
    split = split_by_latent_type(scores, latents.top_token_share, cfg.single_token_threshold)
    return {name: MeanSample(values, latents.firing_count[ids]) for name, (ids, values) in split.items()}


def seed_match_cosine(
    run: RunDir,
    entry: SAEKey,
    train_ids: torch.Tensor,
    cfg: AnalysisConfig,
    *,
    excluded_ids: tuple[int, ...] = (),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Per latent, the decoder cosine of its Hungarian partner in the SAE retrained with `cfg.stability_seed`."""
    first = load_sae(run.sae(entry))
    second = second_seed_sae(
        first,
        run.sae(entry),
        _open_cache(run, entry, "train", train_ids),
        run.second_seed_sae(entry, cfg.stability_seed),
        cfg.stability_seed,
        train_ids=train_ids,
        excluded_ids=excluded_ids,
        device=device,
        progress=progress,
    )
    return match_decoders(first.W_dec, second.W_dec).cosine


def analyze_run(
    run: RunDir | Path, cfg: AnalysisConfig, *, progress: bool = True, device: str | torch.device = "cpu"
) -> AnalysisSummary:
    """Measure every SAE of the run (every replicate), build the separation table and the verdict, write
    `RUN/analysis/`.

    `device` runs the SAEs' encoding and the seed-stability retraining. The auto-interp split uses the
    first judge of `RunDir.interp_judges` (an LLM judge's results when the run has them).
    """
    run = RunDir.at(run)
    entries = run.discover_saes()
    judges = run.interp_judges()
    interp_table = run.interp(judges[0]).table if judges else None
    # read first: a malformed table fails before the work
    interp = read_interp_scores(interp_table) if interp_table is not None else {}
    heldout_ids = load_tokens(run.tokens("heldout"))
    train_ids = load_tokens(run.tokens("train"))
    excluded = load_excluded_ids(run.tokens("heldout"))  # one tokenizer: the same ids in both splits
    latents: dict[SAEKey, LatentMeasures] = {}
    samples: dict[SAEKey, dict[str, Sample]] = {}
    n_rows: dict[SAEKey, int] = {}
    for entry in tqdm(entries, desc="analysis", unit="sae", disable=not progress, leave=False):
        analysis = measure_entry(run, entry, cfg, heldout_ids, train_ids, excluded, device)
        latents[entry], n_rows[entry] = analysis.latents, analysis.errors.sae_error.numel()
        samples[entry] = {**latent_samples(analysis.latents, cfg), **token_samples(analysis.errors)}
    for entry, context in context_samples(latents, n_rows, cfg).items():
        samples[entry]["mean_context_dependence"] = context
    notes = []
    if not interp:
        notes.append("auto-interp split skipped: no interp/*/latents.csv (run `randsae interpret` first)")
    elif len(judges) > 1:
        notes.append(f"auto-interp split uses the {judges[0]} judge (the run also has {', '.join(judges[1:])})")
    interp_metrics: set[str] = set()
    for entry in entries:
        if entry.module in interp:
            scored = interp_samples(interp[entry.module], latents[entry], cfg)
            samples[entry].update(scored)
            interp_metrics |= set(scored)
    calibration = load_calibration(run.interp(judges[0])) if judges else None
    uncalibrated = calibration is not None and calibration.fails
    if uncalibrated:
        notes.append(f"the {judges[0]} judge failed its calibration: its AUROC rows are not meaningful")

    streamed = [entry for entry in entries if not has_train_cache(run, entry)]
    if streamed:
        notes.append(
            f"token lookup of the {len(streamed)} SAEs trained on streamed activations (no train cache) fit on "
            "the held-out windows after the analysed ones, which are at most the first half"
        )
    matches: dict[SAEKey, np.ndarray] = {}
    if cfg.seed_stability:
        if streamed:
            notes.append(
                f"seed stability skipped for the {len(streamed)} SAEs trained on streamed activations: no train "
                "cache to retrain on (set train.activations = 'cache' to measure it)"
            )
        for entry in entries:
            if entry in streamed:
                continue
            matches[entry] = seed_match_cosine(
                run, entry, train_ids, cfg, excluded_ids=excluded, device=device, progress=progress
            )
            firing = latents[entry].firing_count
            stable = live_reproduced(matches[entry], firing, cfg.match_threshold) * 1.0
            samples[entry]["seed_stable_share"] = MeanSample(stable, firing[firing > 0])

    if REFERENCE not in {entry.variant for entry in latents}:
        notes.append("no separation table: the run has no `trained` SAE to compare with")
    by_metric: dict[str, dict[SAEKey, Sample]] = {}
    for entry, named in samples.items():
        for metric, sample in named.items():
            by_metric.setdefault(metric, {})[entry] = sample
    rows = separation_table(by_metric, cfg.bootstrap_samples, cfg.seed)
    if any(1 < n < MIN_REPLICATES for row in rows for n in (row.n_trained_replicates, row.n_other_replicates)):
        notes.append(
            f"a side with 2 replicates is averaged, not resampled (from {MIN_REPLICATES} on): its intervals "
            "cover the units only"
        )
    verdict = verdict_table(rows)
    candidates = swept_candidates(run, entries)
    if candidates:
        readings = lr_dependent(ev_gaps(candidates))
        verdict = [
            row._replace(reading=readings[row.variant]) if row.metric == "sae_ev" and row.variant in readings else row
            for row in verdict
        ]
        notes.append(
            "train.lr_sweep: the SAE EV gap "
            + (f"changes sign between learning rates vs {', '.join(readings)}" if readings else "keeps its sign")
            + " (each candidate's EV on the selection windows, training.json lr_sweep)"
        )
    if uncalibrated:
        verdict = [
            row._replace(reading=JUDGE_NOT_CALIBRATED) if row.metric in interp_metrics else row for row in verdict
        ]
    records = tuple(summarize(entry, latents[entry], samples[entry], n_rows[entry]) for entry in latents)
    summary = AnalysisSummary(cfg, records, tuple(rows), tuple(verdict), tuple(replicate_spread(records)), tuple(notes))
    write_outputs(run, summary, latents, matches)
    return summary
