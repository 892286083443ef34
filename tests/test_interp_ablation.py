"""The explainer ablation's reading: which of explainer and judge fails, from the two pooled AUROCs' CIs."""

from __future__ import annotations

import pytest

from randsae.interp.ablation import ablation_reading, task_reading
from randsae.interp.statistics import Spread
from randsae.interp.summary import ScoreSummary


def score(auroc: float, low: float, high: float) -> ScoreSummary:
    spread = Spread(auroc, auroc, auroc, auroc, auroc, auroc, 10, 0)
    return ScoreSummary(auroc, low, high, spread, 0.5, 0.5, 100, 50, 50, 0, 0, 0, 0, 0, "logprobs")


@pytest.mark.parametrize(
    ("llm", "token_list", "reading"),
    [
        (score(0.50, 0.45, 0.55), score(0.52, 0.48, 0.57), "judge at chance with either explanation"),
        (score(0.51, 0.46, 0.56), score(0.80, 0.74, 0.86), "token lists score higher: the LLM explainer loses"),
        (score(0.85, 0.80, 0.90), score(0.65, 0.60, 0.70), "LLM explanations score higher than token lists"),
        (score(0.70, 0.62, 0.78), score(0.74, 0.66, 0.82), "no clear difference"),
        # Touching intervals are not separated: the rule needs one CI wholly above the other.
        (score(0.60, 0.55, 0.66), score(0.72, 0.66, 0.80), "no clear difference"),
        # One side at chance, the other above it but overlapping: not the judge, not clearly the explainer.
        (score(0.52, 0.47, 0.58), score(0.60, 0.55, 0.66), "no clear difference"),
    ],
)
def test_task_reading_from_confidence_intervals(llm, token_list, reading):
    assert task_reading(llm, token_list).startswith(reading)


def test_tasks_that_disagree_are_each_named():
    chance, good = score(0.5, 0.45, 0.55), score(0.9, 0.85, 0.95)
    agree = ablation_reading({"fuzz": chance, "detection": chance}, {"fuzz": chance, "detection": chance})
    assert agree == "judge at chance with either explanation"
    split = ablation_reading({"fuzz": chance, "detection": chance}, {"fuzz": chance, "detection": good})
    assert split == (
        "fuzz: judge at chance with either explanation; "
        "detection: token lists score higher: the LLM explainer loses what they carry"
    )
