"""Helpers shared by several test files: a tiny real model and experiment, and synthetic run directories.

Each builder writes what one stage reads, small and seeded; the fixtures that wrap them live in conftest.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPTNeoXConfig,
    MambaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    RwkvConfig,
)

from randsae.analysis.config import AnalysisConfig
from randsae.analysis.stage import analyze_run
from randsae.config import EvalConfig, ExperimentConfig, SAEShape, dump_config
from randsae.data.activations import CacheManifest, CacheWriter
from randsae.data.text import TextConfig
from randsae.data.tokens import TokenConfig, save_tokens
from randsae.interp.config import InterpConfig
from randsae.interp.stage import interpret_run
from randsae.metrics.results import MetricsRow, save_metrics
from randsae.models.load import ModelConfig
from randsae.run_dir import RunDir, Site
from randsae.sae import TopKOutput, TopKSAE
from randsae.sae.base import SAEConfig, register
from randsae.sae.relu import ReluSAE
from randsae.sae.trainer import TrainConfig

# --- A tiny real Hugging Face model and an experiment on it (the pipeline tests) ---


CORPUS = """The cat sat on the mat and looked at the dog. The dog ran to the park with a red ball.
A small bird sang in the tall tree while the sun rose over the quiet town.
Children played near the river and the water was cold and clear in the morning.
The old man read a book about ships, stars and the long roads of the north.
In the winter the snow fell on the roofs and the streets of the city were white.
She wrote a letter to her friend and walked to the post office before noon.
The teacher asked the students to open their books and read the first page aloud.
Farmers planted wheat in the spring and harvested it at the end of the summer.
"""


def _words() -> list[str]:
    return sorted(set(re.findall(r"\w+|[^\w\s]", CORPUS)))


def tiny_model_config(family: str, vocab_size: int) -> PretrainedConfig:
    """A 4-block model of width 32 of a transformer (`gpt_neox`) or a non-transformer family (`mamba`, `rwkv`)."""
    size: dict[str, Any] = {"vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 4}
    size |= {"bos_token_id": 0, "eos_token_id": 0}
    if family == "mamba":  # tied embeddings, like the Hub's Mamba checkpoints
        return MambaConfig(**size, state_size=8, expand=2)
    if family == "rwkv":
        return RwkvConfig(**size, attention_hidden_size=32, intermediate_size=64, context_length=128)
    return GPTNeoXConfig(
        **size, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=False
    )


def build_tiny_model(folder: Path, seed: int = 0, family: str = "gpt_neox") -> Path:
    """A 4-block model of `family` (`tiny_model_config`) with a word-level tokenizer, saved like a Hub model folder."""
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{word: i + 2 for i, word in enumerate(_words())}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(tiny_model_config(family, len(vocab))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(model_dir: Path, corpus: Path, **overrides):
    """A small experiment on the tiny model: 2 layers, 4 variants, seconds to run."""
    cfg = ExperimentConfig(
        layers=(1, 3),
        variants=("trained", "rerandomized", "rerandomized_keep_embeddings", "control"),
        device="cpu",
        activation_dtype="float32",
        model=ModelConfig(name=str(model_dir)),
        data=TextConfig(source=str(corpus / "*.jsonl")),
        tokens=TokenConfig(context_size=32, train_tokens=2048, heldout_tokens=1024, heldout_fraction=0.3),
        sae=SAEShape(expansion=4, k=4),
        train=TrainConfig(batch_size=256, total_tokens=4096, warmup_steps=2),
        eval=EvalConfig(ce_windows=4, batch_windows=4),
    )
    return dataclasses.replace(cfg, **overrides)


# --- A synthetic run for the interp stage: held-out tokens, a cache and an SAE per variant, no model ---

INTERP_VOCAB = [f" w{i}" for i in range(40)]
INTERP_D_MODEL, INTERP_D_SAE, INTERP_K, INTERP_CONTEXT, INTERP_N_ROWS = 16, 48, 3, 64, 24


@register
class TinyTopK(TopKSAE):
    """A minimal TopK SAE: its own `encode_topk`, the fast path the latent cache uses."""

    architecture = "interp_test_topk"

    def encode_topk(self, x):
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        return pre.topk(self.cfg.k, dim=1)

    def encode(self, x):
        values, indices = TinyTopK.encode_topk(self, x)
        return torch.zeros(x.shape[0], self.cfg.d_sae).scatter(1, indices, values)


@register
class BrokenTopK(TinyTopK):
    """Its fast path drops the largest activation: the cache check must catch it."""

    architecture = "interp_test_broken_topk"

    def encode_topk(self, x):
        values, indices = super().encode_topk(x)
        return TopKOutput(values.clone().index_fill_(1, torch.tensor([0]), 0.0), indices)


def str_tokens(ids):
    return [INTERP_VOCAB[i] for i in ids]


def _write_interp_cache(folder: Path, activations: torch.Tensor, variant: str, layer: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"activations": activations.contiguous()}, folder / "shard_00000.safetensors")
    digest = hashlib.sha256((folder / "shard_00000.safetensors").read_bytes()).hexdigest()
    manifest = {
        "model": "synthetic",
        "variant": variant,
        "layer": layer,
        "hook_name": f"layers.{layer}",
        "split": "heldout",
        "n_tokens": activations.shape[0],
        "d_model": activations.shape[1],
        "dtype": "float32",
        "context_size": INTERP_CONTEXT,
        "complete": True,
        "shards": [{"file": "shard_00000.safetensors", "n_tokens": activations.shape[0], "sha256": digest}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def build_interp_run(
    run_dir: Path, variants=("noise", "tokenlike"), layer: int = 1, architecture: str = "interp_test_topk"
) -> Path:
    """Write the run directory the interp stage reads.

    In the `tokenlike` variant each activation is its token's embedding plus a little noise, so latents
    follow tokens and token-list explanations should score well; in `noise` activations ignore the token,
    so they should score at chance.
    """
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(
        1, len(INTERP_VOCAB), (INTERP_N_ROWS, INTERP_CONTEXT), generator=generator, dtype=torch.int32
    )
    tokens[:, 0] = 0  # BOS
    (run_dir / "tokens").mkdir(parents=True)
    save_file({"input_ids": tokens}, run_dir / "tokens" / "heldout.safetensors")
    embedding = torch.randn(len(INTERP_VOCAB), INTERP_D_MODEL, generator=generator)
    for variant in variants:
        noise = torch.randn(tokens.numel(), INTERP_D_MODEL, generator=generator)
        x = embedding[tokens.reshape(-1).long()] * 3 + 0.3 * noise if variant == "tokenlike" else noise
        _write_interp_cache(run_dir / "activations" / variant / f"layer{layer}" / "heldout", x, variant, layer)
        cfg = SAEConfig(
            architecture=architecture,
            d_in=INTERP_D_MODEL,
            d_sae=INTERP_D_SAE,
            k=INTERP_K,
            metadata={
                "variant": variant,
                "layer": layer,
                "hook_name": f"layers.{layer}",
                "model_name": "synthetic",
                "context_size": INTERP_CONTEXT,
            },
        )
        sae = {"interp_test_topk": TinyTopK, "interp_test_broken_topk": BrokenTopK}[architecture](cfg)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(INTERP_D_MODEL, INTERP_D_SAE, generator=generator))
            sae.W_dec.copy_(sae.W_enc.T)
        sae.save(run_dir / "saes" / variant / f"layer{layer}")
    return run_dir


# --- A synthetic run with known latents for the analysis stage ---
#
# Activations are x = a @ D + noise + offset, D orthonormal dictionary rows and the noise orthogonal to them,
# so a hand-built ReLU SAE with decoder D and encoder D^T recovers the planted latent activations a exactly.
# Latent kinds:
#   single     fires with a fixed value on one token
#   lookup     token-dependent value on a set of four tokens (multi-token, but a pure function of the token)
#   positional a smooth function of the position, on every token
#   context    fires on a set of three tokens only when the previous token is in the first half of the vocabulary

ANALYSIS_VOCAB = 40
ANALYSIS_CONTEXT = 33
ANALYSIS_D_IN = 64
STRUCTURED = {"single": 6, "lookup": 6, "positional": 6, "context": 6}
TOKEN_ONLY = {"single": 6, "lookup": 18}


def latent_kinds(kinds: dict[str, int]) -> list[str]:
    return [kind for kind, count in kinds.items() for _ in range(count)]


def planted_activations(input_ids: np.ndarray, kinds: list[str], seed: int) -> np.ndarray:
    """a [n_windows * ANALYSIS_CONTEXT, n_latents] for the planted latent kinds (BOS rows included, zero)."""
    rng = np.random.default_rng(seed)
    n_windows = input_ids.shape[0]
    tokens = input_ids.reshape(-1)
    position = np.tile(np.arange(ANALYSIS_CONTEXT), n_windows)
    previous = np.roll(input_ids, 1, axis=1).reshape(-1)
    acts = np.zeros((tokens.size, len(kinds)))
    for j, kind in enumerate(kinds):
        chosen = rng.choice(np.arange(1, ANALYSIS_VOCAB), size=4, replace=False)
        if kind == "single":
            acts[:, j] = 2.0 * (tokens == chosen[0])
        elif kind == "lookup":
            values = np.zeros(ANALYSIS_VOCAB)
            values[chosen] = rng.uniform(0.5, 2.0, size=4)
            acts[:, j] = values[tokens]
        elif kind == "positional":
            phase = rng.uniform(0, 2 * np.pi)
            acts[:, j] = 1.0 + np.sin(2 * np.pi * position / (ANALYSIS_CONTEXT - 1) + phase)
        elif kind == "context":
            acts[:, j] = 2.0 * np.isin(tokens, chosen[:3]) * (previous < ANALYSIS_VOCAB // 2)
    acts[position == 0] = 0.0
    return acts


def build_analysis_run(
    root: Path, variants: dict[str, dict[str, int]], layers=(0, 1), n_windows=(96, 64), noise=0.5, seed=0
) -> Path:
    """Write tokens, activation caches and exact SAEs for every variant x layer; returns the run dir.

    `noise` is the noise variance relative to the planted variance, so every variant's exact SAE explains
    about the same share of variance (SAE quality alike, as the paper found for trained and random models).
    """
    rng = np.random.default_rng(seed)
    ids = {
        split: rng.integers(1, ANALYSIS_VOCAB, size=(n, ANALYSIS_CONTEXT))
        for split, n in zip(("train", "heldout"), n_windows, strict=True)
    }
    for split in ids:
        ids[split][:, 0] = 0  # BOS
    for split, v in ids.items():
        save_tokens(root / "tokens" / f"{split}.safetensors", torch.from_numpy(v).int())
    for v_index, (variant, kinds) in enumerate(variants.items()):
        names = latent_kinds(kinds)
        for layer in layers:
            layer_seed = 1000 * v_index + layer
            gaussian = np.random.default_rng(layer_seed).normal(size=(ANALYSIS_D_IN, ANALYSIS_D_IN))
            basis = np.linalg.qr(gaussian)[0].T
            dictionary, noise_basis = basis[: len(names)], basis[len(names) :]
            offset = np.random.default_rng(layer_seed + 1).normal(size=ANALYSIS_D_IN)
            signal_variance = planted_activations(ids["train"], names, seed=layer_seed).var(0).sum()
            noise_std = np.sqrt(noise * signal_variance / noise_basis.shape[0])
            for s_index, split in enumerate(("train", "heldout")):
                acts = planted_activations(ids[split], names, seed=layer_seed)
                noise_rng = np.random.default_rng(layer_seed + 10 + s_index)
                noise_part = noise_std * noise_rng.normal(size=(acts.shape[0], noise_basis.shape[0]))
                x = acts @ dictionary + noise_part @ noise_basis
                _write_analysis_cache(root, variant, layer, split, (x + offset).astype(np.float32))
            sae = ReluSAE(
                SAEConfig(
                    "relu_l1",
                    ANALYSIS_D_IN,
                    len(names),
                    l1_coefficient=0.0,
                    metadata={"variant": variant, "layer": layer, "context_size": ANALYSIS_CONTEXT},
                )
            )
            with torch.no_grad():
                sae.W_dec.copy_(torch.from_numpy(dictionary))
                sae.W_enc.copy_(torch.from_numpy(dictionary.T))
                sae.b_enc.zero_()
                sae.b_dec.copy_(torch.from_numpy(offset))
            sae.save(root / "saes" / variant / f"layer{layer}")
    return root


def _write_analysis_cache(root: Path, variant: str, layer: int, split: str, x: np.ndarray) -> None:
    spec = CacheManifest(
        model="synthetic",
        variant=variant,
        layer=layer,
        hook_name=f"layer{layer}",
        split=split,
        n_tokens=x.shape[0],
        d_model=x.shape[1],
        dtype="float32",
        context_size=ANALYSIS_CONTEXT,
    )
    writer = CacheWriter(RunDir(root).activations(Site(variant, layer), split), spec, windows_per_shard=40)
    windows = torch.from_numpy(x).reshape(-1, ANALYSIS_CONTEXT, x.shape[1])
    for start in range(0, windows.shape[0], 16):
        writer.add(windows[start : start + 16])
    writer.finish()


# --- A complete run for the report ---
#
# Tokens, activations, SAEs and quality metrics are synthetic; `interp/` and `analysis/` are then written by
# the real stages (LLM-free token judge), so the report is tested against the formats those stages really
# write. Some latents are single-token (a token's embedding plus noise) so dashboards have real structure;
# the vocabulary holds HTML-special pieces (`<b>`, `&amp;`, a newline) to test escaping.

REPORT_VARIANTS = ("trained", "step0", "rerandomized", "control")
SPECIAL_WORDS = ("<b>", "&amp;", "\n", '"quoted"')


def _save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level Hugging Face tokenizer (id 0 is BOS) that `AutoTokenizer.from_pretrained` loads offline."""
    words = ["<bos>", *SPECIAL_WORDS]
    words += [f" w{i}" for i in range(vocab_size - len(words))]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<bos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>").save_pretrained(folder)


