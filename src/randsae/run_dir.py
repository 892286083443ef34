"""The run directory: every path of a run, the keys that name its SAEs, and the one SAE discovery.

Stages never build a path themselves: they ask a `RunDir` where their inputs and outputs live, and keep
their own result dataclasses and (de)serialization. This module sits low in the package: it imports no
stage. The layout (docs/ARCHITECTURE.md) keeps today's simple form for a run with one model, one SAE
shape and one seed of each kind; every further axis adds one path level only where it is set:

    saes/{variant}/layer{L}/                               the default run
    models/{model}/shapes/{shape}/saes/{variant}-draw{v}/layer{L}/seed{s}/   every axis set

A model (`model_sweep`) or an SAE shape (`sae_sweep`) of a sweep is a whole one-model, one-shape run directory;
the shapes of a run share its token windows and activation caches (`RunDir.data_root`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from randsae.atomic import write_json_atomic
from randsae.errors import UserError
from randsae.models.variants import VARIANTS, is_drawn

SHAPES_FOLDER = "shapes"
"""The folder of an SAE-shape sweep's parts, one per shape (`RunDir.shape_run`)."""
SAE_CONFIG_FILE = "cfg.json"
"""The SAELens config file that marks a folder as a saved SAE."""
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
SAE_TRAINING_FILE = "training.json"
"""Written last by training: its presence marks an SAE as trained."""
SAE_CHECKPOINT_FILE = "train_checkpoint.pt"
"""An interrupted training's state, removed when training finishes."""
STREAM_CHECKPOINT_FILE = "stream_checkpoint.pt"
"""An interrupted streamed training's state (every SAE of a variant and the stream), removed at the end."""
SAE_METRICS_FILE = "metrics.json"
"""One SAE's metrics row, beside its weights: each job of a split run writes only its own SAEs' rows."""
SAE_ORIGIN_FILE = "origin.json"
"""Beside an SAE trained elsewhere and imported by `randsae compare` (in place of training.json): its format,
source and what its file records (`randsae.interop.SAEOrigin`)."""
_DRAW = re.compile(r"(?P<variant>[A-Za-z0-9_]+)-draw(?P<seed>\d+)")
_SEED = re.compile(r"seed(?P<seed>\d+)")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass(frozen=True)
class Site:
    """Where activations come from: one layer of one variant (one randomization draw) of one model."""

    variant: str
    layer: int
    model: str | None = None
    """None in a single-model run."""
    variant_seed: int | None = None
    """The randomization draw; None when the run makes one draw per variant."""

    def parts(self) -> tuple[str, ...]:
        variant = self.variant if self.variant_seed is None else f"{self.variant}-draw{self.variant_seed}"
        return variant, f"layer{self.layer}"


@dataclasses.dataclass(frozen=True)
class SAEKey:
    """Names one SAE of a run; an axis left None is one the run does not vary."""

    variant: str
    layer: int
    model: str | None = None
    variant_seed: int | None = None
    sae_seed: int | None = None
    """None when the run trains one SAE seed."""

    @property
    def site(self) -> Site:
        return Site(self.variant, self.layer, self.model, self.variant_seed)

    def parts(self) -> tuple[str, ...]:
        seed = () if self.sae_seed is None else (f"seed{self.sae_seed}",)
        return (*self.site.parts(), *seed)

    @property
    def replicate(self) -> str:
        """Which replicate this SAE is (`draw1 seed0`); empty when the run has one of each."""
        draw = "" if self.variant_seed is None else f"draw{self.variant_seed}"
        seed = "" if self.sae_seed is None else f"seed{self.sae_seed}"
        return f"{draw} {seed}".strip()

    def describe(self) -> str:
        """`rerandomized layer 3`, with the replicate when there is one: `rerandomized layer 3 draw1 seed0`."""
        return f"{self.variant} layer {self.layer} {self.replicate}".strip()

    @property
    def module(self) -> str:
        """The delphi "module" name of this SAE (`trained.layer3` in the default run); file names use it."""
        return ".".join(part for part in (self.model, *self.parts()) if part is not None)

    @classmethod
    def from_parts(cls, parts: tuple[str, ...], model: str | None = None) -> SAEKey | None:
        """The key of a folder `saes/<parts>`; None when the parts are not an SAE folder's."""
        if len(parts) < 2 or not parts[1].startswith("layer") or not parts[1][5:].isdigit():
            return None
        draw = _DRAW.fullmatch(parts[0])
        variant, variant_seed = (draw["variant"], int(draw["seed"])) if draw else (parts[0], None)
        seed = _SEED.fullmatch(parts[2]) if len(parts) == 3 else None
        if len(parts) > 3 or (len(parts) == 3 and seed is None):
            return None
        return cls(variant, int(parts[1][5:]), model, variant_seed, int(seed["seed"]) if seed else None)


