"""The synthetic analysis run of tests/helpers.py: its hand-built SAEs recover the planted activations exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from randsae.run_dir import RunDir, Site
from tests.helpers import STRUCTURED, TOKEN_ONLY, build_analysis_run, latent_kinds, planted_activations


@pytest.fixture
def structured_run(tmp_path: Path) -> Path:
    return build_analysis_run(tmp_path, {"trained": STRUCTURED, "step0": TOKEN_ONLY})


def test_exact_sae_recovers_the_planted_activations(structured_run: Path):
    from randsae.data.activations import ActivationCache
    from randsae.data.tokens import load_tokens
    from randsae.sae.base import load_sae

    sae = load_sae(structured_run / "saes" / "trained" / "layer1")
    x = ActivationCache.open(RunDir(structured_run).activations(Site("trained", 1), "heldout")).load()
    ids = load_tokens(structured_run / "tokens" / "heldout.safetensors").numpy()
    expected = planted_activations(ids, latent_kinds(STRUCTURED), seed=1)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), expected, atol=1e-4)
    assert (
        json.loads((structured_run / "saes" / "trained" / "layer1" / "cfg.json").read_text())["metadata"]["layer"] == 1
    )
