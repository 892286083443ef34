"""The variant × layer matrix as resumable stages: prepare → harvest → train → evaluate (→ interp, analysis,
report, which read the run directory and are run by the CLI after these).

The model is loaded once; each variant is built from it in turn, harvested for every layer in one
truncated forward per batch, its SAEs trained on the cache (or, with `train.activations` streaming, on
forwards over the train windows, only the held-out split cached), and evaluated, before the next variant
is built. Every output is checked for before it is made, so rerunning the same command resumes.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from randsae.atomic import save_safetensors_atomic, write_text_atomic
from randsae.config import RUN_PARTS, ConfigChange, ExperimentConfig, config_changes, dump_config, load_run_config
from randsae.data.activations import DTYPES, MANIFEST, ActivationCache, CacheManifest, CacheWriter, harvest
from randsae.data.text import check_source, iter_texts
from randsae.data.tokens import (
    CHUNK_WINDOWS,
    SPLITS,
    count_not_bos,
    counted_rows,
    load_tokens,
    tokenize_splits,
    unknown_token_warning,
)
from randsae.errors import UserError
from randsae.metrics.downstream import DownstreamMetrics, downstream_metrics
from randsae.metrics.quality import ReconstructionAccumulator, ReconstructionMetrics
from randsae.metrics.results import MetricsRow, load_metrics, save_metrics, write_metrics_tables
from randsae.models.hookpoints import check_layers, final_norm_weight, find_blocks, hook_name, residual_stream
from randsae.models.load import LoadedModel, check_context_size, is_hub_id, load_model
from randsae.models.variants import NoiseEmbedding, VariantConfig, build_variant, predicts_language
from randsae.plan import (
    RunShape,
    StageEstimate,
    check_disk,
    estimate_stages,
    format_plan,
    human_bytes,
    total_disk,
)
from randsae.run_dir import (
    SAE_CHECKPOINT_FILE,
    SAE_METRICS_FILE,
    SAE_ORIGIN_FILE,
    SAE_TRAINING_FILE,
    RunDir,
    SAEKey,
    Site,
    Timings,
    lr_checkpoint,
    read_json,
    replicate_keys,
)
from randsae.sae import SAEConfig, SparseAutoencoder, distributed, load_sae
from randsae.sae.lr_sweep import sweep_lr
from randsae.sae.streaming import ActivationStream, train_streaming
from randsae.sae.trainer import TrainConfig, TrainResult, train_sae
from randsae.seeds import derived_seed

SHARD_WINDOWS = 64
"""Windows per activation-cache shard (a multiple of every harvest batch size used)."""


def resolve_device(name: str) -> torch.device:
    """The device `name` names (`auto`: CUDA when there is one); under torchrun, this process's own GPU."""
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}", "Use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available", "Use device = 'cpu' or 'auto'")
    return distributed.local_device(device)


def prepare_run(cfg: ExperimentConfig, run: RunDir, lm: LoadedModel, progress: bool = True) -> dict[str, Tensor]:
    """Write the resolved config (checked against the run's by `check_resume`), the tokenizer and the token
    windows (or reuse them on resume).

    The jobs of a split run share these files: the config is written only when it changes, and every file
    is written under a name of its writer's own, then renamed (jobs writing at once write the same bytes).
    """
    run.root.mkdir(parents=True, exist_ok=True)
    text = dump_config(cfg)
    if not run.config.is_file() or run.config.read_text() != text:
        write_text_atomic(run.config, text, shared=True)
    lm.tokenizer.save_pretrained(run.tokenizer())
    missing = [split for split in SPLITS if not tokens_intact(run.tokens(split))]
    if missing:
        if progress:
            print(f"tokenizing {cfg.data.source} ...")
        paths = {split: run.tokens(split) for split in missing}
        unknown = tokenize_splits(iter_texts(cfg.data, progress), lm.tokenizer, cfg.tokens, paths)
        warning = unknown_token_warning(unknown, lm.tokenizer)
        if warning:
            print(f"randsae: warning: {warning}", file=sys.stderr)
    _save_unembedding(lm.model, run.unembedding())
    return {split: load_tokens(run.tokens(split)) for split in SPLITS}


