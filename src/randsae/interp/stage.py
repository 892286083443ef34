"""The interp stage: latent caches, matched latent selection, explain, detect, fuzz, statistics, files.

Resumable at every level: a latent cache whose manifest matches the SAE is reused, the latent selection
is stored, and a latent whose explanation and both score files are on disk is not judged again (except
for prompts that failed in a kind a rerun retries: request and malformed, and parse too with
`retry_failed`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from randsae.atomic import write_json_atomic, write_text_atomic
from randsae.data.activations import ActivationCache
from randsae.data.tokens import counted_rows, load_tokens
from randsae.errors import UserError
from randsae.interp.calibration import calibrate_judge, load_calibration, save_calibration
from randsae.interp.config import InterpConfig, describe_scaling
from randsae.interp.entropy import token_activation_mass, token_entropy
from randsae.interp.examples import LatentExamples, sample_examples
from randsae.interp.explainers import Explanation, LLMExplainer, StrTokens, TokenListExplainer
from randsae.interp.health import explanation_health
from randsae.interp.judges import LLMJudge, TokenJudge
from randsae.interp.language_models import FAILURE_KINDS, RETRIED_FAILURES, JudgeFailure, LanguageModel, chunks
from randsae.interp.latent_cache import (
    LatentCache,
    build_latent_cache,
    load_latent_entries,
    open_latent_cache,
    sae_fingerprint,
)
from randsae.interp.outputs import TASKS, read_scores, write_scores
from randsae.interp.prompts import EXPLAINER_PROMPT_VERSION, Prompt, prompt_vocabulary
from randsae.interp.scorers import ScoredExample, score_latents
from randsae.interp.selection import LatentSelection, select_latents
from randsae.interp.statistics import spread
from randsae.interp.summary import (
    InterpSummary,
    LatentResult,
    SAEInterp,
    describe_failures,
    latent_scores,
    summarize_scores,
    write_latents_csv,
)
from randsae.run_dir import InterpDir, RunDir, SAEKey, judge_label
from randsae.sae.base import load_sae, read_sae_config

LATENTS_PER_BATCH = 16
"""Latents explained and judged together: enough requests in flight, little lost to an interruption."""
OPERATIONAL_FIELDS = {
    "base_url",
    "api_key_env",
    "concurrency",
    "timeout_s",
    "retries",
    "backoff_s",
    "max_failure_fraction",
    "n_bootstrap",
    "verify_rows",
    "explainer_ablation",
}
"""Settings that do not change which latents are scored or what the judge is asked about them (the explainer
ablation is a second set of results beside the first)."""


def interpret_run(
    run: RunDir | Path,
    cfg: InterpConfig,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    str_tokens: StrTokens | None = None,
    language_model: LanguageModel | None = None,
    retry_failed: bool = False,
) -> InterpSummary:
    """Explain and score a sample of latents of every SAE of a run; writes RUN/interp/{judge}/ (docs/interp.md).
    An LLM judge is calibrated first and, with LLM explanations, also scores token lists (the ablation).

    `device` encodes the latent caches; `str_tokens` (token ids -> text pieces) defaults to the run's
    tokenizer; `language_model` overrides the backend that `cfg.judge` would build (tests, or a model
    already loaded). Stored failures of the kinds in RETRIED_FAILURES are asked again; `retry_failed`
    asks every failed explanation and example again, parse failures included.
    """
    start = time.perf_counter()
    run = RunDir.at(run)
    saes = chosen_saes(run.discover_saes(), cfg)
    paths = run.interp(judge_label(cfg.judge, cfg.model))
    explainer, judge = build_explainer_and_judge(cfg, language_model)  # the server first: before any work
    retry = frozenset(FAILURE_KINDS) if retry_failed else RETRIED_FAILURES
    tokens, context_size = load_heldout_tokens(run)
    str_tokens = str_tokens or tokenizer_str_tokens(run.tokenizer())
    scaling = describe_scaling(cfg)
    caches = {sae.module: ensure_latent_cache(run, sae, cfg, device, progress) for sae in saes}
    for sae in saes:
        if caches[sae.module].manifest.context_size != context_size:
            raise UserError(
                f"activations of {sae.module} have context {caches[sae.module].manifest.context_size} "
                f"but tokens/heldout.safetensors has {context_size}",
                "Re-run the harvest stage",
            )
    selections = load_or_select(paths, caches, cfg)
    if cfg.judge != "token":  # an LLM judge proves it can tell a right explanation first
        calibrate(run, paths, judge, cfg, tokens, context_size, str_tokens, progress)
    first = next(iter(selections.values()))
    fewest = min(selections, key=lambda module: selections[module].n_eligible)
    _say(
        progress,
        f"scoring {len(first.latents)} latents per SAE (requested {cfg.n_latents}; fewest eligible: "
        f"{selections[fewest].n_eligible} in {fewest}, min_examples {cfg.min_examples})",
    )

    def interpret_all(paths: InterpDir, cfg: InterpConfig, explainer) -> InterpSummary:
        results, latent_rows = [], []
        for sae in saes:
            sae_result, rows = interpret_sae(
                run,
                sae,
                caches[sae.module],
                selections[sae.module],
                tokens,
                context_size,
                paths,
                cfg,
                explainer,
                judge,
                str_tokens,
                progress,
                retry,
            )
            results.append(sae_result)
            latent_rows.extend(rows)
        seconds = time.perf_counter() - start
        summary = InterpSummary(str(run.root), scaling, tuple(results), tuple(latent_rows), seconds)
        write_json_atomic(paths.summary, summary.to_json())
        write_latents_csv(paths.table, latent_rows)
        check_failures(summary, cfg, paths)
        return summary

    summary = interpret_all(paths, cfg, explainer)
    if cfg.explainer_ablation and cfg.judge != "token" and cfg.resolved_explainer == "llm":
        _say(progress, "explainer ablation: the same judge scores the same latents' token-list explanations")
        interpret_all(
            paths.explainer_ablation,
            dataclasses.replace(cfg, explainer="token_list"),
            TokenListExplainer(cfg.n_list_tokens),
        )
    return summary


def calibrate(
    run: RunDir,
    paths: InterpDir,
    judge,
    cfg: InterpConfig,
    tokens: np.ndarray,
    context_size: int,
    str_tokens: StrTokens,
    progress: bool,
) -> None:
    """Score the probe latents (interp/calibration.py) unless a calibration with these settings is stored
    (the stored selection guarantees the settings), and print it whatever the progress setting: it qualifies
    every AUROC of the judge."""
    calibration = load_calibration(paths)
    if calibration is None:
        counted = counted_rows(run.tokens("heldout")).numpy()
        calibration = calibrate_judge(judge, cfg, tokens, counted, context_size, str_tokens, progress)
        if calibration is None:
            _say(progress, "judge calibration skipped: fewer than 2 probe latents occur in the held-out text")
            return
        save_calibration(paths, calibration)
    print(calibration.describe())


def chosen_saes(saes: Sequence[SAEKey], cfg: InterpConfig) -> list[SAEKey]:
    """The SAEs at `cfg.layers` (all when empty), only each variant's first replicate with `replicates = first`."""
    chosen = [
        sae
        for sae in saes
        if (not cfg.layers or sae.layer in cfg.layers)
        and (cfg.replicates == "all" or (sae.variant_seed or 0) == (sae.sae_seed or 0) == 0)
    ]
    if saes and not chosen:
        found = sorted({sae.layer for sae in saes})
        raise UserError(
            f"the run has no SAE at interp.layers {list(cfg.layers)} (its SAEs are at layers {found})",
            "Set interp.layers to some of those, or [] for all",
        )
    return chosen


