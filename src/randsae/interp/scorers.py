"""Detection and fuzzing: turn a latent's test windows into judge prompts and the answers into records.

Detection shows plain windows. Fuzzing shows positives with their true highlights (tokens above the
highlight threshold) and negatives with the same number of random highlights, ceil(mean highlighted
tokens per positive), so the count of marks gives nothing away. Each latent's positives and negatives are
shuffled together and cut into prompts of `examples_per_prompt`; the requests of every latent go to the
judge at once, so an HTTP server has many in flight. Shuffle and highlights are seeded per latent, so a
rerun cuts the same prompts and asks again only those whose earlier answer failed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from itertools import repeat
from typing import NamedTuple

import numpy as np

from randsae.interp.config import InterpConfig
from randsae.interp.examples import LatentExamples
from randsae.interp.explainers import Explanation, StrTokens, highlight_mask
from randsae.interp.judges import Judge, JudgeItem, JudgeRequest, Verdict, failed
from randsae.interp.language_models import chunks


class ScoredExample(NamedTuple):
    """One judged window, in delphi's score-record layout plus what makes failures visible."""

    str_tokens: list[str]
    activations: list[float]
    distance: int
    """Rank bin among the top windows (0 = strongest); -1 for a negative."""
    activating: bool
    prediction: bool | None
    probability: float | None
    correct: bool
    """False for a failed example."""
    highlighted: list[int] | None
    """Positions shown as <<marked>> (fuzzing only)."""
    failure: str | None
    source: str


class _ItemToJudge(NamedTuple):
    """One test window as the judge sees it, and what its record keeps."""

    item: JudgeItem
    activating: bool
    distance: int
    activations: np.ndarray


def items_to_judge(
    task: str, examples: LatentExamples, cfg: InterpConfig, rng: np.random.Generator, str_tokens: StrTokens
) -> list[_ItemToJudge]:
    """The test windows of one latent, positives then negatives, marked for fuzzing."""
    positives, negatives = examples.positives, examples.negatives
    width = positives.token_ids.shape[1] if len(positives.window_ids) else cfg.window_size
    positive_marks: np.ndarray | None
    negative_marks: np.ndarray | None
    if task == "fuzz":
        positive_marks = highlight_mask(positives.activations, cfg.highlight_threshold)
        k = min(math.ceil(positive_marks.sum(axis=1).mean()), width) if len(positive_marks) else 1
        picks = rng.random((len(negatives.window_ids), width)).argsort(axis=1)[:, :k]
        negative_marks = np.zeros((len(negatives.window_ids), width), bool)
        np.put_along_axis(negative_marks, picks, True, axis=1)
    else:
        positive_marks = negative_marks = None
    items = []
    for windows, marks, activating in ((positives, positive_marks, True), (negatives, negative_marks, False)):
        window_marks: Iterable[np.ndarray | None] = repeat(None) if marks is None else marks
        for ids, acts, quantile, mark in zip(
            windows.token_ids, windows.activations, windows.quantile, window_marks, strict=False
        ):
            items.append(_ItemToJudge(JudgeItem(str_tokens(ids.tolist()), mark), activating, int(quantile), acts))
    return items


def score_latents(
    task: str,
    examples: Sequence[LatentExamples],
    explanations: Sequence[Explanation],
    judge: Judge,
    cfg: InterpConfig,
    rngs: Sequence[np.random.Generator],
    str_tokens: StrTokens,
    progress: bool = False,
    previous: Sequence[Sequence[ScoredExample] | None] | None = None,
    redo: Collection[str] = (),
) -> list[list[ScoredExample]]:
    """Judge every latent's test windows under its explanation; one record list per latent.

    `previous`: per latent, its records from an earlier run under the same explanation (or None). A prompt
    whose earlier records cover the same windows and failed in no kind of `redo` keeps them unasked.
    """
    plans: list[list[tuple[list[_ItemToJudge], int | Sequence[ScoredExample] | None]]] = []
    requests: list[JudgeRequest] = []
    for k, (latent_examples, explanation, rng) in enumerate(zip(examples, explanations, rngs, strict=True)):
        items = items_to_judge(task, latent_examples, cfg, rng, str_tokens)
        shuffled = [items[i] for i in rng.permutation(len(items))]
        batches = [list(batch) for batch in chunks(shuffled, cfg.examples_per_prompt)]
        earlier = _cut_like(previous[k] if previous else None, batches)
        plan: list[tuple[list[_ItemToJudge], int | Sequence[ScoredExample] | None]] = []
        for b, batch in enumerate(batches):
            if explanation.failure is not None:
                plan.append((batch, None))
            elif earlier and all(r.failure not in redo and r.failure != "explanation" for r in earlier[b]):
                plan.append((batch, earlier[b]))  # answered (or failed in a kept kind): not asked again
            else:
                requests.append(JudgeRequest(task, explanation.text, [test.item for test in batch]))
                plan.append((batch, len(requests) - 1))
        plans.append(plan)
    verdicts = judge.judge_many(requests, progress=progress)
    results = []
    for plan in plans:
        records: list[ScoredExample] = []
        for batch, source in plan:
            if source is None or isinstance(source, int):
                answers = failed("explanation", len(batch), "") if source is None else verdicts[source]
                records.extend(_record(test, verdict) for test, verdict in zip(batch, answers, strict=True))
            else:
                records.extend(source)  # kept from the earlier run
        results.append(records)
    return results


def _cut_like(
    records: Sequence[ScoredExample] | None, batches: Sequence[Sequence[_ItemToJudge]]
) -> list[Sequence[ScoredExample]] | None:
    """`records` cut into the prompts `batches`, or None when they were not judged on exactly these windows."""
    if records is None or len(records) != sum(len(batch) for batch in batches):
        return None
    cut, start = [], 0
    for batch in batches:
        part = records[start : start + len(batch)]
        start += len(batch)
        for record, test in zip(part, batch, strict=True):
            if (record.str_tokens, record.activating, record.highlighted) != (
                test.item.str_tokens,
                test.activating,
                _highlighted(test),
            ):
                return None
        cut.append(part)
    return cut


def _record(test: _ItemToJudge, verdict: Verdict) -> ScoredExample:
    return ScoredExample(
        str_tokens=test.item.str_tokens,
        activations=np.round(test.activations.astype(np.float64), 4).tolist(),
        distance=test.distance,
        activating=test.activating,
        prediction=verdict.prediction,
        probability=verdict.probability,
        correct=verdict.failure is None and verdict.prediction == test.activating,
        highlighted=_highlighted(test),
        failure=verdict.failure,
        source=verdict.source,
    )


def _highlighted(test: _ItemToJudge) -> list[int] | None:
    return None if test.item.marked is None else np.flatnonzero(test.item.marked).tolist()
