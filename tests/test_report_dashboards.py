"""Latent dashboards and their Neuronpedia JSON against independent recomputations from the SAE, the
activations and the unembedding of the run."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from randsae.data.activations import ActivationCache
from randsae.interp.latent_cache import LatentEntries
from randsae.report import write_report
from randsae.report.dashboards import latent_page
from randsae.report.latent_data import HISTOGRAM_BINS, N_LOGITS, WindowLayout, latent_view
from randsae.report.neuronpedia import feature_json
from randsae.run_dir import RunDir, Site
from randsae.sae import load_sae
from tests.helpers import build_report_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = build_report_run(tmp_path_factory.mktemp("dashboards"), variants=("trained", "rerandomized"), layers=(0, 1))
    write_report(run, progress=False)
    return run


@pytest.fixture(scope="module")
def scored(run):
    with open(run / "interp" / "token" / "latents.csv", newline="") as file:
        return [(row["variant"], int(row["layer"]), int(row["latent"])) for row in csv.DictReader(file)]


def feature(run: Path, variant: str, layer: int, latent: int) -> dict:
    return json.loads((run / "dashboards" / variant / f"layer{layer}" / f"latent{latent}.json").read_text())


def test_one_page_and_one_feature_json_per_scored_latent(run, scored):
    pages = sorted(run.glob("dashboards/*/layer*/latent*.html"))
    assert len(pages) == len(scored) == 2 * 2 * 6
    for variant, layer, latent in scored:
        data = feature(run, variant, layer, latent)
        assert data["modelId"] == "tiny-model" and data["layer"] == f"{layer}-randsae-{variant}"
        assert data["index"] == str(latent)
        assert len(data["freq_hist_data_bar_heights"]) == len(data["freq_hist_data_bar_values"]) == HISTOGRAM_BINS
        assert data["explanations"][0]["description"].startswith("fires on tokens:")
        for example in data["activations"]:
            assert len(example["tokens"]) == len(example["values"]) == 16  # the interp stage's window size
            assert example["values"][example["maxValueTokenIndex"]] == example["maxValue"]


def test_firing_count_and_max_match_the_sae_on_the_heldout_activations(run, scored):
    """Recomputed with the SAE's own encode() over the activation cache, BOS rows left out."""
    for variant, layer in sorted({(v, y) for v, y, _ in scored}):
        sae = load_sae(run / "saes" / variant / f"layer{layer}")
        cache = ActivationCache.open(RunDir(run).activations(Site(variant, layer), "heldout"))
        with torch.no_grad():
            codes = sae.encode(cache.load())
        codes[:: cache.manifest.context_size] = 0  # position 0 of every window is BOS
        for latent in [n for v, y, n in scored if (v, y) == (variant, layer)]:
            data = feature(run, variant, layer, latent)
            column = codes[:, latent]
            assert sum(data["freq_hist_data_bar_heights"]) == int((column > 0).sum())
            assert data["maxActApprox"] == pytest.approx(float(column.max()), rel=1e-3)
            assert data["activations"][0]["maxValue"] == pytest.approx(float(column.max()), rel=1e-3)
            assert data["frac_nonzero"] == pytest.approx(float((column > 0).float().mean()) * 64 / 63, rel=1e-6)


def test_promoted_logits_are_the_decoder_direction_through_the_unembedding(run, scored):
    unembedding = load_file(run / "unembedding.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    variant, layer, latent = scored[0]
    direction = load_file(run / "saes" / variant / f"layer{layer}" / "sae_weights.safetensors")["W_dec"][latent]
    logits = (direction * unembedding["final_norm_weight"]) @ unembedding["W_U"]
    top = logits.topk(N_LOGITS)
    data = feature(run, variant, layer, latent)
    assert data["pos_str"] == [tokenizer.decode([i]) for i in top.indices.tolist()]
    assert data["pos_values"] == pytest.approx(top.values.tolist(), rel=1e-5)
    assert data["neg_values"] == pytest.approx(logits.topk(N_LOGITS, largest=False).values.tolist(), rel=1e-5)


def test_token_text_is_escaped_in_every_window(run):
    seen_special = False
    for page in run.glob("dashboards/*/layer*/latent*.html"):
        for window in re.findall(r'<div class="window">(.*?)</div>', page.read_text()):
            assert "<b>" not in window and '"quoted"' not in window
            seen_special |= "&lt;b&gt;" in window and "&amp;amp;" in window
    assert seen_special  # the builder's vocabulary puts these pieces in the text


def test_layer_pages_link_every_variants_latents(run, scored):
    for layer in (0, 1):
        page = (run / "dashboards" / f"layer{layer}.html").read_text()
        links = re.findall(r'href="([^"#]+/latent\d+\.html)"', page)
        assert sorted(links) == sorted(f"{v}/layer{layer}/latent{n}.html" for v, y, n in scored if y == layer)
        assert all((run / "dashboards" / link).is_file() for link in links)


def test_without_unembedding_or_tokenizer_the_pages_say_so(tmp_path):
    run = build_report_run(tmp_path, variants=("trained",), layers=(0,), n_latents=2, unembedding=False, analysis=False)
    for path in (run / "tokenizer").iterdir():
        path.unlink()
    (run / "tokenizer").rmdir()
    write_report(run, progress=False)
    index = (run / "dashboards" / "index.html").read_text()
    assert "no unembedding.safetensors" in index and "tokens are shown as #id" in index
    path = next(run.glob("dashboards/trained/layer0/latent*.html"))
    page = path.read_text()
    assert "Top promoted logits" not in page and re.search(r"#\d+", page)
    assert json.loads(path.with_suffix(".json").read_text())["pos_str"] == []


def test_a_latent_that_never_fires_gets_an_empty_view_not_an_error():
    layout = WindowLayout(np.arange(64) % 7, np.array([f"t{i}" for i in range(7)], dtype=object), 32, 16)
    empty = LatentEntries(np.zeros(0, np.int64), np.zeros(0, np.float32))
    view = latent_view(
        "trained", 0, 5, empty, layout, 62, np.random.default_rng(0), explanation=None, scores={}, logits=None
    )
    assert view.n_firing == 0 and view.top_windows == () and view.quantiles == () and view.top_tokens == ()
    assert sum(view.histogram_counts) == 0
    assert feature_json(view, "m", None)["activations"] == []
    assert "latent 5" in latent_page(view, ["trained"], {"trained": "#000000"})