def load_heldout_tokens(run: RunDir) -> tuple[np.ndarray, int]:
    """(flattened input_ids as int64, context_size) of the held-out split."""
    input_ids = load_tokens(run.tokens("heldout")).numpy()
    return input_ids.reshape(-1).astype(np.int64), int(input_ids.shape[1])


def tokenizer_str_tokens(folder: Path) -> StrTokens:
    """Token ids -> text pieces (each id decoded alone, leading space kept), memoized."""
    if not folder.is_dir():
        raise UserError(f"no tokenizer at {folder}", "Re-run `randsae run`, which saves the model's tokenizer there")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    known: dict[int, str] = {}

    def str_tokens(ids: Sequence[int]) -> list[str]:
        missing = sorted({i for i in ids if i not in known})
        known.update(zip(missing, tokenizer.batch_decode([[i] for i in missing]), strict=True))
        return [known[i] for i in ids]

    return str_tokens


def ensure_latent_cache(
    run: RunDir, sae: SAEKey, cfg: InterpConfig, device: str | torch.device, progress: bool
) -> LatentCache:
    """Reuse the latent cache when it was built from these SAE weights and activations, else build it."""
    folder = run.latent_cache(sae)
    fingerprint = sae_fingerprint(run.sae(sae))
    activations = ActivationCache.open(run.activations(sae.site, "heldout"))
    existing = open_latent_cache(folder)
    if (
        existing is not None
        and existing.manifest.sae_sha256 == fingerprint
        and existing.manifest.n_tokens == activations.manifest.n_tokens
    ):
        return existing
    model = load_sae(run.sae(sae), device=device)
    chunk_rows = max(256, (1 << 26) // model.cfg.d_sae)
    return build_latent_cache(
        folder,
        model,
        fingerprint,
        activations.iter_chunks(rows=chunk_rows),
        n_tokens=activations.manifest.n_tokens,
        context_size=activations.manifest.context_size,
        verify_rows=cfg.verify_rows,
        seed=cfg.seed,
        progress=progress,
        keep=counted_rows(run.tokens("heldout"))[: activations.manifest.n_tokens],
    )


def load_or_select(paths: InterpDir, caches: dict[str, LatentCache], cfg: InterpConfig) -> dict[str, LatentSelection]:
    """The stored selection when it was made with these settings and SAEs; a fresh one on a first run."""
    settings = selection_settings(cfg)
    weights = {module: cache.manifest.sae_sha256 for module, cache in caches.items()}
    stored = _read_json_or_none(paths.selection)
    if stored is None and paths.selection.is_file():
        print(
            f"{paths.selection} is damaged: selecting the latents again (the same seed gives the same ones)",
            file=sys.stderr,
        )
    if stored is not None:
        # A setting added since the selection was stored had its default then.
        stored["settings"] = {**selection_settings(InterpConfig()), **stored["settings"]}
        if stored["settings"] == settings and stored["sae_sha256"] == weights:
            return {
                module: LatentSelection(**{**entry, "latents": tuple(entry["latents"])})
                for module, entry in stored["selections"].items()
            }
        raise UserError(
            f"{paths.root} holds results made with other interp settings or SAEs "
            f"({_differences(stored['settings'], settings, stored['sae_sha256'], weights)})",
            f"Delete {paths.root} to start over, or re-run with the settings in {paths.selection}",
        )
    selections = select_latents(
        {module: cache.counts for module, cache in caches.items()}, cfg.n_latents, cfg.min_examples, cfg.seed
    )
    write_json_atomic(
        paths.selection,
        {
            "settings": settings,
            "sae_sha256": weights,
            "selections": {m: dataclasses.asdict(s) for m, s in selections.items()},
        },
    )
    return selections


def selection_settings(cfg: InterpConfig) -> dict[str, Any]:
    """The settings that decide which latents are scored and what the judge is asked, as stored (JSON)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OPERATIONAL_FIELDS}
    if cfg.resolved_explainer == "llm":  # explanations from another prompt are not mixed with these
        settings["explainer_prompt_version"] = EXPLAINER_PROMPT_VERSION
    return json.loads(json.dumps(settings))


def _differences(stored: dict, settings: dict, stored_weights: dict, weights: dict) -> str:
    """'n_negatives: 8 stored, 4 now; SAE weights changed: trained.layer3', for the refusal message."""
    names = sorted(set(stored) | set(settings))
    changed = [
        f"{n}: {stored.get(n)!r} stored, {settings.get(n)!r} now" for n in names if stored.get(n) != settings.get(n)
    ]
    for what, modules in (
        ("SAE weights changed", [m for m in stored_weights if m in weights and stored_weights[m] != weights[m]]),
        ("SAEs added", [m for m in weights if m not in stored_weights]),
        ("SAEs gone", [m for m in stored_weights if m not in weights]),
    ):
        if modules:
            changed.append(f"{what}: {', '.join(modules)}")
    return "; ".join(changed)


def check_judge(cfg: InterpConfig) -> None:
    """Before a long run: an HTTP judge server must answer, a local judge model must exist."""
    if cfg.judge == "http":
        http_language_model(cfg)
    elif cfg.judge == "hf":
        from randsae.interp.llm_hf import local_model_path

        local_model_path(cfg.model)


def http_language_model(cfg: InterpConfig) -> LanguageModel:
    """The HTTP backend `cfg` names, asked once: a server that does not answer is a one-line error."""
    from randsae.interp.llm_http import HttpLanguageModel

    model = HttpLanguageModel(
        cfg.base_url,
        cfg.model,
        api=cfg.api,
        api_key_env=cfg.api_key_env,
        concurrency=cfg.concurrency,
        timeout_s=cfg.timeout_s,
        retries=cfg.retries,
        backoff_s=cfg.backoff_s,
    )
    try:
        model.generate(Prompt("Answer with one word.", "Say OK.", ""), 2)
    except JudgeFailure as failure:
        raise UserError(
            f"the judge server at {cfg.base_url} does not answer ({failure.detail})",
            f"Start it, or fix interp.base_url / interp.model / the key in ${cfg.api_key_env}",
        ) from failure
    return model


def build_explainer_and_judge(cfg: InterpConfig, language_model: LanguageModel | None):
    """The explainer and judge `cfg` names; an HTTP server is checked once before any real work."""
    if cfg.judge == "token":
        return TokenListExplainer(cfg.n_list_tokens), TokenJudge()
    if language_model is None and cfg.judge == "http":
        language_model = http_language_model(cfg)
    elif language_model is None:
        from randsae.interp.llm_hf import HFLanguageModel

        language_model = HFLanguageModel(cfg.model)
    explainer = (
        TokenListExplainer(cfg.n_list_tokens)
        if cfg.resolved_explainer == "token_list"
        else LLMExplainer(language_model, cfg.highlight_threshold, cfg.explanation_max_tokens)
    )
    return explainer, LLMJudge(language_model)


def latent_rng(seed: int, module: str, latent: int, stream: int) -> np.random.Generator:
    """Independent, reproducible randomness per (SAE, latent, purpose): resumed latents draw the same."""
    return np.random.default_rng([seed, latent, stream, *module.encode()])


def interpret_sae(
    run: RunDir,
    sae: SAEKey,
    cache: LatentCache,
    selection: LatentSelection,
    tokens: np.ndarray,
    context_size: int,
    paths: InterpDir,
    cfg: InterpConfig,
    explainer,
    judge,
    str_tokens: StrTokens,
    progress: bool,
    retry: frozenset[str] = RETRIED_FAILURES,
) -> tuple[SAEInterp, list[LatentResult]]:
    """Explain and score the selected latents not done yet (or with failures of a kind in `retry`), then
    summarize all of them from disk."""
    module, latents = sae.module, selection.latents
    entries = load_latent_entries(cache, latents)
    examples = [
        sample_examples(entries[latent], tokens, context_size, cfg, latent_rng(cfg.seed, module, latent, 0))
        for latent in latents
    ]
    pending = [i for i, latent in enumerate(latents) if not _is_done(paths, module, latent, retry)]
    if pending:
        _say(progress, f"{module}: explaining and scoring {len(pending)} of {len(latents)} latents")
    for batch in chunks(pending, LATENTS_PER_BATCH):
        explanations = _explanations(
            paths,
            module,
            [latents[i] for i in batch],
            [examples[i] for i in batch],
            explainer,
            str_tokens,
            progress,
            retry,
        )
        for task_index, task in enumerate(TASKS, start=1):
            rngs = [latent_rng(cfg.seed, module, latents[i], task_index) for i in batch]
            earlier = [_earlier_scores(paths.score(task, module, latents[i])) for i in batch]
            scored = score_latents(
                task, [examples[i] for i in batch], explanations, judge, cfg, rngs, str_tokens, progress, earlier, retry
            )
            for i, latent_records in zip(batch, scored, strict=True):
                write_scores(paths.score(task, module, latents[i]), latent_records)

    records = {task: [read_scores(paths.score(task, module, latent)) for latent in latents] for task in TASKS}
    rows = [
        _latent_row(sae, latent, cache, examples[i], paths, {t: records[t][i] for t in TASKS}, str_tokens)
        for i, latent in enumerate(latents)
    ]
    summaries = {task: summarize_scores(records[task], cfg.n_bootstrap, cfg.seed) for task in TASKS}
    explanation_failures = Counter(row.explanation_failure for row in rows if row.explanation_failure)
    result = SAEInterp(
        variant=sae.variant,
        layer=sae.layer,
        module=module,
        hook_name=str(read_sae_config(run.sae(sae)).metadata.get("hook_name", "")),
        d_sae=cache.manifest.d_sae,
        n_tokens=cache.manifest.n_tokens,
        n_dead=selection.n_dead,
        n_eligible=selection.n_eligible,
        n_requested=selection.n_requested,
        n_sampled=len(latents),
        explainer=cfg.resolved_explainer,
        judge=cfg.judge,
        explainer_prompt_version=EXPLAINER_PROMPT_VERSION if cfg.resolved_explainer == "llm" else "",
        n_explanation_failures=sum(explanation_failures.values()),
        n_explanation_request_failures=explanation_failures["request"],
        n_explanation_malformed_failures=explanation_failures["malformed"],
        n_explanation_parse_failures=explanation_failures["parse"],
        token_entropy=spread(np.array([row.token_entropy for row in rows])),
        fuzz=summaries["fuzz"],
        detection=summaries["detection"],
        health=explanation_health(
            [None if row.explanation_failure else row.explanation for row in rows], explainer_vocabulary(cfg)
        ),
    )
    return result, rows


def explainer_vocabulary(cfg: InterpConfig) -> frozenset[str]:
    """The words an LLM explainer could echo from its prompt (none for the token-list explainer: no prompt)."""
    return frozenset() if cfg.resolved_explainer == "token_list" else prompt_vocabulary()


def _is_done(paths: InterpDir, module: str, latent: int, retry: frozenset[str]) -> bool:
    """Done when the latent's record, explanation and score files are all readable and none failed in a kind
    to retry; a missing or damaged file makes the latent's missing parts be made again."""
    record = _read_json_or_none(paths.latent_record(module, latent))
    if record is None or record.get("explanation_failure") in retry:
        return False
    if _read_json_or_none(paths.explanation(module, latent)) != record.get("explanation"):
        return False
    for task in TASKS:
        scores = _earlier_scores(paths.score(task, module, latent))
        if scores is None or any(r.failure in retry for r in scores):
            return False
    return True


def _read_json_or_none(path: Path) -> Any:
    """A per-latent file's JSON, or None when it is missing or damaged (the stage then makes it again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _earlier_scores(path: Path) -> list[ScoredExample] | None:
    """A latent's stored records, for `score_latents` to keep what needs no asking again; None if unreadable."""
    try:
        return read_scores(path)
    except UserError:
        return None


def _explanations(
    paths: InterpDir,
    module: str,
    latents: list[int],
    examples: list[LatentExamples],
    explainer,
    str_tokens: StrTokens,
    progress: bool,
    retry: frozenset[str],
) -> list[Explanation]:
    """Stored explanations unless they failed in a kind of `retry`, new ones for the rest (written with their
    windows and reply; the latent's old score files, judged under the old explanation, are removed first)."""
    stored: dict[int, Explanation] = {}
    for latent in latents:
        record = _read_json_or_none(paths.latent_record(module, latent))
        if record is not None and record["explanation_failure"] not in retry:
            stored[latent] = Explanation(record["explanation"], record["explanation_failure"] or None, record["reply"])
            if _read_json_or_none(paths.explanation(module, latent)) != record["explanation"]:
                write_text_atomic(
                    paths.explanation(module, latent), json.dumps(record["explanation"], ensure_ascii=False)
                )
    missing = [i for i, latent in enumerate(latents) if latent not in stored]
    fresh = explainer.explain_many([examples[i].explanation for i in missing], str_tokens, progress)
    for i, explanation in zip(missing, fresh, strict=True):
        latent, windows = latents[i], examples[i].explanation
        for task in TASKS:
            paths.score(task, module, latent).unlink(missing_ok=True)
        write_json_atomic(
            paths.latent_record(module, latent),
            {
                "module": module,
                "latent": latent,
                "explanation": explanation.text,
                "explanation_failure": explanation.failure or "",
                "reply": explanation.reply,
                "n_active_windows": examples[i].n_active_windows,
                "explanation_windows": [
                    {
                        "window": int(w),
                        "quantile": int(q),
                        "str_tokens": str_tokens(ids.tolist()),
                        "activations": np.round(acts.astype(np.float64), 4).tolist(),
                    }
                    for w, q, ids, acts in zip(
                        windows.window_ids, windows.quantile, windows.token_ids, windows.activations, strict=True
                    )
                ],
            },
            indent=None,
        )
        write_text_atomic(paths.explanation(module, latent), json.dumps(explanation.text, ensure_ascii=False))
        stored[latent] = explanation
    return [stored[latent] for latent in latents]


def _latent_row(
    sae: SAEKey,
    latent: int,
    cache: LatentCache,
    examples: LatentExamples,
    paths: InterpDir,
    records: dict,
    str_tokens: StrTokens,
) -> LatentResult:
    record = json.loads(paths.latent_record(sae.module, latent).read_text())
    windows = examples.explanation
    mass = token_activation_mass(windows.token_ids, windows.activations)
    top_token = str_tokens([int(mass.token_ids[0])])[0] if len(mass.mass) else ""
    share = float(mass.mass[0] / mass.mass.sum()) if len(mass.mass) else float("nan")
    fuzz, detection = latent_scores(records["fuzz"]), latent_scores(records["detection"])
    return LatentResult(
        variant=sae.variant,
        layer=sae.layer,
        module=sae.module,
        latent=latent,
        n_activations=int(cache.counts[latent]),
        max_activation=float(cache.max_values[latent]),
        n_active_windows=examples.n_active_windows,
        n_explanation_windows=len(windows.window_ids),
        n_positives=len(examples.positives.window_ids),
        n_negatives=len(examples.negatives.window_ids),
        explanation=record["explanation"],
        explanation_failure=record["explanation_failure"],
        token_entropy=token_entropy(windows.token_ids, windows.activations),
        explanation_top_token=top_token,
        explanation_top_token_share=share,
        fuzz_auroc=fuzz.auroc,
        detection_auroc=detection.auroc,
        fuzz_balanced_accuracy=fuzz.balanced_accuracy,
        detection_balanced_accuracy=detection.balanced_accuracy,
        fuzz_f1=fuzz.f1,
        detection_f1=detection.f1,
        fuzz_failed=fuzz.n_failed,
        detection_failed=detection.n_failed,
    )


def check_failures(summary: InterpSummary, cfg: InterpConfig, paths: InterpDir) -> None:
    """Stop with a clear error when the judge failed on too many examples (results stay on disk)."""
    for sae in summary.saes:
        failed = sae.fuzz.n_failed + sae.detection.n_failed
        total = sae.fuzz.n_examples + sae.detection.n_examples
        if total and failed / total > cfg.max_failure_fraction:
            raise UserError(
                f"the judge failed on {describe_failures(sae)}, more than interp.max_failure_fraction = "
                f"{cfg.max_failure_fraction}; details in {paths.root}",
                "Check the server and model (a larger judge answers in format more often); a rerun asks request "
                "and malformed failures again, `randsae interpret RUN --retry-failed` parse failures too",
            )


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)
