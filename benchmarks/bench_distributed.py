"""One process against two (torchrun, gloo) streaming the embedded model's SAE training on this CPU, in one run.

    python benchmarks/bench_distributed.py [--train-tokens 16384] [--passes 2]

Both run `randsae run` on the embedded default's model, layers and SAE settings, `trained` variant only,
streamed, into fresh run directories, interp, analysis and report left out. One process uses every core;
each of the two uses half of them (OMP_NUM_THREADS), as a data-parallel job on one machine would. The time
counted is the train stage from RUN/timings.json (rank 0's, which waits for the slower rank). Prints tokens/s
of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from randsae.run_dir import RunDir, Timings

TORCHRUN = Path(sys.executable).with_name("torchrun")


def train_seconds(n_processes: int, train_tokens: int, passes: int, out: Path) -> float:
    cores = os.cpu_count() or 1
    launcher = [str(TORCHRUN), "--standalone", f"--nproc_per_node={n_processes}"]
    if n_processes == 1:
        launcher = [sys.executable]
    overrides = [
        'variants=["trained"]',
        f"tokens.train_tokens={train_tokens}",
        f"train.total_tokens={train_tokens * passes}",
        'train.activations="stream"',
    ]
    command = [*launcher, "-m", "randsae.cli", "run", "--out", str(out), "--quiet"]
    command += ["--skip", "interpret", "analyze", "report"]
    command += [item for override in overrides for item in ("--set", override)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n_processes))}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return Timings(RunDir(out)).seconds["train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-tokens", type=int, default=16_384)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    tokens = args.train_tokens * args.passes
    with tempfile.TemporaryDirectory() as folder:
        seconds = {n: train_seconds(n, args.train_tokens, args.passes, Path(folder) / str(n)) for n in (1, 2)}
    for n, value in seconds.items():
        print(f"{n} process{'es' if n > 1 else '  '}: train {value:7.1f} s ({tokens / value:7.0f} tok/s)")
    print(f"2 / 1 processes speed: {seconds[1] / seconds[2]:.2f}x ({tokens:,} training tokens, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