def replicate_keys(variant: str, layer: int, sae_seeds: int = 1, variant_seeds: int = 1) -> list[SAEKey]:
    """The SAEs of one variant and layer: one per random draw (random variants only) and SAE seed. A run
    with one replicate of a kind keeps that axis None, so its layout stays the simple one."""
    draws: list[int | None] = [None] if variant_seeds == 1 or not is_drawn(variant) else list(range(variant_seeds))
    seeds: list[int | None] = [None] if sae_seeds == 1 else list(range(sae_seeds))
    return [SAEKey(variant, layer, variant_seed=draw, sae_seed=seed) for draw in draws for seed in seeds]


def judge_label(judge: str, model: str = "") -> str:
    """The folder name of one judge's auto-interp results: `token`, or `http-<model>` / `hf-<model>`."""
    if judge == "token" or not model:
        return judge
    return f"{judge}-{_SAFE.sub('_', Path(model).name).strip('_') or 'model'}"


@dataclasses.dataclass(frozen=True)
class InterpDir:
    """One judge's auto-interp results under RUN/interp/{judge}/ (delphi's file layout, docs/interp.md)."""

    root: Path

    def explanation(self, module: str, latent: int) -> Path:
        return self.root / "explanations" / f"{module}_latent{latent}.txt"

    def score(self, task: str, module: str, latent: int) -> Path:
        return self.root / "scores" / task / f"{module}_latent{latent}.txt"

    def latent_record(self, module: str, latent: int) -> Path:
        """The explainer's full reply, failure and the explanation windows of one latent."""
        return self.root / "latents" / f"{module}_latent{latent}.json"

    @property
    def selection(self) -> Path:
        return self.root / "selection.json"

    @property
    def summary(self) -> Path:
        return self.root / "interp.json"

    @property
    def calibration(self) -> Path:
        """The LLM judge's calibration on probe latents (interp/calibration.py)."""
        return self.root / "calibration.json"

    @property
    def table(self) -> Path:
        return self.root / "latents.csv"

    @property
    def explainer_ablation(self) -> InterpDir:
        """The same judge's scores of the same latents' token-list explanations (the explainer ablation)."""
        return InterpDir(self.root / "token_list_explainer")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Every path of one run directory. Model-specific files of a multi-model run sit under
    `models/{model}/`; a single-model run (model None) keeps them at the top."""

    root: Path
    data_root: Path | None = None
    """Where the token windows, tokenizer, unembedding and activation caches are, when not in `root`: the
    sweep's folder, for one SAE shape's part of it (`shape_run`)."""

    @classmethod
    def at(cls, run: RunDir | str | Path) -> RunDir:
        """The run directory at a path; a shape's part of an SAE-shape sweep (`SWEEP/shapes/{label}`) reads
        the sweep's data."""
        if isinstance(run, RunDir):
            return run
        root = Path(run)
        sweep = root.parent.parent
        shared = root.parent.name == SHAPES_FOLDER and (sweep / "config.toml").is_file()
        return cls(root, sweep if shared else None)

    @classmethod
    def existing(cls, run: RunDir | str | Path) -> RunDir:
        """A run directory that `randsae run` has started; UserError for any other folder."""
        run_dir = cls.at(run)
        if not run_dir.config.is_file():
            raise UserError(
                f"{run_dir.root} is not a randsae run directory (no config.toml)",
                "Pass a folder written by `randsae run`",
            )
        return run_dir

    # The whole run.
    @property
    def config(self) -> Path:
        """The resolved experiment config (re-runnable with --config)."""
        return self.root / "config.toml"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def metrics_json(self) -> Path:
        """Every SAE's metrics row in one table, rewritten from the SAEs' own rows (`sae_metrics`)."""
        return self.root / "metrics.json"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def dashboards(self) -> Path:
        return self.root / "dashboards"

    # Per model and SAE shape.
    def model_root(self, model: str | None = None) -> Path:
        return self.root if model is None else self.root / "models" / model

    def _data(self, model: str | None) -> Path:
        """The folder of a model's token windows and activation caches."""
        base = self.data_root or self.root
        return base if model is None else base / "models" / model

    def shape_run(self, label: str) -> RunDir:
        """One SAE shape's part of a run that sweeps shapes (`sae_sweep`): a whole one-shape run directory that
        reads this run's token windows and activation caches."""
        return RunDir(self.root / SHAPES_FOLDER / label, self.data_root or self.root)

    def model_run(self, model: str) -> RunDir:
        """One model's part of a multi-model run (`model_sweep`): a whole one-model run directory."""
        return RunDir(self.model_root(model))

    @property
    def models_json(self) -> Path:
        """A multi-model run's models: each one's size, layers and whether it finished (`model_sweep`)."""
        return self.root / "models.json"

    def tokens(self, split: str, model: str | None = None) -> Path:
        """`input_ids` int32 [n_windows, context_size] of one split; position 0 is BOS."""
        return self._data(model) / "tokens" / f"{split}.safetensors"

    def tokenizer(self, model: str | None = None) -> Path:
        return self._data(model) / "tokenizer"

    def unembedding(self, model: str | None = None) -> Path:
        """The trained model's unembedding (and final norm weight), for the dashboards' promoted logits."""
        return self._data(model) / "unembedding.safetensors"

    def activations(self, site: Site, split: str) -> Path:
        return self._data(site.model) / "activations" / Path(*site.parts()) / split

    def activation_caches(self) -> list[Path]:
        """Every activation cache folder of the run (each holds a manifest.json), all models and splits."""
        return sorted(path.parent for path in (self.data_root or self.root).glob("**/activations/**/manifest.json"))

    def sae(self, key: SAEKey) -> Path:
        """The SAE's SAELens folder (cfg.json + sae_weights.safetensors + training.json)."""
        return self.model_root(key.model) / "saes" / Path(*key.parts())

    def sparsify_sae(self, key: SAEKey, hookpoint: str) -> Path:
        """The SAE in sparsify's layout (`randsae run --format sparsify`): a folder per variant draw and SAE
        seed holding one folder per hookpoint, what sparsify's `SparseCoder.load_many`
        and delphi read (`sparsify/trained/gpt_neox.layers.3/`)."""
        variant, _, *extra = key.parts()
        return self.model_root(key.model) / "sparsify" / Path(variant, *extra) / hookpoint

    def sae_metrics(self, key: SAEKey) -> Path:
        """The SAE's metrics row; removed when the SAE is trained again, so it is evaluated again."""
        return self.sae(key) / SAE_METRICS_FILE

    def sae_metrics_files(self) -> list[Path]:
        """Every SAE's metrics row file of the run (single-model runs only have them)."""
        return sorted((self.root / "saes").glob(f"**/{SAE_METRICS_FILE}"))

    def stream_checkpoint(self, key: SAEKey, layers: tuple[int, ...] | None = None) -> Path:
        """The state of an interrupted streamed training of the SAEs of `key`'s variant draw and SAE seed (all
        layers), removed at the end; a job given a `--layers` subset names its layers, so jobs streaming one
        variant keep apart."""
        suffix = "" if key.sae_seed is None else f"-seed{key.sae_seed}"
        if layers is not None:
            suffix += f"-layers{'-'.join(map(str, layers))}"
        name = STREAM_CHECKPOINT_FILE.replace(".pt", f"{suffix}.pt")
        return self.model_root(key.model) / "saes" / key.site.parts()[0] / name

    # Auto-interp: one folder per judge, latent caches shared by all judges.
    def latent_cache(self, key: SAEKey) -> Path:
        return self.root / "interp" / "latent_cache" / key.module

    def interp(self, judge: str) -> InterpDir:
        """Results of one judge (`judge_label`); the token judge's and an LLM judge's sit side by side."""
        return InterpDir(self.root / "interp" / judge)

    def interp_judges(self) -> list[str]:
        """Judges with finished results, the token judge last (an LLM judge is the one to read first)."""
        found = [path.parent.name for path in sorted((self.root / "interp").glob("*/latents.csv"))]
        return sorted(found, key=lambda judge: judge == "token")

    # Analysis.
    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def analysis_json(self) -> Path:
        return self.analysis / "analysis.json"

    @property
    def separation_csv(self) -> Path:
        return self.analysis / "separation.csv"

    @property
    def verdict_json(self) -> Path:
        return self.analysis / "verdict.json"

    @property
    def analysis_latents_csv(self) -> Path:
        return self.analysis / "latents.csv"

    def analysis_part(self, key: SAEKey) -> Path:
        """One SAE's saved per-latent and per-token arrays (reused while their inputs are unchanged)."""
        return self.analysis / "parts" / f"{key.module}.npz"

    def second_seed_sae(self, key: SAEKey, seed: int) -> Path:
        """The SAE retrained with another seed for the seed-stability measurement."""
        return self.analysis / f"seed{seed}" / Path(*key.parts())

    # Discovery.
    def discover_saes(self) -> list[SAEKey]:
        """Every saved SAE (a folder with cfg.json under saes/), in the run's variant order, then by layer.

        The order is the config's `variants` list, then the known variants' usual order, then any other
        by name, so every stage, table and plot lists SAEs alike.
        """
        keys = []
        roots = [(None, self.root), *((path.name, path) for path in sorted((self.root / "models").glob("*")))]
        for model, root in roots:
            base = root / "saes"
            for cfg_file in sorted(base.glob(f"**/{SAE_CONFIG_FILE}")):
                key = SAEKey.from_parts(cfg_file.parent.relative_to(base).parts, model)
                if key is not None:
                    keys.append(key)
        if not keys:
            raise UserError(
                f"no SAE under {self.root / 'saes'}", "Train SAEs first (`randsae run`), or pass the folder it wrote"
            )
        return sorted(keys, key=self.sae_order())

    def sae_order(self) -> Callable[[SAEKey], tuple[Any, ...]]:
        """The sort key of the run's SAE order: the config's `variants` list, then the known variants' usual
        order, then any other by name; then by layer."""
        order = {name: index for index, name in enumerate(dict.fromkeys([*self.configured_variants(), *VARIANTS]))}
        return lambda k: (
            k.model or "",
            order.get(k.variant, len(order)),
            k.variant,
            k.variant_seed or 0,
            k.layer,
            k.sae_seed or 0,
        )

    def configured_variants(self) -> list[str]:
        """The `variants` of the run's config.toml, in order ([] when it is missing or unreadable)."""
        return [variant for variant in self._configured("variants") if isinstance(variant, str)]

    def _config_toml(self) -> dict[str, Any]:
        """The run's config.toml as read ({} when it is missing or unreadable)."""
        try:
            return tomllib.loads(self.config.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return {}

    def _configured(self, key: str) -> list[Any]:
        value = self._config_toml().get(key, [])
        return value if isinstance(value, list) else []

    def _replicates(self) -> tuple[int, int]:
        """(SAE seeds, variant seeds) of the run's config.toml (1 each where it does not say)."""
        table = self._config_toml().get("replicates", {})
        table = table if isinstance(table, dict) else {}
        return int(table.get("sae_seeds", 1)), int(table.get("variant_seeds", 1))

    def missing_saes(self) -> str | None:
        """A line naming the configured variant × layer SAEs not saved yet (the jobs of a split run still at
        work, or failed), for the stages that read whichever SAEs exist; None when every one is there."""
        layers = [layer for layer in self._configured("layers") if isinstance(layer, int)]
        configured = [
            key
            for variant in self.configured_variants()
            for layer in layers
            for key in replicate_keys(variant, layer, *self._replicates())
        ]
        missing = [key for key in configured if not (self.sae(key) / SAE_CONFIG_FILE).is_file()]
        if not missing:
            return None
        names = ", ".join(key.describe() for key in missing)
        return f"{len(missing)} of {len(configured)} SAEs not trained yet: {names}"


def lr_checkpoint(checkpoint: Path, lr: float | None) -> Path:
    """The checkpoint of one candidate of a learning-rate sweep, beside the training's own (`lr` None: that one),
    so an interrupted sweep resumes the candidate it was training."""
    return checkpoint if lr is None else checkpoint.with_name(f"{checkpoint.stem}-lr{lr:g}{checkpoint.suffix}")


def read_json(path: Path, writer: str) -> Any:
    """A stage's JSON file; a one-line UserError naming the stage to rerun when it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing", f"Run {writer} on this run directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged ({error})", f"Delete it and rerun {writer}") from None


class Timings:
    """Wall time per stage, accumulated across resumes in RUN/timings.json.

    A stage that fails with an error records nothing, so a command that stops on a user's mistake leaves
    the run directory as it found it; an interrupted stage records its time, as the rerun resumes its work.
    With `record` False (a torchrun rank other than 0) the times are kept in memory only.
    """

    def __init__(self, run: RunDir, record: bool = True):
        self.path, self.record = run.timings, record
        self.seconds: dict[str, float] = {}
        if self.path.is_file():
            try:
                self.seconds = {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError):
                self.seconds = {}  # only a record of wall time: a damaged one starts over

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except KeyboardInterrupt:
            self.add(name, time.perf_counter() - start)
            raise
        self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if not self.record:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.seconds, shared=True)  # jobs of a split run share it
