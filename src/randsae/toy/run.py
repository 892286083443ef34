"""The toy experiment end to end: data → random networks → λ sweeps of ReLU-L1 SAEs → metrics → report.

Each (dataset, network, width, seed) sweep is one unit of work, saved atomically under
`OUT/toy_parts/` as soon as it finishes; a rerun with the same config skips the units already there.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from randsae.atomic import write_text_atomic
from randsae.errors import UserError
from randsae.seeds import derived_seed
from randsae.toml_config import dump_toml
from randsae.toy.config import ToyConfig, load_toy_config
from randsae.toy.data import gaussian_control, generate_toy_data, unit_rms
from randsae.toy.metrics import SPARSITY_MEASURES, code_stats, front_gap, mmcs
from randsae.toy.networks import build_network, map_through
from randsae.toy.report import write_outputs
from randsae.toy.results import FrontGap, Recovery, ToyResult, ToyRow
from randsae.toy.sweep import train_relu_sweep

CONFIG_FILE = "toy_config.toml"
PARTS_DIR = "toy_parts"
NO_NETWORK = "none"
DATA_KINDS = ("toy", "gaussian")
LOG_SCALE_MEASURES = ("l0", "l1", "l1_over_sqrt_l2")


class Dataset(NamedTuple):
    data: str
    network: str
    train: Tensor
    test: Tensor
    features: Tensor


def build_datasets(config: ToyConfig) -> list[Dataset]:
    """The toy data and its Gaussian control, untouched and through each random network, centred (unless
    `center_data` is off) and scaled to unit RMS."""
    generator = torch.Generator().manual_seed(derived_seed(config.data_seed, "toy_data"))
    toy = generate_toy_data(
        config.n_samples, config.n_features, config.n_dims, config.mean_active, config.frequency_decay, generator
    )
    raw = {"toy": toy.samples, "gaussian": gaussian_control(toy.samples, generator)}
    n_train = config.n_samples - round(config.n_samples * config.test_fraction)
    datasets = []
    for network_name in (NO_NETWORK, *config.networks):
        network = (
            None
            if network_name == NO_NETWORK
            else build_network(network_name, config.n_dims, derived_seed(config.data_seed, f"network:{network_name}"))
        )
        for data in DATA_KINDS:
            if network is None:
                samples, features = raw[data], toy.features
            else:
                samples, features = map_through(network, raw[data], toy.features)
            if config.center_data:
                samples = samples - samples[:n_train].mean(dim=0)
            samples = unit_rms(samples).to(config.device)
            datasets.append(
                Dataset(data, network_name, samples[:n_train], samples[n_train:], features.to(config.device))
            )
    return datasets


def run_toy(config: ToyConfig, out_dir: Path, *, progress: bool = True) -> ToyResult:
    """Run (or resume) the toy experiment into `out_dir` and write toy_report.html, toy_results.csv/json."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _claim(out_dir, config)
    parts = out_dir / PARTS_DIR
    parts.mkdir(exist_ok=True)
    units = [
        Unit(dataset, d_sae, seed)
        for dataset in build_datasets(config)
        for d_sae in config.latent_counts
        for seed in config.seeds
    ]
    todo = [unit for unit in units if not (parts / unit.file_name).exists()]
    if progress and todo:
        print(
            f"toy: {len(todo)} sweeps of {config.l1_count} SAEs to train ({len(units) - len(todo)} resumed), "
            f"{min(config.workers, len(todo))} at a time",
            flush=True,
        )
    for done, (unit, unit_rows) in enumerate(_train_units(todo, config, progress), start=1):
        write_text_atomic(parts / unit.file_name, json.dumps([dataclasses.asdict(row) for row in unit_rows], indent=1))
        if progress:
            print(
                f"toy: {done}/{len(todo)} sweeps done ({unit.file_name.removesuffix('.json')}), "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
    rows = [ToyRow(**row) for unit in units for row in json.loads((parts / unit.file_name).read_text())]
    result = ToyResult(
        config=config,
        rows=tuple(rows),
        recovery=summarize_recovery(rows),
        gaps=front_gaps(rows, config.networks),
        wall_seconds=time.perf_counter() - start,
        out_dir=out_dir,
    )
    write_outputs(result)
    return result


class Unit(NamedTuple):
    """One λ sweep: a dataset, a width and a seed."""

    dataset: Dataset
    d_sae: int
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.dataset.data}-{self.dataset.network}-w{self.d_sae}-s{self.seed}.json"


