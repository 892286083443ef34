"""The variant × layer matrix as resumable stages: prepare → harvest → train → evaluate (→ interp, analysis,
report, which read the run directory and are run by the CLI after these).

The model is loaded once; each variant is built from it in turn, harvested for every layer in one
truncated forward per batch, its SAEs trained on the cache, and evaluated, before the next variant is
built. Every output is checked for before it is made, so rerunning the same command resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from randsae.atomic import save_safetensors_atomic, write_text_atomic
from randsae.config import ExperimentConfig, dump_config
from randsae.data.activations import (
    ActivationCache,
    CacheManifest,
    CacheWriter,
    cache_folder,
    harvest,
)
from randsae.data.text import iter_texts
from randsae.data.tokens import SPLITS, load_tokens, not_bos, save_tokens, tokenize_splits
from randsae.errors import UserError
from randsae.metrics.downstream import DownstreamMetrics, downstream_metrics
from randsae.metrics.quality import ReconstructionAccumulator, ReconstructionMetrics
from randsae.models.hookpoints import (
    check_layers,
    find_blocks,
    hook_name,
    residual_stream,
)
from randsae.models.load import LoadedModel, is_hub_id, load_model
from randsae.models.variants import NoiseEmbedding, build_variant, predicts_language
from randsae.sae import SAEConfig, SparseAutoencoder, load_sae
from randsae.sae.trainer import train_sae

METRICS_FILE = "metrics.json"
SHARD_WINDOWS = 64
"""Windows per activation-cache shard (a multiple of every harvest batch size used)."""


@dataclasses.dataclass(frozen=True)
class MetricsRow:
    """Quality of one SAE: a row of metrics.csv."""

    variant: str
    layer: int
    hook_name: str
    d_sae: int
    explained_variance_pooled: float
    explained_variance_per_token: float
    mse: float
    cosine: float
    l0: float
    l1: float
    dead_fraction: float
    dense_fraction: float
    ce_loss_score: float
    kl_score: float
    ce_clean: float
    ce_zero: float
    ce_sae: float
    meaningful_downstream: bool
    """False for every variant but `trained` (`predicts_language`): CE/KL scores need a language model."""
    n_eval_tokens: int


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}", "Use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available", "Use device = 'cpu' or 'auto'")
    return device


class Timings:
    """Wall time per stage, accumulated across resumes in timings.json."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "timings.json"
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            write_text_atomic(self.path, json.dumps(self.seconds, indent=1))


def sae_folder(run_dir: Path, variant: str, layer: int) -> Path:
    return run_dir / "saes" / variant / f"layer{layer}"


def prepare_run(cfg: ExperimentConfig, run_dir: Path, lm: LoadedModel, progress: bool = True) -> dict[str, Tensor]:
    """Write the resolved config, the tokenizer and the token windows (or reuse them on resume)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = dump_config(cfg)
    config_path = run_dir / "config.toml"
    if config_path.is_file() and config_path.read_text() != resolved:
        raise UserError(f"{run_dir} holds a run of a different config",
                        "Use a new --out folder, or the same config to resume that run")
    write_text_atomic(config_path, resolved)
    lm.tokenizer.save_pretrained(run_dir / "tokenizer")
    tokens_dir = run_dir / "tokens"
    if not all((tokens_dir / f"{split}.safetensors").is_file() for split in SPLITS):
        if progress:
            print(f"tokenizing {cfg.data.source} ...")
        save_tokens(tokens_dir, tokenize_splits(iter_texts(cfg.data), lm.tokenizer, cfg.tokens))
    _save_unembedding(lm.model, run_dir / "unembedding.safetensors")
    return {split: load_tokens(tokens_dir, split) for split in SPLITS}


def _save_unembedding(model: nn.Module, path: Path) -> None:
    """The trained unembedding (fp16) for the dashboards' top promoted logits."""
    output = model.get_output_embeddings()
    if path.is_file() or output is None:
        return
    save_safetensors_atomic(path, {"W_U": output.weight.detach().T.to(torch.float16).cpu()})


