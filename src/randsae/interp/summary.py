"""Results of the interp stage: per latent (latents.csv), per SAE and scorer (interp.json), and the
printed table. Everything here is computed from the records on disk, so a resumed run reports the same.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import typing
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from randsae.atomic import write_text_atomic
from randsae.errors import UserError
from randsae.interp import statistics
from randsae.interp.health import ExplanationHealth
from randsae.interp.scorers import ScoredExample
from randsae.records import from_plain
from randsae.run_dir import InterpDir, read_json


@dataclasses.dataclass(frozen=True)
class LatentResult:
    """One row of latents.csv."""

    variant: str
    layer: int
    module: str
    latent: int
    n_activations: int
    """Held-out positions (BOS excluded) where the latent fires."""
    max_activation: float
    n_active_windows: int
    n_explanation_windows: int
    n_positives: int
    n_negatives: int
    explanation: str
    explanation_failure: str
    """"" or a `JudgeFailure` kind: "request", "malformed", "parse"."""
    token_entropy: float
    """Bits; activation mass over token ids in the explanation windows."""
    explanation_top_token: str
    """Text of the token carrying the most of that mass ("" when the latent has no explanation windows)."""
    explanation_top_token_share: float
    """Fraction of that mass on it. The analysis' `top_token_share` is a different window set: the top
    `top_windows` windows of all held-out rows."""
    fuzz_auroc: float
    detection_auroc: float
    fuzz_balanced_accuracy: float
    detection_balanced_accuracy: float
    fuzz_f1: float
    detection_f1: float
    fuzz_failed: int
    detection_failed: int


@dataclasses.dataclass(frozen=True)
class ScoreSummary:
    """One scorer's results for one SAE, all its scored latents pooled."""

    auroc: float
    auroc_low: float
    auroc_high: float
    """Bootstrap 95% CI over latents."""
    latent_auroc: statistics.Spread
    """Distribution of the per-latent AUROC."""
    balanced_accuracy: float
    f1: float
    n_examples: int
    n_positives: int
    n_negatives: int
    n_failed: int
    """Examples with no usable answer: counted wrong, probability 0.5 for AUROC."""
    n_request_failures: int
    """No reply after the retries (timeout, connection, HTTP error): asked again on a rerun."""
    n_malformed_failures: int
    """A reply that is not the API's JSON: asked again on a rerun."""
    n_parse_failures: int
    """A well-formed reply without the expected answers: asked again only by `--retry-failed`."""
    n_unexplained_examples: int
    """Examples not judged because their latent has no usable explanation."""
    probability_source: str
    """"logprobs", "hard_answers" (AUROC then comes from 0/1 answers), "token_membership", or "mixed: ..."."""


@dataclasses.dataclass(frozen=True)
class SAEInterp:
    """interp.json entry for one variant x layer."""

    variant: str
    layer: int
    module: str
    hook_name: str
    d_sae: int
    n_tokens: int
    n_dead: int
    n_eligible: int
    n_requested: int
    n_sampled: int
    explainer: str
    judge: str
    n_explanation_failures: int
    """Latents whose explanation failed (their examples count as `n_unexplained_examples` of each task)."""
    n_explanation_request_failures: int
    """Of those, latents whose explanation request got no reply (the kinds as in `ScoreSummary`)."""
    n_explanation_malformed_failures: int
    n_explanation_parse_failures: int
    token_entropy: statistics.Spread
    fuzz: ScoreSummary
    detection: ScoreSummary
    explainer_prompt_version: str = ""
    """`prompts.EXPLAINER_PROMPT_VERSION` of the LLM explainer; "" for the token-list one, and in interp.json
    files written before the version was recorded (version 1 of the prompt)."""
    health: ExplanationHealth | None = None
    """Are the explanations specific (interp/health.py)? None in results written before it was measured."""

    @property
    def label(self) -> str:
        """The variant, with the replicate when the run has several (`control-draw1.seed0`)."""
        return self.module.replace(f".layer{self.layer}", "")


