"""The SAE-EV gap across the swept learning rates: trained's mean candidate EV minus each random variant's."""

from __future__ import annotations

import pytest

from randsae.analysis.lr_gaps import ev_gaps, lr_dependent
from randsae.run_dir import SAEKey


def test_gaps_average_replicates_and_a_sign_change_makes_the_reading_lr_dependent():
    candidates = {
        SAEKey("trained", 3, sae_seed=0): {1e-3: 0.80, 1e-4: 0.40},
        SAEKey("trained", 3, sae_seed=1): {1e-3: 0.70, 1e-4: 0.50},  # trained means: 0.75, 0.45
        SAEKey("control", 3, variant_seed=0): {1e-3: 0.60, 1e-4: 0.55},
        SAEKey("control", 3, variant_seed=1): {1e-3: 0.50, 1e-4: 0.65},  # control means: 0.55, 0.60
        SAEKey("rerandomized", 3): {1e-3: 0.30, 1e-4: 0.20},
    }
    gaps = ev_gaps(candidates)
    assert gaps[("control", 3)] == {1e-4: pytest.approx(-0.15), 1e-3: pytest.approx(0.20)}
    assert gaps[("rerandomized", 3)] == {1e-4: pytest.approx(0.25), 1e-3: pytest.approx(0.45)}
    assert ("trained", 3) not in gaps
    assert lr_dependent(gaps) == {"control": "depends on learning rate (layer 3: - at lr 0.0001, + at lr 0.001)"}


def test_a_layer_without_a_trained_sae_has_no_gap():
    assert ev_gaps({SAEKey("control", 10): {1e-3: 0.5}}) == {}