def harvest_variant(cfg: ExperimentConfig, run_dir: Path, model: nn.Module, blocks: nn.ModuleList,
                    blocks_path: str, model_name: str, variant: str, tokens: dict[str, Tensor],
                    device: torch.device, progress: bool) -> None:
    """Cache every layer's residual stream on both splits, one truncated forward per batch."""
    batch = cfg.eval.batch_windows
    for split, input_ids in tokens.items():
        writers = {}
        for layer in cfg.layers:
            spec = CacheManifest(model=model_name, variant=variant, layer=layer,
                                 hook_name=hook_name(blocks_path, layer), split=split,
                                 n_tokens=input_ids.numel(), d_model=model.config.hidden_size,
                                 dtype=cfg.activation_dtype, context_size=input_ids.shape[1])
            windows_per_shard = max(batch, SHARD_WINDOWS // batch * batch)
            writers[layer] = CacheWriter(cache_folder(run_dir, variant, layer, split), spec, windows_per_shard)
        harvest(lambda ids: residual_stream(model, blocks, cfg.layers, ids), input_ids, writers, batch, device,
                desc=f"harvest {variant} {split}", progress=progress)


def train_variant_saes(cfg: ExperimentConfig, run_dir: Path, variant: str, model_name: str, blocks_path: str,
                       device: torch.device, progress: bool) -> None:
    """Train one SAE per layer on the variant's train cache (skipping those already saved)."""
    for layer in cfg.layers:
        folder = sae_folder(run_dir, variant, layer)
        if (folder / "training.json").is_file():
            continue
        cache = ActivationCache.open(cache_folder(run_dir, variant, layer, "train"))
        manifest = cache.manifest
        sae_cfg = SAEConfig(
            architecture=cfg.sae.architecture, d_in=manifest.d_model, d_sae=cfg.sae.expansion * manifest.d_model,
            k=cfg.sae.k if cfg.sae.architecture == "topk" else None,
            l1_coefficient=cfg.sae.l1_coefficient if cfg.sae.architecture == "relu_l1" else None,
            metadata={"model_name": model_name, "hook_name": hook_name(blocks_path, layer), "variant": variant,
                      "layer": layer, "context_size": manifest.context_size, "prepend_bos": True,
                      "dataset_path": cfg.data.source, "seed": cfg.seed})
        train_cfg = dataclasses.replace(cfg.train, context_size=manifest.context_size)
        if progress:
            print(f"training {cfg.sae.architecture} SAE {variant} layer {layer} (d_sae {sae_cfg.d_sae})")
        folder.mkdir(parents=True, exist_ok=True)
        result = train_sae(cache, train_cfg, sae_cfg, seed=cfg.seed, device=device, progress=progress,
                           checkpoint=folder / "train_checkpoint.pt")  # an interrupted training resumes
        result.save(folder)


@torch.no_grad()
def reconstruction_on_heldout(sae: SparseAutoencoder, cache: ActivationCache, device: torch.device,
                              rows: int = 4096) -> ReconstructionMetrics:
    """Quality metrics over the held-out cache, BOS rows left out."""
    context = cache.manifest.context_size
    accumulator = ReconstructionAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    start = 0
    for chunk in cache.iter_chunks(rows=rows):
        keep = not_bos(torch.arange(start, start + chunk.shape[0]), context)
        start += chunk.shape[0]
        x = chunk[keep].to(device)
        z = sae.encode(x)
        accumulator.add(x, sae.decode(z), z)
    return accumulator.result()


def evaluate_variant(cfg: ExperimentConfig, run_dir: Path, model: nn.Module, blocks: nn.ModuleList,
                     variant: str, heldout: Tensor, device: torch.device) -> list[MetricsRow]:
    """Reconstruction metrics on the held-out cache and CE/KL scores with the SAE spliced in."""
    saes = {layer: load_sae(sae_folder(run_dir, variant, layer), device=device).eval() for layer in cfg.layers}
    reconstruction = {layer: reconstruction_on_heldout(sae, ActivationCache.open(
        cache_folder(run_dir, variant, layer, "heldout")), device) for layer, sae in saes.items()}
    embedding = model.get_input_embeddings()
    reseed = (lambda index: embedding.reseed(cfg.variant.seed + index)) if isinstance(embedding, NoiseEmbedding) else None
    downstream = downstream_metrics(
        model, {layer: (blocks[layer], saes[layer]) for layer in cfg.layers},
        heldout[: cfg.eval.ce_windows], batch_size=cfg.eval.batch_windows, before_forward=reseed)
    return [_row(variant, layer, saes[layer], reconstruction[layer], downstream[layer]) for layer in cfg.layers]


def _row(variant: str, layer: int, sae: SparseAutoencoder, rec: ReconstructionMetrics,
         down: DownstreamMetrics) -> MetricsRow:
    names = {field.name for field in dataclasses.fields(MetricsRow)}
    measured = {**dataclasses.asdict(rec), **dataclasses.asdict(down)}
    return MetricsRow(variant=variant, layer=layer, hook_name=sae.cfg.metadata.get("hook_name", ""),
                      d_sae=sae.cfg.d_sae, meaningful_downstream=predicts_language(variant),
                      n_eval_tokens=rec.n_tokens, **{k: v for k, v in measured.items() if k in names})


def load_metrics(run_dir: Path) -> list[MetricsRow]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [MetricsRow(**row) for row in json.loads(path.read_text())]


def save_metrics(run_dir: Path, rows: list[MetricsRow]) -> None:
    """metrics.json and metrics.csv, one row per variant × layer, each written atomically."""
    plain = [dataclasses.asdict(row) for row in rows]
    write_text_atomic(run_dir / METRICS_FILE, json.dumps(plain, indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[field.name for field in dataclasses.fields(MetricsRow)])
    writer.writeheader()
    writer.writerows(plain)
    write_text_atomic(run_dir / "metrics.csv", buffer.getvalue())


def run_pipeline(cfg: ExperimentConfig, run_dir: Path, *, progress: bool = True,
                 lm: LoadedModel | None = None) -> list[MetricsRow]:
    """Prepare, harvest, train and evaluate every variant × layer; returns the metrics rows.

    Pass `lm` to run on a model object of your own (it is treated as the trained model).
    """
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    lm = lm or load_model(cfg.model, device)
    blocks_path, blocks = find_blocks(lm.model, cfg.model.blocks)
    check_layers(cfg.layers, len(blocks))
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the model and layers are known to be good
    timings = Timings(run_dir)
    timings.seconds["load_model"] = time.perf_counter() - start
    load_step0 = None
    if is_hub_id(cfg.model.name):
        load_step0 = lambda: load_model(cfg.model, device, revision=cfg.model.step0_revision).model  # noqa: E731
    with timings.stage("prepare"):
        tokens = prepare_run(cfg, run_dir, lm, progress)
    rows = {(row.variant, row.layer): row for row in load_metrics(run_dir)}
    for variant in cfg.variants:
        if all((variant, layer) in rows for layer in cfg.layers):
            continue
        with timings.stage("build_variants"):
            model = build_variant(lm.model, variant, cfg.variant, load_step0).to(device).eval()
            _, variant_blocks = find_blocks(model, blocks_path)
        with timings.stage("harvest"):
            harvest_variant(cfg, run_dir, model, variant_blocks, blocks_path, lm.display_name, variant, tokens,
                            device, progress)
        with timings.stage("train"):
            train_variant_saes(cfg, run_dir, variant, lm.display_name, blocks_path, device, progress)
        with timings.stage("evaluate"):
            for row in evaluate_variant(cfg, run_dir, model, variant_blocks, variant, tokens["heldout"], device):
                rows[(row.variant, row.layer)] = row
        save_metrics(run_dir, [rows[key] for key in sorted(rows, key=_row_order(cfg))])
        del model
    return [rows[(variant, layer)] for variant in cfg.variants for layer in cfg.layers]


def _row_order(cfg: ExperimentConfig):
    order = {name: index for index, name in enumerate(cfg.variants)}
    return lambda key: (order.get(key[0], len(order)), key[1])


def format_metrics_table(rows: list[MetricsRow]) -> str:
    """The variant × layer table printed at the end of a run."""
    header = (f"{'variant':<30}{'layer':>6}{'EV pool':>9}{'EV per-token':>13}{'cos':>7}{'MSE':>10}{'L0':>7}{'L1':>9}"
              f"{'dead':>7}{'dense':>7}{'CE scr':>8}{'KL scr':>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        flag = "" if row.meaningful_downstream else "*"
        lines.append(
            f"{row.variant:<30}{row.layer:>6}{row.explained_variance_pooled:>9.3f}"
            f"{row.explained_variance_per_token:>13.3f}"
            f"{row.cosine:>7.3f}{row.mse:>10.4g}{row.l0:>7.1f}{row.l1:>9.1f}{row.dead_fraction:>7.3f}"
            f"{row.dense_fraction:>7.3f}{row.ce_loss_score:>7.3f}{flag:1}{row.kl_score:>7.3f}{flag:1}")
    if any(not row.meaningful_downstream for row in rows):
        lines.append("* CE/KL scores are not meaningful for variants other than trained: no language model predicts.")
    return "\n".join(lines)
