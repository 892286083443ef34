"""The synthetic report run of tests/helpers.py: the real interp and analysis stages write into it.

Run as a script to time the report of a default-sized run (4 variants x 3 layers, ~100 latents per SAE):
    python -m tests.test_report_builder [FOLDER]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.helpers import build_report_run


def test_builder_writes_every_stage(tmp_path):
    run = build_report_run(tmp_path, variants=("trained", "control"), layers=(1,), n_latents=3)
    assert (run / "interp" / "token" / "interp.json").is_file()
    assert (run / "interp" / "token" / "latents.csv").read_text().count("\n") == 1 + 2 * 3
    assert json.loads((run / "analysis" / "analysis.json").read_text())["saes"]


if __name__ == "__main__":
    from randsae.report import write_report

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/randsae-report-benchmark")
    if not (folder / "run" / "interp" / "token" / "latents.csv").is_file():
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        build_report_run(
            folder, d_model=576, d_sae=4608, k=32, vocab_size=49152, n_windows=64, context_size=256, n_latents=100
        )
        print(f"built the default-sized run in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    write_report(folder / "run", progress=True)
    print(f"write_report: {time.perf_counter() - start:.1f} s")