def _train_units(units: list[Unit], config: ToyConfig, progress: bool) -> Iterator[tuple[Unit, list[ToyRow]]]:
    """Train the sweeps, in worker processes on CPU, yielding each one as it finishes."""
    workers = min(config.workers, len(units))
    if workers <= 1 or config.device != "cpu":
        for unit in units:
            yield unit, train_and_score(unit.dataset, unit.d_sae, unit.seed, config, progress)
        return
    # spawn, not fork: a forked child inherits torch's thread pool in an unusable state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {
            pool.submit(train_and_score, unit.dataset, unit.d_sae, unit.seed, config, False): unit for unit in units
        }
        for future in as_completed(futures):
            yield futures[future], future.result()


def train_and_score(dataset: Dataset, d_sae: int, seed: int, config: ToyConfig, progress: bool) -> list[ToyRow]:
    """Train one λ sweep on the dataset's training samples and score every SAE on its test samples."""
    saes = train_relu_sweep(
        dataset.train,
        d_sae,
        config.l1_coefficients,
        seed,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        metadata={"dataset_path": f"toy:{dataset.data}:{dataset.network}"},
        progress=progress,
    )
    rows = []
    with torch.no_grad():
        for sae, l1_coefficient in zip(saes, config.l1_coefficients, strict=True):  # the sweep keeps their order
            codes = sae.encode(dataset.test)
            stats = code_stats(dataset.test, sae.decode(codes), codes)
            rows.append(
                ToyRow(
                    data=dataset.data,
                    network=dataset.network,
                    d_sae=d_sae,
                    seed=seed,
                    l1_coefficient=float(l1_coefficient),
                    mmcs=float(mmcs(dataset.features, sae.W_dec)),
                    fvu=float(stats.fvu),
                    explained_variance=1.0 - float(stats.fvu),
                    l0=float(stats.l0),
                    l1=float(stats.l1),
                    l1_over_sqrt_l2=float(stats.l1_over_sqrt_l2),
                    hoyer=float(stats.hoyer),
                    dead_fraction=float(stats.dead_fraction),
                )
            )
    return rows


def summarize_recovery(rows: list[ToyRow]) -> tuple[Recovery, ...]:
    summary = []
    for key in sorted({(row.data, row.network, row.d_sae) for row in rows}):
        by_l1: dict[float, list[float]] = {}
        for row in rows:
            if (row.data, row.network, row.d_sae) == key:
                by_l1.setdefault(row.l1_coefficient, []).append(row.mmcs)
        best_l1 = max(by_l1, key=lambda l1: np.mean(by_l1[l1]))
        summary.append(Recovery(*key, best_mmcs=float(np.mean(by_l1[best_l1])), best_l1_coefficient=best_l1))
    return tuple(summary)


def front_gaps(rows: list[ToyRow], networks: tuple[str, ...]) -> tuple[FrontGap, ...]:
    """Toy-minus-control Pareto gap for each network (widths and seeds pooled) and sparsity measure."""
    gaps = []
    for network in (NO_NETWORK, *networks):
        points = {data: [row for row in rows if row.network == network and row.data == data] for data in DATA_KINDS}
        for measure, higher_is_sparser in SPARSITY_MEASURES.items():
            toy, control = (
                ([getattr(row, measure) for row in points[data]], [row.explained_variance for row in points[data]])
                for data in DATA_KINDS
            )
            gaps.append(
                FrontGap(
                    network,
                    measure,
                    front_gap(toy, control, higher_is_sparser, log_scale=measure in LOG_SCALE_MEASURES),
                )
            )
    return tuple(gaps)


def _claim(out_dir: Path, config: ToyConfig) -> None:
    """Record the config in out_dir, or check it matches the one of the run being resumed there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG_FILE
    if path.exists():
        previous = load_toy_config(path)
        if previous != config:
            raise UserError(
                f"{out_dir} holds a toy run with other settings ({path})",
                "Use a fresh --out directory, or the same --config to resume",
            )
        return
    write_text_atomic(path, dump_toml(config))
