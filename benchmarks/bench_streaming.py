"""Streamed against cached SAE training on the embedded model, in one run: train activations written to disk
and read back (`[train] activations = "cache"`) against one forward per batch feeding every layer's SAE
(`"stream"`).

    python benchmarks/bench_streaming.py [--train-tokens 16384] [--passes 4]

Both modes run the embedded default's model, layers and SAE settings on the `trained` variant into fresh
run directories, with interp, analysis and report left out; the time counted is harvest + training, the
part the two modes do differently (evaluation is the same work). Prints tokens/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from randsae.config import load_config
from randsae.experiment import run_pipeline
from randsae.run_dir import RunDir, Timings


def measure(mode: str, train_tokens: int, passes: int, out: Path) -> tuple[float, float]:
    """(seconds of harvest + train, wall seconds) of one mode."""
    cfg = load_config(
        None,
        [
            'variants=["trained"]',
            f"tokens.train_tokens={train_tokens}",
            f"train.total_tokens={train_tokens * passes}",
            f'train.activations="{mode}"',
        ],
    )
    start = time.perf_counter()
    run_pipeline(cfg, out, progress=False)
    wall = time.perf_counter() - start
    seconds = Timings(RunDir(out)).seconds
    return seconds.get("harvest", 0.0) + seconds.get("train", 0.0), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-tokens", type=int, default=16_384)
    parser.add_argument("--passes", type=int, default=4)
    args = parser.parse_args()
    trained_tokens = args.train_tokens * args.passes
    with tempfile.TemporaryDirectory() as folder:
        results = {
            mode: measure(mode, args.train_tokens, args.passes, Path(folder) / mode) for mode in ("cache", "stream")
        }
    for mode, (seconds, wall) in results.items():
        print(
            f"{mode:>6}: harvest + train {seconds:7.1f} s ({trained_tokens / seconds:8.0f} training tok/s), "
            f"wall {wall:.1f} s"
        )
    print(
        f"stream / cache speed: {results['cache'][0] / results['stream'][0]:.2f}x "
        f"({args.train_tokens:,} train tokens, {args.passes} passes, 3 layers)"
    )


if __name__ == "__main__":
    main()
