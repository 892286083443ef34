"""The quality stage's results: one `MetricsRow` per SAE, in the SAE's folder (`RunDir.sae_metrics`), and every
row in RUN/metrics.json and RUN/metrics.csv.

Each SAE's row is its own file so that the jobs of a split run (`randsae run --variants/--layers`) each write
only their own rows; the combined tables are always recomputed from those files."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

from randsae.atomic import json_ready, write_json_atomic, write_text_atomic
from randsae.errors import UserError
from randsae.records import from_plain
from randsae.run_dir import RunDir, SAEKey, read_json

NOT_MEANINGFUL = "CE/KL scores are not meaningful for variants other than trained: no language model predicts."
"""The footnote of every table that marks such scores `*` (where `meaningful_downstream` is False)."""


@dataclasses.dataclass(frozen=True)
class MetricsRow:
    """Quality of one SAE on the held-out tokens: a row of metrics.csv (docs/outputs.md defines each column)."""

    variant: str
    layer: int
    variant_seed: int | None
    """The variant's random draw when the run has several (`replicates.variant_seeds`); else None."""
    sae_seed: int | None
    """The SAE's seed replicate when the run has several (`replicates.sae_seeds`); else None."""
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
    massive_dims: int
    explained_variance_without_massive: float
    ce_loss_score: float
    kl_score: float
    ce_clean: float
    ce_zero: float
    ce_sae: float
    meaningful_downstream: bool
    """False where the variant's next-token predictions are not a language model's (`predicts_language`: all
    but `trained`): CE/KL scores mean nothing there."""
    n_eval_tokens: int
    """Held-out tokens (BOS excluded) the reconstruction metrics are averaged over."""
    n_downstream_predictions: int
    """Next-token predictions the CE and KL scores are averaged over (`eval.ce_windows` windows)."""
    ev_change_last_quarter: float | None = None
    """Relative change of held-out EV over the last quarter of training (training.json); None without a curve."""
    converged: bool | None = None
    """|ev_change_last_quarter| < train.converged_below (training.json); None without a curve."""

    @property
    def key(self) -> SAEKey:
        return SAEKey(self.variant, self.layer, variant_seed=self.variant_seed, sae_seed=self.sae_seed)


def load_metrics(run: RunDir) -> list[MetricsRow]:
    """Every SAE's row found in the run, in the run's SAE order ([] before the first SAE is evaluated)."""
    rows = []
    for path in run.sae_metrics_files():
        try:
            rows.append(from_plain(MetricsRow, read_json(path, "`randsae run`")))
        except (TypeError, KeyError) as error:
            raise UserError(
                f"{path} does not hold a metrics row ({error})",
                "Delete it and rerun `randsae run` with the same --out to re-evaluate that SAE",
            ) from None
    order = run.sae_order()
    return sorted(rows, key=lambda row: order(row.key))


def save_metrics(run: RunDir, rows: list[MetricsRow]) -> None:
    """Each row to its SAE's file, then the combined tables (`write_metrics_tables`)."""
    for row in rows:
        write_json_atomic(run.sae_metrics(row.key), dataclasses.asdict(row))
    write_metrics_tables(run)


def write_metrics_tables(run: RunDir) -> list[MetricsRow]:
    """metrics.json and metrics.csv from every SAE's row, each written atomically; returns the rows.

    Jobs finishing at once may each write the tables: each reads the rows again after writing and writes
    again until they are unchanged, so the last table written holds every row written before it.
    """
    rows = load_metrics(run)
    while True:
        plain = [dataclasses.asdict(row) for row in rows]
        write_json_atomic(run.metrics_json, plain, shared=True)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[field.name for field in dataclasses.fields(MetricsRow)])
        writer.writeheader()
        writer.writerows(plain)
        write_text_atomic(run.metrics_csv, buffer.getvalue(), shared=True)
        again = load_metrics(run)
        if _same(again, rows):
            return rows
        rows = again


def _same(a: list[MetricsRow], b: list[MetricsRow]) -> bool:
    """Equal rows, NaN equal to NaN (a row's NaN metric must not make the tables look changed)."""
    return json.dumps(json_ready([dataclasses.asdict(row) for row in a])) == json.dumps(
        json_ready([dataclasses.asdict(row) for row in b])
    )


def format_metrics_table(rows: list[MetricsRow]) -> str:
    """The variant × layer table printed at the end of a run."""
    header = (
        f"{'variant':<30}{'layer':>6}{'EV pool':>9}{'EV per-token':>13}{'cos':>7}{'MSE':>10}{'L0':>7}{'L1':>9}"
        f"{'dead':>7}{'dense':>7}{'massive':>8}{'CE scr':>8}{'KL scr':>8}{'conv':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        flag = "" if row.meaningful_downstream else "*"
        lines.append(
            f"{(row.variant + ' ' + row.key.replicate).strip():<30}{row.layer:>6}{row.explained_variance_pooled:>9.3f}"
            f"{row.explained_variance_per_token:>13.3f}"
            f"{row.cosine:>7.3f}{row.mse:>10.4g}{row.l0:>7.1f}{row.l1:>9.1f}{row.dead_fraction:>7.3f}"
            f"{row.dense_fraction:>7.3f}{row.massive_dims:>8}{row.ce_loss_score:>7.3f}{flag:1}{row.kl_score:>7.3f}{flag:1}"
            f"{_converged(row.converged):>6}"
        )
    if any(row.converged is False for row in rows):
        lines.append("conv no: held-out EV changed by train.converged_below or more over the last quarter of training.")
    if any(not row.meaningful_downstream for row in rows):
        lines.append(f"* {NOT_MEANINGFUL}")
    return "\n".join(lines)


def _converged(converged: bool | None) -> str:
    return "-" if converged is None else "yes" if converged else "no"
