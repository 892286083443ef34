"""Where the interp stage keeps things under RUN/interp/, and atomic reads and writes of them.

Explanations and score records use delphi's layout and formats (an explanation file is a JSON string; a
score file a JSON list of per-example records), so delphi's tooling reads them. See docs/interp.md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from randsae.atomic import write_json_atomic, write_text_atomic
from randsae.interp.scorers import ScoredExample

TASKS = ("fuzz", "detection")


def module_name(variant: str, layer: int) -> str:
    """The delphi "module" of one SAE; file names are `{module}_latent{i}.txt`."""
    return f"{variant}.layer{layer}"


@dataclasses.dataclass(frozen=True)
class InterpPaths:
    """The file layout under RUN/interp/."""

    root: Path

    def latent_cache(self, variant: str, layer: int) -> Path:
        return self.root / "latent_cache" / variant / f"layer{layer}"

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
    def table(self) -> Path:
        return self.root / "latents.csv"


def write_scores(path: Path, records: list[ScoredExample]) -> None:
    write_text_atomic(path, json.dumps([record._asdict() for record in records], ensure_ascii=False))


def read_scores(path: Path) -> list[ScoredExample]:
    return [ScoredExample(**record) for record in json.loads(path.read_text())]


def read_explanation(path: Path) -> str:
    return json.loads(path.read_text())