def plan_run(
    cfg: ExperimentConfig,
    lm: LoadedModel,
    blocks: nn.ModuleList,
    device: torch.device,
    *,
    mode: str,
    processes: int,
    tokenize: bool,
    measure: bool = True,
) -> list[StageEstimate]:
    """The run's estimated cost per stage (`randsae.plan`) with train activations `mode` (`activation_mode`)
    over `processes`, timed by a micro-benchmark when `measure` (the tokenizer's on the configured text only
    when the run still has to `tokenize`: a resumed run may no longer have its text)."""
    d_model = lm.model.config.hidden_size
    c = cfg.tokens.context_size
    train_tokens = cfg.tokens.train_tokens // c * c
    usable = count_not_bos(train_tokens, c) if cfg.train.skip_bos else train_tokens
    sae_cfg = cfg.sae.sae_config(d_model)
    parameters = list(lm.model.parameters())
    shape = RunShape(
        variants=len({(key.variant, key.variant_seed) for key in sae_keys(cfg)}),  # every random draw
        sae_seeds=cfg.replicates.sae_seeds,
        layers=len(cfg.layers),
        train_tokens=train_tokens,
        heldout_tokens=cfg.tokens.heldout_tokens // c * c,
        heldout_fraction=cfg.tokens.heldout_fraction,
        context_size=c,
        skip_bos=cfg.train.skip_bos,
        d_model=d_model,
        d_sae=sae_cfg.d_sae,
        n_params=sum(parameter.numel() for parameter in parameters),
        param_bytes=parameters[0].element_size(),
        activation_bytes=torch.empty(0, dtype=getattr(torch, cfg.activation_dtype)).element_size(),
        harvest_batch_windows=cfg.eval.batch_windows,
        train_batch_tokens=cfg.train.batch_size,
        train_steps=(cfg.train.total_tokens or cfg.train.n_epochs * usable) // cfg.train.batch_size,
        buffer_tokens=cfg.train.buffer_tokens,
        streamed=mode == "stream",
        processes=processes,
        ce_windows=cfg.eval.ce_windows,
        chunk_windows=CHUNK_WINDOWS,
        analysis_max_tokens=cfg.analysis.max_heldout_tokens,
        seed_stability=cfg.analysis.seed_stability,
        token_judge=cfg.interp.judge == "token",
        k=sae_cfg.k,
    )
    speeds = None
    if measure:
        from randsae.speed import measure_speeds

        texts = iter_texts(cfg.data, progress=False) if tokenize else None
        speeds = measure_speeds(
            lm.model, blocks, cfg.layers, cfg.eval.batch_windows, c, sae_cfg, cfg.train.batch_size, device,
            lm.tokenizer, texts,
        )  # fmt: skip
    return estimate_stages(shape, speeds)


def disk_left(run: RunDir, stages: list[StageEstimate]) -> tuple[int, int]:
    """(bytes the run still has to write: its estimate less what the run directory holds, free bytes there)."""
    existing = next(path for path in (run.root, *run.root.absolute().parents) if path.exists())
    written = sum(path.stat().st_size for path in run.root.rglob("*") if path.is_file()) if run.root.is_dir() else 0
    return max(0, total_disk(stages) - written), shutil.disk_usage(existing).free


