"""The interp stage's per-latent files (paths from `randsae.run_dir.InterpDir`): score records and explanations.

Explanations and score records use delphi's layout and formats (an explanation file is a JSON string; a
score file a JSON list of per-example records), so delphi's tooling reads them. See docs/interp.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from randsae.atomic import write_text_atomic
from randsae.errors import UserError
from randsae.interp.scorers import ScoredExample
from randsae.run_dir import read_json

TASKS = ("fuzz", "detection")


def write_scores(path: Path, records: list[ScoredExample]) -> None:
    write_text_atomic(path, json.dumps([record._asdict() for record in records], ensure_ascii=False))


def read_scores(path: Path) -> list[ScoredExample]:
    """A latent's score records; UserError when the file is missing or damaged (rerunning interpret rebuilds it)."""
    records = read_json(path, "`randsae interpret`")
    try:
        return [ScoredExample(**record) for record in records]
    except TypeError as error:
        raise UserError(
            f"{path} does not hold score records ({error})", "Rerun `randsae interpret` to rebuild it"
        ) from None


def read_explanation(path: Path) -> str:
    return json.loads(path.read_text())
