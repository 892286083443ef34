"""The quality stage's results: one `MetricsRow` per SAE, in RUN/metrics.json and RUN/metrics.csv."""

from __future__ import annotations

import csv
import dataclasses
import io

from randsae.atomic import write_json_atomic, write_text_atomic
from randsae.errors import UserError
from randsae.records import from_plain
from randsae.run_dir import RunDir, read_json


@dataclasses.dataclass(frozen=True)
class MetricsRow:
    """Quality of one SAE on the held-out tokens: a row of metrics.csv (docs/outputs.md defines each column)."""

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
    """False where the variant's next-token predictions are not a language model's (`predicts_language`: all
    but `trained`): CE/KL scores mean nothing there."""
    n_eval_tokens: int
    """Held-out tokens (BOS excluded) the reconstruction metrics are averaged over."""
    n_downstream_predictions: int
    """Next-token predictions the CE and KL scores are averaged over (`eval.ce_windows` windows)."""


def load_metrics(run: RunDir) -> list[MetricsRow]:
    """The rows of RUN/metrics.json ([] before the first SAE is evaluated)."""
    if not run.metrics_json.is_file():
        return []
    rows = read_json(run.metrics_json, "`randsae run`")
    try:
        return [from_plain(MetricsRow, row) for row in rows]
    except (TypeError, KeyError) as error:
        raise UserError(
            f"{run.metrics_json} does not hold metrics rows ({error})",
            "Delete it and rerun `randsae run` with the same --out to re-evaluate",
        ) from None


def save_metrics(run: RunDir, rows: list[MetricsRow]) -> None:
    """metrics.json and metrics.csv, one row per SAE, each written atomically."""
    plain = [dataclasses.asdict(row) for row in rows]
    write_json_atomic(run.metrics_json, plain)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[field.name for field in dataclasses.fields(MetricsRow)])
    writer.writeheader()
    writer.writerows(plain)
    write_text_atomic(run.metrics_csv, buffer.getvalue())


def format_metrics_table(rows: list[MetricsRow]) -> str:
    """The variant × layer table printed at the end of a run."""
    header = (
        f"{'variant':<30}{'layer':>6}{'EV pool':>9}{'EV per-token':>13}{'cos':>7}{'MSE':>10}{'L0':>7}{'L1':>9}"
        f"{'dead':>7}{'dense':>7}{'CE scr':>8}{'KL scr':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        flag = "" if row.meaningful_downstream else "*"
        lines.append(
            f"{row.variant:<30}{row.layer:>6}{row.explained_variance_pooled:>9.3f}"
            f"{row.explained_variance_per_token:>13.3f}"
            f"{row.cosine:>7.3f}{row.mse:>10.4g}{row.l0:>7.1f}{row.l1:>9.1f}{row.dead_fraction:>7.3f}"
            f"{row.dense_fraction:>7.3f}{row.ce_loss_score:>7.3f}{flag:1}{row.kl_score:>7.3f}{flag:1}"
        )
    if any(not row.meaningful_downstream for row in rows):
        lines.append("* CE/KL scores are not meaningful for variants other than trained: no language model predicts.")
    return "\n".join(lines)