@dataclasses.dataclass(frozen=True)
class InterpSummary:
    run_dir: str
    scaling: str
    """What was scaled down from the paper's protocol, and the judge (see `describe_scaling`)."""
    saes: tuple[SAEInterp, ...]
    latents: tuple[LatentResult, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """interp.json: everything but the per-latent rows (those are latents.csv); NaN is written as null."""
        return {
            "run_dir": self.run_dir,
            "scaling": self.scaling,
            "seconds": round(self.seconds, 2),
            "saes": [dataclasses.asdict(sae) for sae in self.saes],
        }


def summarize_scores(
    records_per_latent: Sequence[Sequence[ScoredExample]], n_bootstrap: int, seed: int
) -> ScoreSummary:
    """Pooled and per-latent statistics of one scorer over the latents of one SAE."""
    labels, probabilities, predictions, failed, groups = [], [], [], [], []
    failures: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for group, records in enumerate(records_per_latent):
        for record in records:
            labels.append(record.activating)
            failed.append(record.failure is not None)
            probabilities.append(statistics.FAILED_PROBABILITY if record.failure else record.probability)
            predictions.append(bool(record.prediction))
            groups.append(group)
            if record.failure:
                failures[record.failure] += 1
            else:
                sources[record.source] += 1
    labels_a = np.asarray(labels, bool)
    effective = statistics.effective_predictions(labels_a, np.asarray(predictions, bool), np.asarray(failed, bool))
    counts = statistics.pair_counts(
        labels_a, np.asarray(probabilities, np.float64), np.asarray(groups, np.int64), len(records_per_latent)
    )
    interval = statistics.pooled_auroc_interval(counts, n_bootstrap, seed)
    return ScoreSummary(
        auroc=interval.estimate,
        auroc_low=interval.low,
        auroc_high=interval.high,
        latent_auroc=statistics.spread(statistics.per_group_auroc(counts)),
        balanced_accuracy=statistics.balanced_accuracy(labels_a, effective),
        f1=statistics.f1_score(labels_a, effective),
        n_examples=len(labels),
        n_positives=int(labels_a.sum()),
        n_negatives=int((~labels_a).sum()),
        n_failed=int(sum(failed)),
        n_request_failures=failures["request"],
        n_malformed_failures=failures["malformed"],
        n_parse_failures=failures["parse"],
        n_unexplained_examples=failures["explanation"],
        probability_source=_source_label(sources),
    )


class LatentTaskScores(NamedTuple):
    """One latent's scores in one task (fuzz or detection)."""

    auroc: float
    balanced_accuracy: float
    f1: float
    n_failed: int
    """Examples the judge failed on (scored as in `summarize_scores`)."""


def latent_scores(records: Sequence[ScoredExample]) -> LatentTaskScores:
    """One latent's scores, failures handled as in `summarize_scores`."""
    labels = np.asarray([r.activating for r in records], bool)
    failed = np.asarray([r.failure is not None for r in records], bool)
    probabilities = np.asarray([statistics.FAILED_PROBABILITY if r.failure else r.probability for r in records])
    effective = statistics.effective_predictions(labels, np.asarray([bool(r.prediction) for r in records]), failed)
    return LatentTaskScores(
        statistics.auroc(labels, probabilities),
        statistics.balanced_accuracy(labels, effective),
        statistics.f1_score(labels, effective),
        int(failed.sum()),
    )


def _source_label(sources: Counter[str]) -> str:
    if not sources:
        return "none"
    if len(sources) == 1:
        return next(iter(sources))
    total = sum(sources.values())
    return "mixed: " + ", ".join(f"{name} {count / total:.0%}" for name, count in sources.most_common())


def write_latents_csv(path: Path, rows: Sequence[LatentResult]) -> None:
    names = [field.name for field in dataclasses.fields(LatentResult)]
    buffer = io.StringIO(newline="")
    rows_out = [[_cell(getattr(row, name)) for name in names] for row in rows]
    csv.writer(buffer, lineterminator="\n").writerows([names, *rows_out])
    write_text_atomic(path, buffer.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def format_interp_table(summary: InterpSummary, judge_failed: bool = False) -> str:
    """The printed summary: one line per variant x layer, the scaling and judge above it. With `judge_failed`
    (the judge failed its calibration) every AUROC is marked `!` and the table says why."""
    header = (
        f"{'variant':<30} {'layer':>5}  {'fuzz AUROC [95% CI]':<23} {'detect AUROC [95% CI]':<23} "
        f"{'fuzz med':>8} {'bal.acc':>7} {'F1':>5} {'entropy':>7} {'elig/sampled/dead':>18} {'failed':>7} "
        f"{'distinct/echo':>13}"
    )
    lines = [summary.scaling, *([UNCALIBRATED_JUDGE] if judge_failed else []), header]
    mark = "!" if judge_failed else ""
    for sae in summary.saes:
        fuzz, detection = sae.fuzz, sae.detection
        failed = fuzz.n_failed + detection.n_failed
        total = fuzz.n_examples + detection.n_examples
        lines.append(
            f"{sae.label:<30} {sae.layer:>5}  {_interval(fuzz) + mark:<23} {_interval(detection) + mark:<23} "
            f"{fuzz.latent_auroc.median:>8.3f} {fuzz.balanced_accuracy:>7.3f} {fuzz.f1:>5.2f} "
            f"{sae.token_entropy.mean:>7.2f} {f'{sae.n_eligible}/{sae.n_sampled}/{sae.n_dead}':>18} "
            f"{f'{failed}/{total}':>7} {_health_cell(sae.health):>13}"
        )
    sources = sorted({sae.fuzz.probability_source for sae in summary.saes})
    lines.append(
        f"probabilities from: {', '.join(sources)}; bal.acc and F1 are fuzzing's; "
        f"failed examples count as wrong and score 0.5"
    )
    lines.append(
        "distinct/echo: explanations that are distinct, and that echo the explainer prompt's own words "
        "(interp/health.py)"
    )
    lines += [f"warning: explanations of {sae.module}: {text}" for sae in summary.saes for text in health_warnings(sae)]
    failing = [sae for sae in summary.saes if sae.fuzz.n_failed + sae.detection.n_failed]
    if failing:
        lines.append(
            f"{'failures by kind':<30} {'layer':>5}  {'examples':>9} {'request':>7} {'malformed':>9} {'parse':>5} "
            f"{'unexplained':>11}  {'explanations':>12} {'request':>7} {'malformed':>9} {'parse':>5}"
        )
        for sae in failing:
            failed, total, request, malformed, parse, unexplained = _failure_counts(sae)
            lines.append(
                f"{sae.label:<30} {sae.layer:>5}  {f'{failed}/{total}':>9} {request:>7} {malformed:>9} {parse:>5} "
                f"{unexplained:>11}  {f'{sae.n_explanation_failures}/{sae.n_sampled}':>12} "
                f"{sae.n_explanation_request_failures:>7} {sae.n_explanation_malformed_failures:>9} "
                f"{sae.n_explanation_parse_failures:>5}"
            )
        lines.append(
            "a rerun asks request and malformed failures again; `randsae interpret RUN --retry-failed` re-asks "
            "parse failures (replies without the expected answers) too"
        )
    return "\n".join(lines)


UNCALIBRATED_JUDGE = (
    "! NOT MEANINGFUL: the judge failed its calibration on probe latents, so these AUROCs measure the judge"
)
"""The flag on AUROCs of a judge that failed calibration (interp/calibration.py)."""


def health_warnings(sae: SAEInterp) -> tuple[str, ...]:
    """The explanation-health warnings of one SAE (none for results written before health was measured)."""
    return () if sae.health is None else sae.health.warnings


def _health_cell(health: ExplanationHealth | None) -> str:
    if health is None:
        return "-"
    return f"{health.distinct_share:.0%}/{health.echo_share:.0%}"


def _failure_counts(sae: SAEInterp) -> tuple[int, int, int, int, int, int]:
    """(failed, examples, request, malformed, parse, unexplained) over fuzzing and detection together."""
    fuzz, detection = sae.fuzz, sae.detection
    return (
        fuzz.n_failed + detection.n_failed,
        fuzz.n_examples + detection.n_examples,
        fuzz.n_request_failures + detection.n_request_failures,
        fuzz.n_malformed_failures + detection.n_malformed_failures,
        fuzz.n_parse_failures + detection.n_parse_failures,
        fuzz.n_unexplained_examples + detection.n_unexplained_examples,
    )


def describe_failures(sae: SAEInterp) -> str:
    """'40 of 200 examples of trained.layer3 (0 request, ...)': every kind, explanation failures included."""
    failed, total, request, malformed, parse, unexplained = _failure_counts(sae)
    return (
        f"{failed} of {total} examples of {sae.module} ({request} request, {malformed} malformed reply, {parse} "
        f"parse failures, {unexplained} without explanation: {sae.n_explanation_failures} of {sae.n_sampled} "
        f"explanations failed, {sae.n_explanation_request_failures} request, "
        f"{sae.n_explanation_malformed_failures} malformed reply, {sae.n_explanation_parse_failures} parse)"
    )


def _interval(score: ScoreSummary) -> str:
    return f"{score.auroc:.3f} [{score.auroc_low:.3f}, {score.auroc_high:.3f}]"


def load_interp_summary(results: InterpDir) -> InterpSummary:
    """One judge's interp.json and latents.csv back as the dataclasses that wrote them."""
    data = read_json(results.summary, "`randsae interpret`")
    try:
        saes = tuple(from_plain(SAEInterp, sae) for sae in data["saes"])
        latents = read_latents_csv(results.table) if results.table.is_file() else ()
        return InterpSummary(str(data["run_dir"]), str(data["scaling"]), saes, latents, float(data["seconds"]))
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"{results.root} holds damaged interp results ({error!r})",
            f"Delete {results.summary} and rerun `randsae interpret`",
        ) from None


def read_latents_csv(path: Path) -> tuple[LatentResult, ...]:
    """latents.csv rows as `LatentResult`s (an empty number cell is NaN)."""
    hints = typing.get_type_hints(LatentResult)
    with open(path, newline="") as file:
        return tuple(
            LatentResult(**{name: _parse_cell(text, hints[name]) for name, text in row.items()})
            for row in csv.DictReader(file)
        )


def _parse_cell(text: str, kind: Any) -> Any:
    if kind is str:
        return text
    if text == "":
        return math.nan
    return int(text) if kind is int else float(text)
