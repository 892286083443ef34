"""Judge calibration: does the judge recognise a latent whose explanation is known to be right?

Before any SAE latent is scored, probe "latents" with a known ground truth are built from the held-out tokens:
each fires (activation 1) exactly where a rule holds (`PROBES`: the token " of", numbers in digits, the first
word after a full stop). Their examples are drawn as a real latent's are, and the judge scores them twice per
task: with the true explanation and with another probe's (mismatched). The pooled AUROC with the true
explanations is the judge's *sensitivity*; with the mismatched ones its *specificity* check (it should be
near 0.5: a judge that says "fires" to everything or reads only the marks scores high there too). A judge
whose sensitivity is below `MIN_SENSITIVITY` on a task cannot tell a right explanation from chance, so the
run says so at the top of its output and report: its AUROCs of SAE latents are then not meaningful.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from randsae.atomic import write_json_atomic
from randsae.errors import UserError
from randsae.interp.config import InterpConfig
from randsae.interp.examples import sample_examples, window_of_rows
from randsae.interp.explainers import Explanation, StrTokens
from randsae.interp.judges import Judge
from randsae.interp.latent_cache import LatentEntries
from randsae.interp.outputs import TASKS
from randsae.interp.scorers import score_latents
from randsae.interp.summary import summarize_scores
from randsae.records import from_plain
from randsae.run_dir import InterpDir, read_json

MIN_SENSITIVITY = 0.7
"""Pooled AUROC with the true explanations below which a judge fails calibration."""
MAX_ROWS = 200_000
"""Held-out rows the probes are looked for in (the first ones): enough for every probe, cheap to decode."""


class Probe(NamedTuple):
    name: str
    explanation: str
    fires: Callable[[Sequence[str]], np.ndarray]
    """Token texts of consecutive rows -> bool per row: where the probe fires."""


def _after_full_stop(texts: Sequence[str]) -> np.ndarray:
    previous = np.array([False, *(text.rstrip().endswith(".") for text in texts[:-1])])
    return previous & np.array([text.strip().isalpha() for text in texts])


PROBES = (
    Probe("of", 'the word " of"', lambda texts: np.array([text.strip() == "of" for text in texts])),
    Probe("digits", "numbers written in digits", lambda texts: np.array([text.strip().isdigit() for text in texts])),
    Probe("sentence_start", "the first word of a sentence, right after a full stop", _after_full_stop),
)


@dataclasses.dataclass(frozen=True)
class TaskCalibration:
    task: str
    sensitivity: float
    """Pooled AUROC of the probes scored with their true explanations."""
    specificity: float
    """Pooled AUROC with a mismatched explanation (another probe's): near 0.5 for a judge that reads it."""

    @property
    def fails(self) -> bool:
        return not self.sensitivity >= MIN_SENSITIVITY


@dataclasses.dataclass(frozen=True)
class JudgeCalibration:
    probes: tuple[str, ...]
    """The probes found often enough in the held-out text to be scored."""
    tasks: tuple[TaskCalibration, ...]

    @property
    def fails(self) -> bool:
        return any(task.fails for task in self.tasks)

    def describe(self) -> str:
        """One line: each task's sensitivity and specificity, and the verdict."""
        figures = "; ".join(f"{t.task} {t.sensitivity:.2f} / {t.specificity:.2f}" for t in self.tasks)
        head = f"judge calibration on {len(self.probes)} probe latents (AUROC true / mismatched explanation): {figures}"
        if self.fails:
            return (
                f"{head}. WARNING: the judge fails calibration (true-explanation AUROC below {MIN_SENSITIVITY}): "
                "its AUROCs below are not meaningful"
            )
        return head


def probe_entries(
    tokens: np.ndarray, counted: np.ndarray, str_tokens: StrTokens, context_size: int, cfg: InterpConfig
) -> dict[Probe, LatentEntries]:
    """The probes active in at least `cfg.min_examples` windows of the first `MAX_ROWS` counted rows."""
    n = min(tokens.size, MAX_ROWS) // context_size * context_size
    distinct, inverse = np.unique(tokens[:n], return_inverse=True)
    texts = str_tokens(distinct.tolist())
    per_row = [texts[i] for i in inverse]
    found = {}
    for probe in PROBES:
        rows = np.flatnonzero(probe.fires(per_row) & counted[:n]).astype(np.int64)
        if np.unique(window_of_rows(rows, context_size, cfg.window_size)).size >= cfg.min_examples:
            found[probe] = LatentEntries(rows, np.ones(rows.size, np.float32))
    return found


def calibrate_judge(
    judge: Judge,
    cfg: InterpConfig,
    tokens: np.ndarray,
    counted: np.ndarray,
    context_size: int,
    str_tokens: StrTokens,
    progress: bool = False,
) -> JudgeCalibration | None:
    """The judge's sensitivity and specificity per task on the probes; None with fewer than 2 probes found
    (a mismatched explanation needs another probe)."""
    entries = probe_entries(tokens, counted, str_tokens, context_size, cfg)
    if len(entries) < 2:
        return None
    probes = list(entries)
    examples = [
        sample_examples(entries[probe], tokens, context_size, cfg, np.random.default_rng([cfg.seed, i]))
        for i, probe in enumerate(probes)
    ]
    true = [Explanation(probe.explanation, None, "") for probe in probes]
    mismatched = true[1:] + true[:1]
    results = []
    for t, task in enumerate(TASKS):

        def scored(explanations: list[Explanation], task: str = task, t: int = t) -> float:
            rngs = [np.random.default_rng([cfg.seed, i, t]) for i in range(len(probes))]
            records = score_latents(task, examples, explanations, judge, cfg, rngs, str_tokens, progress)
            return summarize_scores(records, cfg.n_bootstrap, cfg.seed).auroc

        results.append(TaskCalibration(task, scored(true), scored(mismatched)))
    return JudgeCalibration(tuple(probe.name for probe in probes), tuple(results))


def save_calibration(paths: InterpDir, calibration: JudgeCalibration) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.calibration, dataclasses.asdict(calibration))


def load_calibration(paths: InterpDir) -> JudgeCalibration | None:
    """The judge's stored calibration; None when it was not calibrated (the token judge, too few probes)."""
    if not paths.calibration.is_file():
        return None
    try:
        return from_plain(JudgeCalibration, read_json(paths.calibration, "`randsae interpret`"))
    except (KeyError, TypeError) as error:
        raise UserError(
            f"{paths.calibration} is damaged ({error})", "Delete it and rerun `randsae interpret`"
        ) from None
