"""The metrics table printed at the end of a run: CE/KL scores marked where they mean nothing."""

import dataclasses

from randsae.metrics.results import NOT_MEANINGFUL, MetricsRow, format_metrics_table
from randsae.models.variants import VARIANTS, predicts_language


def _row(variant: str) -> MetricsRow:
    numbers: dict = {field.name: 0.5 for field in dataclasses.fields(MetricsRow) if field.type in ("float", float)}
    return MetricsRow(
        **numbers,
        variant=variant,
        layer=3,
        variant_seed=None,
        sae_seed=None,
        massive_dims=0,
        hook_name="layers.3",
        d_sae=64,
        meaningful_downstream=predicts_language(variant),
        n_eval_tokens=100,
        n_downstream_predictions=100,
    )


def test_only_trained_predicts_language():
    assert [variant for variant in VARIANTS if predicts_language(variant)] == ["trained"]


def test_printed_table_marks_the_control_and_random_variants_ce_and_kl_scores():
    rows = [_row("trained"), _row("control"), _row("rerandomized")]
    lines = format_metrics_table([rows[0]]).splitlines()
    assert not any("*" in line for line in lines), "trained alone: nothing to mark"
    lines = format_metrics_table(rows).splitlines()
    by_variant = {line.split()[0]: line.split() for line in lines[2:5]}
    assert by_variant["trained"][-3:] == ["0.500", "0.500", "-"]  # CE, KL, converged (no learning curve)
    assert by_variant["control"][-3:-1] == ["0.500*", "0.500*"]
    assert by_variant["rerandomized"][-3:-1] == ["0.500*", "0.500*"]
    assert lines[-1] == f"* {NOT_MEANINGFUL}"