def _report_metrics_rows(variants, layers, d_sae: int, rng: np.random.Generator) -> list[MetricsRow]:
    return [
        MetricsRow(
            variant=variant,
            layer=layer,
            variant_seed=None,
            sae_seed=None,
            hook_name=f"layers.{layer}",
            d_sae=d_sae,
            explained_variance_pooled=float(rng.uniform(0.5, 0.9)),
            explained_variance_per_token=float(rng.uniform(0.5, 0.9)),
            mse=float(rng.uniform(0.01, 0.1)),
            cosine=float(rng.uniform(0.7, 0.95)),
            l0=4.0,
            l1=float(rng.uniform(1, 10)),
            dead_fraction=float(rng.uniform(0, 0.2)),
            dense_fraction=0.0,
            massive_dims=0,
            explained_variance_without_massive=float(rng.uniform(0.5, 0.9)),
            ce_loss_score=float(rng.uniform(0.5, 1.0)),
            kl_score=float(rng.uniform(0.5, 1.0)),
            ce_clean=3.0,
            ce_zero=8.0,
            ce_sae=3.5,
            meaningful_downstream=variant == "trained",
            n_eval_tokens=1000,
            n_downstream_predictions=252,
        )
        for variant in variants
        for layer in layers
    ]


def tiny_interp_config(**overrides) -> InterpConfig:
    """The auto-interp protocol shrunk to the tiny runs' few hundred held-out tokens."""
    settings = dict(
        n_latents=3,
        min_examples=2,
        window_size=16,
        n_top_windows=50,
        n_explanation_windows=4,
        n_quantiles=2,
        n_per_quantile=2,
        n_negatives=4,
        n_bootstrap=20,
        verify_rows=16,
    )
    return InterpConfig(**{**settings, **overrides})


