"""The verdict's readings from per-layer intervals, the learning-rate hook and the printed table."""

from __future__ import annotations

import math

import pytest

from randsae.analysis.separation import ALL_LAYERS, SeparationRow
from randsae.analysis.verdict import format_verdict, layer_side, reading, verdict_table

NAN = math.nan


def row(layer: str, low: float, high: float, metric: str = "m", direction: int = 1) -> SeparationRow:
    middle = (low + high) / 2 if not math.isnan(low) else 0.1
    return SeparationRow(
        metric, "control", layer, direction, 0.5, 0.5 - middle, middle, low, high, 2.0, 0.01, 20, 40, 40, 1, 1
    )


def test_a_layer_separates_when_its_interval_excludes_zero_on_the_measurements_side():
    assert layer_side(row("1", 0.1, 0.3)) == 1
    assert layer_side(row("1", -0.3, -0.1)) == -1
    assert layer_side(row("1", -0.1, 0.3)) == 0
    assert layer_side(row("1", NAN, NAN)) == 0
    assert layer_side(row("1", -0.3, -0.1, direction=-1)) == 1  # random higher separates
    assert layer_side(row("1", 0.1, 0.3, direction=-1)) == -1


@pytest.mark.parametrize(
    "intervals, direction, expected",
    [
        ([(0.1, 0.2), (0.2, 0.3)], 1, "separates at every layer"),
        ([(0.1, 0.2), (-0.1, 0.3), (0.05, 0.1)], 1, "separates at layers 1, 3"),
        ([(-0.1, 0.2), (0.1, 0.3)], 1, "separates at layer 2"),
        ([(-0.1, 0.2), (-0.2, 0.3)], 1, "does not separate"),
        ([(-0.3, -0.1), (-0.3, -0.2)], 1, "trained below random at every layer"),
        ([(0.1, 0.3), (-0.3, -0.2)], 1, "separates at layer 1; trained below random at layer 2"),
        ([(0.1, 0.3), (-0.3, -0.2)], -1, "separates at layer 2; trained above random at layer 1"),
        ([(NAN, NAN), (NAN, NAN)], 1, "no interval (too few units)"),
        ([(NAN, NAN), (0.1, 0.2)], 1, "separates at layer 2"),
    ],
)
def test_readings(intervals, direction, expected):
    rows = [row(str(i + 1), low, high, direction=direction) for i, (low, high) in enumerate(intervals)]
    assert reading(rows) == expected


def test_verdict_rows_follow_the_pooled_rows_and_sign_the_effect():
    rows = [
        row(ALL_LAYERS, 0.1, 0.2, metric="a"),
        row(ALL_LAYERS, -0.2, -0.1, metric="b", direction=-1),
        row("1", 0.1, 0.2, metric="a"),
        row("3", 0.0, 0.2, metric="a"),
        row("1", -0.2, -0.1, metric="b", direction=-1),
    ]
    verdict = verdict_table(rows)
    assert [(v.metric, v.reading) for v in verdict] == [
        ("a", "separates at layer 1"),
        ("b", "separates at every layer"),
    ]
    assert verdict[0].separating_layers == ("1",) and verdict[0].n_units == 20
    assert verdict[0].effect == 2.0 and verdict[1].effect == -2.0  # direction x effect
    text = format_verdict(verdict)
    assert text.splitlines()[2].split()[:2] == ["a", "control"] and "+0.150 [+0.100, +0.200]" in text


def test_a_reading_that_changes_with_the_learning_rate_says_so():
    pooled = row(ALL_LAYERS, 0.1, 0.2)
    main = [pooled, row("1", 0.1, 0.2)]
    sweep = {"1e-4": [pooled, row("1", 0.1, 0.2)], "3e-4": [row(ALL_LAYERS, -0.1, 0.2), row("1", -0.1, 0.2)]}
    (verdict,) = verdict_table(main, sweep)
    assert verdict.reading == "depends on learning rate (lr 1e-4: separates at every layer; lr 3e-4: does not separate)"
    same = {"1e-4": main, "3e-4": main}
    assert verdict_table(main, same)[0].reading == "separates at every layer"


def test_no_interval_is_shown_as_such():
    verdict = verdict_table([row(ALL_LAYERS, NAN, NAN), row("1", NAN, NAN)])
    assert "[no CI]" in format_verdict(verdict) and verdict[0].reading == "no interval (too few units)"
    assert format_verdict([]).startswith("no verdict")


def test_a_pooled_interval_can_separate_where_no_layer_does():
    rows = [row(ALL_LAYERS, 0.02, 0.2), row("1", -0.1, 0.3), row("2", -0.05, 0.2)]
    assert verdict_table(rows)[0].reading == "separates only pooled over layers"
    rows[0] = row(ALL_LAYERS, -0.02, 0.2)
    assert verdict_table(rows)[0].reading == "does not separate"


def test_each_learning_rate_is_read_with_its_own_pooled_row():
    layer = row("1", -0.1, 0.3)
    main = [row(ALL_LAYERS, -0.1, 0.2), layer]
    sweep = {"1e-4": [row(ALL_LAYERS, 0.01, 0.2), layer], "3e-4": main}
    assert verdict_table(main, sweep)[0].reading == (
        "depends on learning rate (lr 1e-4: separates only pooled over layers; lr 3e-4: does not separate)"
    )
