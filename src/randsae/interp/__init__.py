"""Auto-interpretability (issue 3): explain, detect, fuzz and AUROC, as in the paper, done honestly.

Public entry points: `interpret_run(run_dir, cfg)` writes RUN/interp/{judge}/ and returns an `InterpSummary`;
`format_interp_table(summary)` prints it; `InterpConfig` (paper defaults, scaled down by the embedded
run's config), with `describe_scaling(cfg)` saying what was scaled. See docs/interp.md.
"""

from randsae.interp.config import InterpConfig, describe_scaling
from randsae.interp.stage import interpret_run
from randsae.interp.summary import InterpSummary, format_interp_table

__all__ = ["InterpConfig", "InterpSummary", "describe_scaling", "format_interp_table", "interpret_run"]