def show_plan(
    cfg: ExperimentConfig,
    run: RunDir,
    progress: bool = True,
    *,
    variants: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    processes: int = 1,
    lm: LoadedModel | None = None,
) -> list[StageEstimate]:
    """`randsae run --plan`: print the plan of the job (`job_config`) run by `processes` on the model (`lm`, or
    the config's) and the disk it leaves free, writing nothing; returns the plan."""
    device = resolve_device(cfg.device)
    lm = lm or load_model(cfg.model, device, progress=progress)
    _, blocks = find_blocks(lm.model, cfg.model.blocks)
    check_layers(cfg.layers, len(blocks))
    check_context_size(lm, cfg.tokens.context_size)
    c = cfg.tokens.context_size
    mode = activation_mode(cfg, cfg.tokens.train_tokens // c * c, lm.model.config.hidden_size, processes)
    tokenize = not all(run.tokens(split).is_file() for split in SPLITS)
    job = job_config(cfg, variants, layers)
    stages = plan_run(job, lm, blocks, device, mode=mode, processes=processes, tokenize=tokenize)
    need, free = disk_left(run, stages)
    print(format_plan(stages))
    print(f"disk: {human_bytes(need)} still to write, {human_bytes(free)} free for {run.root}")
    return stages


def tokens_intact(path: Path) -> bool:
    """Whether a split's token file is there and readable; a damaged one is reported and tokenized again."""
    return _intact(path, lambda: load_tokens(path), "tokenizing again")


def _intact(marker: Path, load: Callable[[], object], redo: str) -> bool:
    """Whether an artifact is there (its `marker` file) and loads; a damaged one is reported, then made again."""
    if not marker.is_file():
        return False
    try:
        load()
    except UserError as error:
        print(f"{error.problem}: {redo}", file=sys.stderr)
        return False
    return True


def check_writable(root: Path) -> None:
    """The run directory (or the folder it will be made in) is a folder this process can write to, checked
    with a temporary file (permission bits do not tell for root or a read-only mount)."""
    existing = next(path for path in (root, *root.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise UserError(f"{existing} is a file, not a folder", "Pass a folder (new, or a run to resume) to --out")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserError(f"cannot write to {existing} ({error.strerror})", "Pass a writable folder to --out") from None


def check_resume(cfg: ExperimentConfig, run: RunDir) -> None:
    """A run directory resumes with a changed config only where its finished parts stay valid
    (`config_changes`); otherwise a one-line error names the keys that differ and the parts they invalidate."""
    if not run.config.is_file():
        return
    try:
        old = load_run_config(run)
    except UserError as error:
        raise UserError(
            f"{run.config} cannot be read ({error.problem})", "Use a new --out, or repair that file"
        ) from None
    changes = config_changes(old, cfg)
    finished = _finished_parts(run, old)
    refused = {change: [part for part in finished if _affects(change, part)] for change in changes}
    refused = {change: parts for change, parts in refused.items() if parts}
    if refused:
        keys = ", ".join(str(change) for change in refused)
        invalid = {part for parts in refused.values() for part in parts}
        dropped_only = all(change.key in ("layers", "variants") for change in refused)
        outcome = "be left out of its config" if dropped_only else "be invalid"
        raise UserError(
            f"{keys} {'differs' if len(refused) == 1 else 'differ'} from the run in {run.root}: "
            f"{_describe_parts(invalid)} would {outcome}",
            f"Use a new --out, or set {', '.join(change.resumed() for change in refused)} to resume it",
        )
    if changes:
        print(f"resuming {run.root} with changed {', '.join(str(change) for change in changes)}")


Part = tuple[str, str | None, int | None, str]
"""(one of RUN_PARTS, variant, layer, split or file): one finished part of a run (variant and layer None for
the token windows and the metrics)."""


def _finished_parts(run: RunDir, cfg: ExperimentConfig) -> list[Part]:
    """The parts of the run (of config `cfg`) that exist, started or finished."""
    parts: list[Part] = [("tokens", None, None, split) for split in SPLITS if run.tokens(split).is_file()]
    for key in sae_keys(cfg):
        parts += [
            ("activations", key.variant, key.layer, f"{split} {key.replicate}")
            for split in SPLITS
            if (run.activations(key.site, split) / MANIFEST).is_file()
        ]
        if run.sae(key).is_dir():
            parts.append(("saes", key.variant, key.layer, key.replicate))
    if run.sae_metrics_files():
        parts.append(("metrics", None, None, ""))
    return parts


def _affects(change: ConfigChange, part: Part) -> bool:
    kind, variant, layer, _ = part
    return (
        change.invalidates is not None
        and RUN_PARTS.index(kind) >= RUN_PARTS.index(change.invalidates)
        and (change.variants is None or variant is None or variant in change.variants)
        and (change.layers is None or layer is None or layer in change.layers)
    )


def _describe_parts(parts: set[Part]) -> str:
    """Like "the token windows, the 8 activation caches, the 4 SAEs and the metrics"."""
    count = {kind: sum(part[0] == kind for part in parts) for kind in RUN_PARTS}
    names = {
        "tokens": "the token windows",
        "activations": f"the {count['activations']} activation cache{'s' * (count['activations'] != 1)}",
        "saes": f"the {count['saes']} SAE{'s' * (count['saes'] != 1)}",
        "metrics": "the metrics",
    }
    described = [names[kind] for kind in RUN_PARTS if count[kind]]
    return ", ".join(described[:-1]) + " and " + described[-1] if len(described) > 1 else described[0]


def _save_unembedding(model: PreTrainedModel, path: Path) -> None:
    """The trained unembedding (fp16) and final norm scale, for the dashboards' top promoted logits."""
    output = model.get_output_embeddings()
    if path.is_file() or output is None:
        return
    tensors = {"W_U": output.weight.detach().T.to(torch.float16).cpu()}
    norm = final_norm_weight(model)
    if norm is not None:
        tensors["final_norm_weight"] = norm.detach().float().cpu()
    save_safetensors_atomic(path, tensors, shared=True)


def harvest_variant(
    cfg: ExperimentConfig,
    run: RunDir,
    model: PreTrainedModel,
    blocks: nn.ModuleList,
    blocks_path: str,
    model_name: str,
    variant: str,
    variant_cfg: VariantConfig,
    variant_seed: int | None,
    tokens: dict[str, Tensor],
    device: torch.device,
    progress: bool,
) -> None:
    """Cache every layer's residual stream of one variant draw on `tokens`' splits, one truncated forward per
    batch."""
    batch = cfg.eval.batch_windows
    for split, input_ids in tokens.items():
        writers = {}
        for layer in cfg.layers:
            spec = CacheManifest(
                model=model_name,
                variant=variant,
                layer=layer,
                hook_name=hook_name(blocks_path, layer),
                split=split,
                n_tokens=input_ids.numel(),
                d_model=model.config.hidden_size,
                dtype=cfg.activation_dtype,
                context_size=input_ids.shape[1],
            )
            windows_per_shard = max(batch, SHARD_WINDOWS // batch * batch)
            site = Site(variant, layer, variant_seed=variant_seed)
            writers[layer] = CacheWriter(run.activations(site, split), spec, windows_per_shard)
        harvest(
            lambda ids: residual_stream(model, blocks, cfg.layers, ids),
            input_ids,
            writers,
            batch,
            device,
            desc=f"harvest {variant} {split}",
            progress=progress,
            before_batch=_noise_reseed(model, variant_cfg.seed, split),
        )


def _noise_reseed(model: PreTrainedModel, seed: int, stream: str) -> Callable[[int], None] | None:
    """For the noise-embedding control: reseed its noise per batch from (seed, stream, batch position), so
    every forward over the same windows draws the same noise, however the work was interrupted or split.

    `stream` is the split harvested ("train", also when streamed; "heldout") or "downstream" (the CE/KL
    evaluation). Streams are disjoint, so no held-out or evaluation forward repeats noise an SAE was
    trained on: the control ignores its tokens, so the same noise would give the same activations."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, NoiseEmbedding):
        return None
    return lambda position: embedding.reseed(derived_seed(seed, f"control noise {stream}", position))


def activation_mode(cfg: ExperimentConfig, train_tokens: int, d_model: int, processes: int) -> str:
    """`stream` or `cache`: `train.activations`, `auto` resolved by the size all train caches would have
    (always `stream` with several `processes`, which train data-parallel on streamed shards)."""
    if processes > 1:
        if cfg.train.activations == "cache":
            raise UserError(
                f"train.activations = 'cache' cannot train with {processes} processes",
                "Set train.activations = 'stream' (or 'auto'), or run one process",
            )
        return "stream"
    if cfg.train.activations != "auto":
        return cfg.train.activations
    row_bytes = d_model * DTYPES[cfg.activation_dtype].itemsize
    cache_gb = train_tokens * row_bytes * len(cfg.layers) * len(cfg.variants) / 1e9
    return "stream" if cache_gb > cfg.train.cache_limit_gb else "cache"


def sae_keys(cfg: ExperimentConfig) -> list[SAEKey]:
    """Every SAE of the config's matrix in the run's SAE order (`RunDir.sae_order`): variants, their draws,
    layers, SAE seeds."""
    n = cfg.replicates
    keys = [
        key
        for variant in cfg.variants
        for layer in cfg.layers
        for key in replicate_keys(variant, layer, n.sae_seeds, n.variant_seeds)
    ]
    return sorted(keys, key=lambda k: (cfg.variants.index(k.variant), k.variant_seed or 0, k.layer, k.sae_seed or 0))


def training_seed(cfg: ExperimentConfig, key: SAEKey) -> int:
    """The seed an SAE is trained with: `seed`, plus its SAE-seed replicate."""
    return cfg.seed + (key.sae_seed or 0)


def drawn_variant(cfg: ExperimentConfig, variant_seed: int | None) -> VariantConfig:
    """The variant settings of one random draw: `variant.seed`, plus the draw."""
    return dataclasses.replace(cfg.variant, seed=cfg.variant.seed + (variant_seed or 0))


def _sae_config(
    cfg: ExperimentConfig, d_model: int, context: int, model_name: str, blocks_path: str, key: SAEKey
) -> SAEConfig:
    variant, layer, seed = key.variant, key.layer, training_seed(cfg, key)
    return cfg.sae.sae_config(
        d_model,
        {
            "model_name": model_name,
            "hook_name": hook_name(blocks_path, layer),
            "variant": variant,
            "layer": layer,
            "context_size": context,
            "prepend_bos": True,
            "dataset_path": cfg.data.source,
            "seed": seed,
        },
    )


def heldout_rows(cache: ActivationCache, counted: Tensor, first_window: int, n_rows: int) -> Tensor:
    """The first `n_rows` counted rows [≤ n_rows, d] (`counted`: `counted_rows` of the held-out split) of the
    held-out cache from window `first_window` on."""
    context = cache.manifest.context_size
    parts, have, start = [], 0, 0
    for chunk in cache.iter_chunks(rows=4096):
        rows = torch.arange(start, start + chunk.shape[0])
        start += chunk.shape[0]
        keep = counted[rows] & (rows >= first_window * context)
        parts.append(chunk[keep][: n_rows - have])
        have += parts[-1].shape[0]
        if have == n_rows:
            break
    return torch.cat(parts)


def curve_rows(cfg: ExperimentConfig, heldout: ActivationCache, counted: Tensor) -> Tensor | None:
    """The held-out rows every learning curve of a site is measured on: the first `train.curve_tokens` counted
    rows of its held-out cache (None with `train.curve_points` = 0)."""
    if cfg.train.curve_points == 0:
        return None
    return heldout_rows(heldout, counted, 0, cfg.train.curve_tokens)


def selection_windows(cfg: ExperimentConfig, heldout: ActivationCache) -> int:
    """How many held-out windows, at the end of the cache, choose the learning rate of `train.lr_sweep` (0
    without a sweep): enough for `train.curve_tokens` non-BOS rows. The quality metrics leave them out."""
    if not cfg.train.lr_sweep:
        return 0
    context = heldout.manifest.context_size
    n_windows, needed = heldout.n_tokens // context, -(-cfg.train.curve_tokens // (context - 1))
    if needed >= n_windows:
        raise UserError(
            f"train.lr_sweep chooses on {needed} held-out windows (train.curve_tokens = {cfg.train.curve_tokens}) "
            f"but the held-out split has only {n_windows}",
            "Lower train.curve_tokens or raise tokens.heldout_tokens",
        )
    return needed


def selection_rows(cfg: ExperimentConfig, heldout: ActivationCache, counted: Tensor) -> Tensor:
    """The counted rows of the `selection_windows` at the end of the held-out cache."""
    n_windows = heldout.n_tokens // heldout.manifest.context_size
    return heldout_rows(heldout, counted, n_windows - selection_windows(cfg, heldout), cfg.train.curve_tokens)


def train_or_sweep(
    train: Callable[[TrainConfig], list[TrainResult]], cfg: TrainConfig, selection: Callable[[], list[Tensor]]
) -> list[TrainResult]:
    """`train(cfg)`, or with `cfg.lr_sweep` the best of its rates per SAE on the `selection()` rows."""
    return sweep_lr(train, cfg, selection()) if cfg.lr_sweep else train(cfg)


def _save_trained(folder: Path, result: TrainResult) -> None:
    (folder / SAE_TRAINING_FILE).unlink(missing_ok=True)
    (folder / SAE_METRICS_FILE).unlink(missing_ok=True)  # the old SAE's row: this one is evaluated anew
    result.save(folder)  # training.json is written last: it marks the SAE as trained


def train_variant_saes(
    cfg: ExperimentConfig,
    run: RunDir,
    keys: Sequence[SAEKey],
    counted: Mapping[str, Tensor],
    model_name: str,
    blocks_path: str,
    device: torch.device,
    progress: bool,
) -> list[SAEKey]:
    """Train each SAE of `keys` on its site's train cache, the rows `counted["train"]` (`counted_rows`),
    skipping those already trained and intact; returns the SAEs trained now.

    The cache's shard checksums are verified once before training, so a corrupt shard is never trained on.
    """
    trained = []
    for key in keys:
        if sae_is_trained(run.sae(key)):
            continue
        trained.append(key)
        _train_cached(cfg, run, key, counted, model_name, blocks_path, device, progress)
    return trained


def _train_cached(
    cfg: ExperimentConfig,
    run: RunDir,
    key: SAEKey,
    counted: Mapping[str, Tensor],
    model_name: str,
    blocks_path: str,
    device: torch.device,
    progress: bool,
) -> None:
    folder = run.sae(key)
    cache = ActivationCache.open(run.activations(key.site, "train"))
    cache.verify()
    manifest = cache.manifest
    sae_cfg = _sae_config(cfg, manifest.d_model, manifest.context_size, model_name, blocks_path, key)
    train_cfg = dataclasses.replace(cfg.train, context_size=manifest.context_size, activations="cache")
    heldout = ActivationCache.open(run.activations(key.site, "heldout"))
    if progress:
        print(f"training {cfg.sae.architecture} SAE {key.describe()} (d_sae {sae_cfg.d_sae})")
    folder.mkdir(parents=True, exist_ok=True)
    curve = curve_rows(cfg, heldout, counted["heldout"])

    def train(candidate: TrainConfig) -> list[TrainResult]:
        result = train_sae(
            cache,
            candidate,
            sae_cfg,
            seed=training_seed(cfg, key),
            device=device,
            progress=progress,
            checkpoint=lr_checkpoint(folder / SAE_CHECKPOINT_FILE, candidate.lr if train_cfg.lr_sweep else None),
            heldout=curve,
            keep=counted["train"],
        )  # an interrupted training resumes
        return [result]

    (result,) = train_or_sweep(train, train_cfg, lambda: [selection_rows(cfg, heldout, counted["heldout"])])
    _save_trained(folder, result)


def stream_variant_saes(
    cfg: ExperimentConfig,
    run: RunDir,
    model: PreTrainedModel,
    blocks: nn.ModuleList,
    blocks_path: str,
    model_name: str,
    keys: Sequence[SAEKey],
    noise_seed: int,
    train_ids: Tensor,
    counted: Mapping[str, Tensor],
    device: torch.device,
    progress: bool,
    split_layers: bool = False,
) -> list[SAEKey]:
    """Train the untrained SAEs of `keys` (one variant draw and SAE seed, a layer each) together from the
    model's forwards over the train windows (no train cache); returns the SAEs trained now. An interrupted
    training resumes from its checkpoint (one per job when `split_layers`: jobs given `--layers` subsets of
    one variant)."""
    keys = [key for key in keys if not sae_is_trained(run.sae(key))]
    if not keys:
        return []
    layers = [key.layer for key in keys]
    context, d_model = train_ids.shape[1], model.config.hidden_size
    train_cfg = dataclasses.replace(cfg.train, context_size=context, activations="stream")
    reseed = _noise_reseed(model, noise_seed, "train")

    def forward(first_window: int, ids: Tensor) -> dict[int, Tensor]:
        if reseed is not None:
            reseed(first_window)  # the noise the harvest of these windows would draw
        return residual_stream(model, blocks, layers, ids.to(device=device, dtype=torch.long))

    seed = training_seed(cfg, keys[0])
    sae_cfgs = [_sae_config(cfg, d_model, context, model_name, blocks_path, key) for key in keys]
    if progress:
        which = f"{keys[0].variant} {keys[0].replicate}".strip()
        print(f"training {cfg.sae.architecture} SAEs {which} layers {layers} from streamed activations")
    checkpoint = run.stream_checkpoint(keys[0], cfg.layers if split_layers else None)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    heldout = [ActivationCache.open(run.activations(key.site, "heldout")) for key in keys]
    curves = [curve_rows(cfg, cache, counted["heldout"]) for cache in heldout]

    def train(candidate: TrainConfig) -> list[TrainResult]:
        stream = ActivationStream(
            forward,
            train_ids,
            layers,
            candidate,
            cfg.eval.batch_windows,
            seed=seed,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
            keep=counted["train"].view(train_ids.shape),
        )
        return train_streaming(
            stream,
            sae_cfgs,
            seed=seed,
            device=device,
            progress=progress,
            checkpoint=lr_checkpoint(checkpoint, candidate.lr if train_cfg.lr_sweep else None),
            heldout=curves,
        )

    results = train_or_sweep(
        train, train_cfg, lambda: [selection_rows(cfg, cache, counted["heldout"]) for cache in heldout]
    )
    if not distributed.is_main():
        return keys  # every rank holds the same SAEs: rank 0 writes them
    for key, result in zip(keys, results, strict=True):
        folder = run.sae(key)
        folder.mkdir(parents=True, exist_ok=True)
        _save_trained(folder, result)
    return keys


def sae_is_trained(folder: Path) -> bool:
    """Trained means a training record (or, for an SAE imported by `randsae compare`, its origin) beside
    weights that load; a damaged SAE is reported and retrained."""
    marker = folder / (SAE_ORIGIN_FILE if (folder / SAE_ORIGIN_FILE).is_file() else SAE_TRAINING_FILE)
    return _intact(marker, lambda: load_sae(folder), "training it again")


@torch.no_grad()
def reconstruction_on_heldout(
    sae: SparseAutoencoder,
    cache: ActivationCache,
    keep: Tensor,
    device: torch.device,
    rows: int = 4096,
    leave_out: int = 0,
) -> ReconstructionMetrics:
    """Quality metrics over the held-out cache's rows where `keep` (`counted_rows`: BOS and special tokens
    left out), the last `leave_out` windows left out too."""
    context = cache.manifest.context_size
    end = cache.n_tokens // context * context - leave_out * context
    accumulator = ReconstructionAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    start = 0
    for chunk in cache.iter_chunks(rows=rows):
        index = torch.arange(start, start + chunk.shape[0])
        kept = keep[index] & (index < end)
        start += chunk.shape[0]
        x = chunk[kept].to(device)
        z = sae.encode(x)
        accumulator.add(x, sae.decode(z), z)
    return accumulator.result()


def evaluate_variant(
    cfg: ExperimentConfig,
    run: RunDir,
    model: PreTrainedModel,
    blocks: nn.ModuleList,
    keys: Sequence[SAEKey],
    noise_seed: int,
    heldout: Tensor,
    heldout_keep: Tensor,
    device: torch.device,
) -> list[MetricsRow]:
    """Reconstruction metrics on the held-out cache and CE/KL scores with the SAE spliced in, for the SAEs
    `keys` of the variant draw `model` is."""
    saes = {key: load_sae(run.sae(key), device=device).eval() for key in keys}
    heldout_caches = {key: ActivationCache.open(run.activations(key.site, "heldout")) for key in keys}
    reconstruction = {
        key: reconstruction_on_heldout(
            sae, heldout_caches[key], heldout_keep, device, leave_out=selection_windows(cfg, heldout_caches[key])
        )
        for key, sae in saes.items()
    }
    downstream = downstream_metrics(
        model,
        {key: (blocks[key.layer], sae) for key, sae in saes.items()},
        heldout[: cfg.eval.ce_windows],
        batch_size=cfg.eval.batch_windows,
        before_forward=_noise_reseed(model, noise_seed, "downstream"),
    )
    logs = {key: _training_log(run, key) for key in keys}
    return [_row(key, saes[key], reconstruction[key], downstream[key], logs[key]) for key in keys]


def _training_log(run: RunDir, key: SAEKey) -> dict:
    """The SAE's training.json; {} for an SAE imported by `randsae compare` (no training of ours to log)."""
    if (run.sae(key) / SAE_ORIGIN_FILE).is_file():
        return {}
    return read_json(run.sae(key) / SAE_TRAINING_FILE, "`randsae run`")


def _row(
    key: SAEKey, sae: SparseAutoencoder, rec: ReconstructionMetrics, down: DownstreamMetrics, log: dict
) -> MetricsRow:
    names = {field.name for field in dataclasses.fields(MetricsRow)}
    measured = {**dataclasses.asdict(rec), **dataclasses.asdict(down)}
    return MetricsRow(
        variant=key.variant,
        layer=key.layer,
        variant_seed=key.variant_seed,
        sae_seed=key.sae_seed,
        hook_name=sae.cfg.metadata.get("hook_name", ""),
        d_sae=sae.cfg.d_sae,
        meaningful_downstream=predicts_language(key.variant),
        n_eval_tokens=rec.n_tokens,
        n_downstream_predictions=down.n_predictions,
        ev_change_last_quarter=log.get("ev_change_last_quarter"),
        converged=log.get("converged"),
        **{k: v for k, v in measured.items() if k in names},
    )


def job_config(cfg: ExperimentConfig, variants: Sequence[str] | None, layers: Sequence[int] | None) -> ExperimentConfig:
    """`cfg` restricted to one job's `--variants` / `--layers` (None: all), each checked against the config's."""
    for option, asked, valid in (("--variants", variants, cfg.variants), ("--layers", layers, cfg.layers)):
        unknown = [item for item in asked or () if item not in valid]
        if unknown:
            raise UserError(
                f"{option} names {', '.join(map(str, unknown))}, not in the config's {option[2:]}",
                f"Use some of {', '.join(map(str, valid))}",
            )
    return dataclasses.replace(
        cfg,
        variants=tuple(v for v in cfg.variants if variants is None or v in variants),
        layers=tuple(layer for layer in cfg.layers if layers is None or layer in layers),
    )


def run_pipeline(
    cfg: ExperimentConfig,
    run: RunDir | Path,
    *,
    progress: bool = True,
    lm: LoadedModel | None = None,
    variants: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    plan: bool = True,
) -> list[MetricsRow]:
    """Prepare, harvest, train and evaluate every variant × layer; returns the metrics rows.

    Pass `lm` to run on a model object of your own (it is treated as the trained model). `variants` and
    `layers` restrict this job to a part of the config's matrix: jobs given disjoint parts can run at once
    (a SLURM array) into one run directory, each writing only its own caches, SAEs and metrics rows; every
    job writes the config's whole matrix to config.toml, and the combined metrics tables from every row.
    With `plan` False the plan is neither timed nor printed (only its disk estimate is checked): a shape
    sweep's shapes after the first, whose plans `--plan` shows.

    Under torchrun every process runs this, and the SAEs train data-parallel from streamed activations,
    each rank forwarding its own shard of the train windows; rank 0 alone tokenizes, caches the held-out
    split, writes the SAEs and evaluates them, while the others wait. The process group is left at the end.
    """
    run = RunDir.at(run)
    job = job_config(cfg, variants, layers)
    device = resolve_device(cfg.device)
    distributed.init_from_env(device)
    main = distributed.is_main()
    progress = progress and main
    check_writable(run.root)
    check_resume(cfg, run)
    start = time.perf_counter()
    lm = lm or load_model(cfg.model, device, progress=progress)
    blocks_path, blocks = find_blocks(lm.model, cfg.model.blocks)
    check_layers(cfg.layers, len(blocks))
    check_context_size(lm, cfg.tokens.context_size)
    tokenize = not all(run.tokens(split).is_file() for split in SPLITS)
    if tokenize:
        check_source(cfg.data)
    c = cfg.tokens.context_size
    processes = distributed.world_size()
    mode = activation_mode(cfg, cfg.tokens.train_tokens // c * c, lm.model.config.hidden_size, processes)
    shown = progress and plan
    stages = plan_run(job, lm, blocks, device, mode=mode, processes=processes, tokenize=tokenize, measure=shown)
    if shown:
        print(format_plan(stages))
    if main:
        check_disk(*disk_left(run, stages), str(run.root))  # before anything is written
        run.root.mkdir(parents=True, exist_ok=True)  # only once the config, model and data are known to be good
    timings = Timings(run, record=main)
    timings.seconds["load_model"] = time.perf_counter() - start
    load_step0 = (
        (lambda: load_model(cfg.model, device, revision=cfg.model.step0_revision).model)
        if is_hub_id(cfg.model.name)
        else None
    )
    with timings.stage("prepare"):
        tokens = prepare_run(cfg, run, lm, progress) if main else {}
        distributed.barrier()
        tokens = tokens or {split: load_tokens(run.tokens(split)) for split in SPLITS}
        counted = {  # the rows trained on and measured
            "train": counted_rows(run.tokens("train"), bos=not cfg.train.skip_bos),
            "heldout": counted_rows(run.tokens("heldout")),
        }
    rows = {row.key: row for row in load_metrics(run)}
    cached = tuple(SPLITS) if mode == "cache" else ("heldout",)  # streamed: only the held-out split is cached
    keys = sae_keys(job)
    for variant, draw in dict.fromkeys((key.variant, key.variant_seed) for key in keys):
        # Done is read off the artifacts themselves: intact caches, trained SAEs, and a metrics row per SAE.
        mine = [key for key in keys if (key.variant, key.variant_seed) == (variant, draw)]
        missing_caches = [key for key in mine if not caches_complete(run, key.site, cached)]
        untrained = [key for key in mine if not sae_is_trained(run.sae(key))]
        unevaluated = [key for key in mine if key not in rows]
        if not distributed.main_decides(bool(missing_caches or untrained or unevaluated)):
            continue
        variant_cfg = drawn_variant(cfg, draw)
        with timings.stage("build_variants"):
            # transformers wraps .to() with functools.wraps, which mypy reads as an unbound function.
            model = build_variant(lm.model, variant, variant_cfg, load_step0).to(device).eval()  # type: ignore[arg-type]
            _, variant_blocks = find_blocks(model, blocks_path)
        with timings.stage("harvest"):
            if main:
                to_cache = {split: tokens[split] for split in cached}
                harvest_variant(
                    job,
                    run,
                    model,
                    variant_blocks,
                    blocks_path,
                    lm.display_name,
                    variant,
                    variant_cfg,
                    draw,
                    to_cache,
                    device,
                    progress,
                )
            distributed.barrier()
        retrained: list[SAEKey] = []
        with timings.stage("train"):
            for seed in dict.fromkeys(key.sae_seed for key in mine):
                same_seed = [key for key in mine if key.sae_seed == seed]
                if mode == "stream":
                    retrained += stream_variant_saes(
                        job,
                        run,
                        model,
                        variant_blocks,
                        blocks_path,
                        lm.display_name,
                        same_seed,
                        variant_cfg.seed,
                        tokens["train"],
                        counted,
                        device,
                        progress,
                        split_layers=job.layers != cfg.layers,
                    )
                else:
                    retrained += train_variant_saes(
                        job, run, same_seed, counted, lm.display_name, blocks_path, device, progress
                    )
        stale = [key for key in mine if key in unevaluated or key in retrained]
        if main:
            with timings.stage("evaluate"):
                evaluated = evaluate_variant(
                    job,
                    run,
                    model,
                    variant_blocks,
                    stale,
                    variant_cfg.seed,
                    tokens["heldout"],
                    counted["heldout"],
                    device,
                )
            save_metrics(run, evaluated)  # this draw's rows, then the tables of every job's rows
            rows.update({row.key: row for row in evaluated})
        del model
    if main:
        write_metrics_tables(run)  # rebuilt when deleted, though nothing was evaluated
    distributed.shutdown()
    if not main:
        rows = {row.key: row for row in load_metrics(run)}
    return [rows[key] for key in keys]


def caches_complete(run: RunDir, site: Site, splits: Sequence[str] = SPLITS) -> bool:
    """Whether the `splits`' caches of a site are complete and intact (else the harvest resumes or repairs)."""
    try:
        for split in splits:
            ActivationCache.open(run.activations(site, split))
    except UserError:
        return False
    return True
