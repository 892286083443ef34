"""Peak memory of preparing a run (tokenizing into the token files) at 1x and 10x the train tokens.

Each scale runs in its own subprocess, which reports its peak resident set (VmHWM) before and after
tokenizing; the held-out split stays the same size, as in a run that scales only `train_tokens`. The text
is the embedded corpus (BoolQ + SciQ, about 0.4M tokens) repeated with a numbered prefix per copy, so every
copy is a new document, as a local .jsonl file; the tokenizer is the embedded model's (SmolLM2).

    python benchmarks/bench_memory.py                      # 1M and 10M train tokens
    python benchmarks/bench_memory.py --train-tokens 200000

Training memory (streaming SAE training) is measured by the trainer's own benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from randsae.data.text import EMBEDDED, TextConfig, iter_texts
from randsae.data.tokens import SPLITS, TokenConfig, tokenize_splits
from randsae.models.load import ModelConfig

CONTEXT = 256
HELDOUT_TOKENS = 100_000


def peak_rss_bytes() -> int:
    """VmHWM of this process: its peak resident set, file-backed pages included."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def save_tokenizer(folder: Path) -> None:
    """The embedded model's tokenizer, saved as a run saves it, for the subprocesses to load alone."""
    import torch

    from randsae.models.load import load_model

    load_model(ModelConfig(name=EMBEDDED), torch.device("cpu"), progress=False).tokenizer.save_pretrained(folder)


def write_corpus(path: Path, copies: int) -> None:
    texts = list(iter_texts(TextConfig(source=EMBEDDED), progress=False))
    with path.open("w") as file:
        for copy in range(copies):
            for text in texts:
                file.write(json.dumps({"text": f"Copy {copy}. {text}"}) + "\n")


def child(corpus: Path, train_tokens: int, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out.parent / "tokenizer")
    texts = iter_texts(TextConfig(source=str(corpus)), progress=False)
    next(iter_texts(TextConfig(source=str(corpus)), progress=False))  # the datasets library's arrow cache, once
    before = peak_rss_bytes()
    cfg = TokenConfig(context_size=CONTEXT, train_tokens=train_tokens, heldout_tokens=HELDOUT_TOKENS)
    start = time.perf_counter()
    tokenize_splits(texts, tokenizer, cfg, {split: out / f"{split}.safetensors" for split in SPLITS})
    seconds = time.perf_counter() - start
    print(json.dumps({"before": before, "peak": peak_rss_bytes(), "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-tokens", type=int, default=1_000_000, help="the 1x scale")
    parser.add_argument("--child", nargs=3, metavar=("CORPUS", "TRAIN_TOKENS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        save_tokenizer(Path(tmp) / "tokenizer")
        write_corpus(corpus, copies=-(-args.train_tokens * 10 // 300_000) + 1)
        results = {}
        for scale in (1, 10):
            out = Path(tmp) / f"x{scale}"
            out.mkdir()
            command = [sys.executable, __file__, "--child", str(corpus), str(args.train_tokens * scale), str(out)]
            line = (
                subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
            )
            results[scale] = json.loads(line)
            size = sum(path.stat().st_size for path in out.iterdir())
            r = results[scale]
            print(
                f"{scale:>3}x  {args.train_tokens * scale:>11,} train tokens  token files {size / 1e6:7.1f} MB  "
                f"peak RSS {r['peak'] / 2**20:7.1f} MiB (before tokenizing {r['before'] / 2**20:7.1f} MiB)  "
                f"{r['seconds']:6.1f} s"
            )
        ratio = results[10]["peak"] / results[1]["peak"]
        growth = (
            (results[10]["peak"] - results[10]["before"]) / 2**20,
            (results[1]["peak"] - results[1]["before"]) / 2**20,
        )
        print(
            f"peak RSS 10x / 1x: {ratio:.3f} (target <= 1.1); "
            f"tokenizing added {growth[1]:.1f} MiB at 1x, {growth[0]:.1f} MiB at 10x"
        )


if __name__ == "__main__":
    main()
