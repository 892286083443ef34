"""A synthetic run directory for the report tests, made by the real interp and analysis stages.

Tokens, activations, SAEs and quality metrics are synthetic (small and seeded); `interp/` and `analysis/`
are then written by `randsae.interp.stage.interpret_run` (LLM-free token judge) and
`randsae.analysis.stage.analyze_run`, so the report is tested against the formats those stages really
write. The activations make some latents single-token (a token's embedding plus noise) so dashboards have
real structure; the vocabulary holds HTML-special pieces (`<b>`, `&amp;`, a newline) to test escaping.

Run as a script to time the report of a default-sized run (4 variants x 3 layers, ~100 latents per SAE):
    python tests/test_report_builder.py [FOLDER]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import tomli_w
import torch
from safetensors.torch import load_file, save_file

from randsae.analysis.config import AnalysisConfig
from randsae.analysis.stage import analyze_run
from randsae.data.activations import CacheManifest, CacheWriter
from randsae.run_dir import RunDir, Site
from randsae.interp.config import InterpConfig
from randsae.interp.stage import interpret_run
from randsae.sae import SAEConfig, TopKSAE

VARIANTS = ("trained", "step0", "rerandomized", "control")
SPECIAL_WORDS = ("<b>", "&amp;", "\n", '"quoted"')


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level Hugging Face tokenizer (id 0 is BOS) that `AutoTokenizer.from_pretrained` loads offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", *SPECIAL_WORDS]
    words += [f" w{i}" for i in range(vocab_size - len(words))]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<bos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>").save_pretrained(folder)


def metrics_rows(variants, layers, rng: np.random.Generator) -> list[dict]:
    rows = []
    for variant in variants:
        for layer in layers:
            rows.append({
                "variant": variant, "layer": layer, "hook_name": f"layers.{layer}", "d_sae": 96,
                "explained_variance_pooled": float(rng.uniform(0.5, 0.9)),
                "explained_variance_per_token": float(rng.uniform(0.5, 0.9)), "mse": float(rng.uniform(0.01, 0.1)),
                "cosine": float(rng.uniform(0.7, 0.95)), "l0": 4.0, "l1": float(rng.uniform(1, 10)),
                "dead_fraction": float(rng.uniform(0, 0.2)), "dense_fraction": 0.0,
                "ce_loss_score": float(rng.uniform(0.5, 1.0)), "kl_score": float(rng.uniform(0.5, 1.0)),
                "ce_clean": 3.0, "ce_zero": 8.0, "ce_sae": 3.5, "meaningful_downstream": variant == "trained",
                "n_eval_tokens": 1000, "n_downstream_predictions": 500})
    return rows


def build_run(root: Path, *, variants=VARIANTS, layers=(0, 1, 2), d_model=24, d_sae=96, k=4, vocab_size=64,
              n_windows=32, context_size=64, n_latents=6, interp=True, analysis=True, unembedding=True,
              seed=0) -> Path:
    """Write a complete run directory under `root` and return it."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    run = root / "run"
    (run / "tokens").mkdir(parents=True)
    frequency = 1.0 / (np.arange(1, vocab_size) + 10.0)  # Zipf-like, so frequent tokens recur
    for split in ("train", "heldout"):
        ids = rng.choice(np.arange(1, vocab_size), size=(n_windows, context_size), p=frequency / frequency.sum())
        ids = ids.astype(np.int32)
        ids[:, 0] = 0
        save_file({"input_ids": torch.from_numpy(ids)}, run / "tokens" / f"{split}.safetensors")
    save_tokenizer(run / "tokenizer", vocab_size)
    for variant in variants:
        for layer in layers:
            embedding = torch.randn(vocab_size, d_model)
            for split in ("train", "heldout"):
                input_ids = load_file(run / "tokens" / f"{split}.safetensors")["input_ids"].long()
                acts = embedding[input_ids] + 0.3 * torch.randn(n_windows, context_size, d_model)
                spec = CacheManifest(model="synthetic", variant=variant, layer=layer, hook_name=f"layers.{layer}",
                                     split=split, n_tokens=n_windows * context_size, d_model=d_model,
                                     dtype="float32", context_size=context_size)
                writer = CacheWriter(RunDir(run).activations(Site(variant, layer), split), spec, windows_per_shard=n_windows)
                writer.add(acts)
                writer.finish()
            sae = TopKSAE(SAEConfig("topk", d_model, d_sae, k=k,
                                    metadata={"variant": variant, "layer": layer, "hook_name": f"layers.{layer}"}))
            with torch.no_grad():
                # the most frequent tokens' embeddings (ids are Zipf-ranked) make single-token latents
                directions = torch.cat([embedding[:d_sae], torch.randn(max(0, d_sae - vocab_size), d_model)])
                sae.W_dec.copy_(directions / directions.norm(dim=1, keepdim=True))
                sae.W_enc.copy_(sae.W_dec.T)
                sae.b_enc.zero_()
                sae.b_dec.zero_()
            sae.save(run / "saes" / variant / f"layer{layer}")
    rows = metrics_rows(variants, layers, rng)
    (run / "metrics.json").write_text(json.dumps(rows, indent=1))
    (run / "metrics.csv").write_text(",".join(rows[0]) + "\n" + "".join(
        ",".join(str(v) for v in row.values()) + "\n" for row in rows))
    (run / "config.toml").write_text(tomli_w.dumps({
        "variants": list(variants), "layers": list(layers),
        "model": {"name": "synthetic/tiny-model", "revision": "main"},
        "data": {"source": "synthetic"},
        "tokens": {"context_size": context_size, "train_tokens": n_windows * context_size},
        "sae": {"architecture": "topk", "expansion": d_sae // d_model, "k": k}}))
    (run / "timings.json").write_text(json.dumps({"tokenize": 1.5, "harvest": 12.0, "train": 30.25}))
    if unembedding:
        save_file({"W_U": torch.randn(d_model, vocab_size), "final_norm_weight": torch.ones(d_model)},
                  run / "unembedding.safetensors")
    if interp:
        interpret_run(run, InterpConfig(n_latents=n_latents, min_examples=4, window_size=16, n_top_windows=200,
                                        n_explanation_windows=6, n_quantiles=3, n_per_quantile=3, n_negatives=10,
                                        n_bootstrap=50, verify_rows=32), progress=False)
    if analysis:
        analyze_run(run, AnalysisConfig(bootstrap_samples=50, window_tokens=16, min_token_count=5), progress=False)
    return run


def test_builder_writes_every_stage(tmp_path):
    run = build_run(tmp_path, variants=("trained", "control"), layers=(1,), n_latents=3)
    assert (run / "interp" / "token" / "interp.json").is_file()
    assert (run / "interp" / "token" / "latents.csv").read_text().count("\n") == 1 + 2 * 3
    assert json.loads((run / "analysis" / "analysis.json").read_text())["saes"]


if __name__ == "__main__":
    from randsae.report import write_report

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/randsae-report-benchmark")
    if not (folder / "run" / "interp" / "token" / "latents.csv").is_file():
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        build_run(folder, d_model=576, d_sae=4608, k=32, vocab_size=49152, n_windows=64, context_size=256,
                  n_latents=100)
        print(f"built the default-sized run in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    write_report(folder / "run", progress=True)
    print(f"write_report: {time.perf_counter() - start:.1f} s")