def build_report_run(
    root: Path,
    *,
    variants=REPORT_VARIANTS,
    layers=(0, 1, 2),
    d_model=24,
    d_sae=96,
    k=4,
    vocab_size=64,
    n_windows=32,
    context_size=64,
    n_latents=6,
    interp=True,
    analysis=True,
    unembedding=True,
    seed=0,
) -> Path:
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
    _save_tokenizer(run / "tokenizer", vocab_size)
    for variant in variants:
        for layer in layers:
            embedding = torch.randn(vocab_size, d_model)
            for split in ("train", "heldout"):
                input_ids = load_file(run / "tokens" / f"{split}.safetensors")["input_ids"].long()
                acts = embedding[input_ids] + 0.3 * torch.randn(n_windows, context_size, d_model)
                spec = CacheManifest(
                    model="synthetic",
                    variant=variant,
                    layer=layer,
                    hook_name=f"layers.{layer}",
                    split=split,
                    n_tokens=n_windows * context_size,
                    d_model=d_model,
                    dtype="float32",
                    context_size=context_size,
                )
                writer = CacheWriter(
                    RunDir(run).activations(Site(variant, layer), split), spec, windows_per_shard=n_windows
                )
                writer.add(acts)
                writer.finish()
            sae = TopKSAE(
                SAEConfig(
                    "topk",
                    d_model,
                    d_sae,
                    k=k,
                    metadata={"variant": variant, "layer": layer, "hook_name": f"layers.{layer}"},
                )
            )
            with torch.no_grad():
                # the most frequent tokens' embeddings (ids are Zipf-ranked) make single-token latents
                directions = torch.cat([embedding[:d_sae], torch.randn(max(0, d_sae - vocab_size), d_model)])
                sae.W_dec.copy_(directions / directions.norm(dim=1, keepdim=True))
                sae.W_enc.copy_(sae.W_dec.T)
                sae.b_enc.zero_()
                sae.b_dec.zero_()
            sae.save(run / "saes" / variant / f"layer{layer}")
    save_metrics(RunDir(run), _report_metrics_rows(variants, layers, d_sae, rng))
    (run / "config.toml").write_text(
        dump_config(
            ExperimentConfig(
                variants=tuple(variants),
                layers=tuple(layers),
                model=ModelConfig(name="synthetic/tiny-model", revision="main"),
                data=TextConfig(source="synthetic"),
                tokens=TokenConfig(
                    context_size=context_size,
                    train_tokens=n_windows * context_size,
                    heldout_tokens=n_windows * context_size,
                ),
                sae=SAEShape(architecture="topk", expansion=d_sae // d_model, k=k),
                eval=EvalConfig(ce_windows=4),
            )
        )
    )
    (run / "timings.json").write_text(json.dumps({"tokenize": 1.5, "harvest": 12.0, "train": 30.25}))
    if unembedding:
        save_file(
            {"W_U": torch.randn(d_model, vocab_size), "final_norm_weight": torch.ones(d_model)},
            run / "unembedding.safetensors",
        )
    if interp:
        interpret_run(
            run,
            InterpConfig(
                n_latents=n_latents,
                min_examples=4,
                window_size=16,
                n_top_windows=200,
                n_explanation_windows=6,
                n_quantiles=3,
                n_per_quantile=3,
                n_negatives=10,
                n_bootstrap=50,
                verify_rows=32,
            ),
            progress=False,
        )
    if analysis:
        analyze_run(run, AnalysisConfig(bootstrap_samples=50, window_tokens=16, min_token_count=5), progress=False)
    return run


# --- Reading the report back ---


class TableReader(HTMLParser):
    """Every table's cells as text, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id", f"table{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def read_tables(html_text: str) -> dict[str, list[list[str]]]:
    reader = TableReader()
    reader.feed(html_text)
    return reader.tables
