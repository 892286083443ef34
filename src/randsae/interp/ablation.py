"""The explainer ablation: is it the explainer or the judge that fails?

With an LLM judge, the stage also scores the same latents' token-list explanations (the tokens carrying most
activation mass) with the same judge. Side by side per SAE, the two AUROCs tell the failures apart: an LLM
judge that scores token lists well but the LLM's explanations at chance has a failing explainer; one at chance
with both has a failing judge (its calibration says the same from the probes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from randsae.interp.outputs import TASKS
from randsae.interp.summary import InterpSummary, ScoreSummary


@dataclasses.dataclass(frozen=True)
class AblationRow:
    """One SAE's pooled AUROCs with the LLM's explanations and with token lists, the same judge scoring both."""

    variant: str
    layer: int
    module: str
    label: str
    fuzz_llm: float
    fuzz_token_list: float
    detection_llm: float
    detection_token_list: float
    reading: str


def ablation_rows(llm: InterpSummary, token_list: InterpSummary) -> tuple[AblationRow, ...]:
    """Rows of the SAEs present in both summaries, in the LLM summary's order."""
    by_module = {sae.module: sae for sae in token_list.saes}
    rows = []
    for sae in llm.saes:
        other = by_module.get(sae.module)
        if other is None:
            continue
        rows.append(
            AblationRow(
                variant=sae.variant,
                layer=sae.layer,
                module=sae.module,
                label=sae.label,
                fuzz_llm=sae.fuzz.auroc,
                fuzz_token_list=other.fuzz.auroc,
                detection_llm=sae.detection.auroc,
                detection_token_list=other.detection.auroc,
                reading=ablation_reading(
                    {"fuzz": sae.fuzz, "detection": sae.detection},
                    {"fuzz": other.fuzz, "detection": other.detection},
                ),
            )
        )
    return tuple(rows)


def task_reading(llm: ScoreSummary, token_list: ScoreSummary) -> str:
    """What one task's two pooled AUROCs (with their 95% CIs) say, from non-overlapping intervals only."""
    if _covers_chance(llm) and _covers_chance(token_list):
        return "judge at chance with either explanation"
    if token_list.auroc_low > llm.auroc_high:
        return "token lists score higher: the LLM explainer loses what they carry"
    if llm.auroc_low > token_list.auroc_high:
        return "LLM explanations score higher than token lists"
    return "no clear difference"


def ablation_reading(llm: dict[str, ScoreSummary], token_list: dict[str, ScoreSummary]) -> str:
    """One reading when both tasks agree, else each task's."""
    readings = {task: task_reading(llm[task], token_list[task]) for task in TASKS}
    if len(set(readings.values())) == 1:
        return next(iter(readings.values()))
    return "; ".join(f"{task}: {text}" for task, text in readings.items())


def _covers_chance(score: ScoreSummary) -> bool:
    return score.auroc_low <= 0.5 <= score.auroc_high


def format_ablation_table(rows: Sequence[AblationRow]) -> str:
    """The printed ablation: pooled AUROCs with the LLM's explanations and with token lists, and the reading."""
    lines = [
        "explainer ablation: the same judge, LLM explanations vs token lists (pooled AUROC)",
        f"{'variant':<30} {'layer':>5}  {'fuzz LLM':>8} {'fuzz list':>9} {'detect LLM':>10} {'detect list':>11}  "
        "reading",
    ]
    lines += [
        f"{row.label:<30} {row.layer:>5}  {row.fuzz_llm:>8.3f} {row.fuzz_token_list:>9.3f} "
        f"{row.detection_llm:>10.3f} {row.detection_token_list:>11.3f}  {row.reading}"
        for row in rows
    ]
    return "\n".join(lines)
