"""Tokenize documents, split them train / held-out, and pack each split into fixed windows.

The split is by document (a stable hash of its text), so no document, and hence no token, is in both.
Documents are joined by EOS and cut into windows of `context_size - 1` tokens; each window starts with
an explicit BOS token, so position 0 is always the same token whatever the tokenizer adds by itself.
Activation caches flatten the windows (row r = window r // context_size, position r % context_size), and
everything downstream leaves the BOS rows out (`not_bos`): their activations are attention-sink outliers.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from randsae.atomic import save_safetensors_atomic
from randsae.errors import UserError
from randsae.toml_config import invalid

SPLITS = ("train", "heldout")
UNKNOWN_WARNING_SHARE = 0.05
"""Above this share of unknown tokens the text does not suit the tokenizer (a warning, not an error)."""


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    """How text becomes token windows."""

    context_size: int = 2048
    """Tokens per window, BOS included."""
    train_tokens: int = 100_000_000
    """Tokens per variant for SAE training (rounded down to whole windows)."""
    heldout_tokens: int = 10_000_000
    """Held-out tokens per variant for the quality metrics and auto-interp (rounded down to whole windows)."""
    heldout_fraction: float = 0.08
    """Share of documents assigned to the held-out split."""
    split_seed: int = 0
    """Salt of the document hash that assigns documents to splits."""

    def __post_init__(self) -> None:
        if self.context_size < 2:
            raise invalid("tokens.context_size", self.context_size, "at least 2 (BOS and one token)")
        for name in ("train_tokens", "heldout_tokens"):
            if getattr(self, name) < self.context_size:
                raise invalid(
                    f"tokens.{name}",
                    getattr(self, name),
                    f"at least one window of tokens.context_size = {self.context_size} tokens",
                )
        if not 0 < self.heldout_fraction < 1:
            raise invalid("tokens.heldout_fraction", self.heldout_fraction, "a fraction strictly between 0 and 1")


def not_bos(rows: Tensor, context_size: int) -> Tensor:
    """Bool mask of the flattened rows `rows` (int) that are not a window's BOS token."""
    return rows % context_size != 0


def count_not_bos(n_rows: int, context_size: int) -> int:
    """How many of the first `n_rows` flattened rows are not BOS."""
    return n_rows - -(-n_rows // context_size)


def is_heldout(text: str, fraction: float, seed: int) -> bool:
    """Stable across runs and machines (unlike Python's salted `hash`)."""
    digest = hashlib.sha1(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(BOS id, document separator id); a tokenizer without BOS uses EOS for both (as GPT-2 does)."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if bos is None:
        raise UserError(
            "the tokenizer has neither a BOS nor an EOS token", "Use a model whose tokenizer defines one of them"
        )
    return bos, eos if eos is not None else bos


def pack_windows(documents: Iterable[list[int]], n_windows: int, context_size: int, bos: int, separator: int) -> Tensor:
    """int32 [≤ n_windows, context_size]: documents joined by `separator`, cut, each window led by BOS."""
    body = context_size - 1
    needed = n_windows * body
    stream: list[int] = []
    for ids in documents:
        stream.extend(ids)
        stream.append(separator)
        if len(stream) >= needed:
            break
    n = min(n_windows, len(stream) // body)
    windows = torch.tensor(stream[: n * body], dtype=torch.int32).view(n, body)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.int32), windows], dim=1)


def tokenize_splits(
    texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, cfg: TokenConfig, batch_docs: int = 256
) -> dict[str, Tensor]:
    """{"train": [n, C], "heldout": [m, C]}: stops reading text once both splits are full."""
    bos, separator = special_ids(tokenizer)
    body = cfg.context_size - 1
    wanted = {"train": cfg.train_tokens // cfg.context_size, "heldout": cfg.heldout_tokens // cfg.context_size}
    docs: dict[str, list[list[int]]] = {split: [] for split in SPLITS}
    have = dict.fromkeys(SPLITS, 0)
    pending: list[str] = []

    def flush() -> None:
        encoded = tokenizer(pending, add_special_tokens=False)["input_ids"]
        for text, ids in zip(pending, encoded, strict=True):
            split = "heldout" if is_heldout(text, cfg.heldout_fraction, cfg.split_seed) else "train"
            docs[split].append(ids)
            have[split] += len(ids) + 1
        pending.clear()

    for text in texts:
        pending.append(text)
        if len(pending) == batch_docs:
            flush()
            if all(have[s] >= wanted[s] * body for s in SPLITS):
                break
    if pending:
        flush()
    windows = {split: pack_windows(docs[split], wanted[split], cfg.context_size, bos, separator) for split in SPLITS}
    for split, tensor in windows.items():
        if tensor.shape[0] < wanted[split]:
            raise UserError(
                f"the text has only {tensor.numel()} {split} tokens, {wanted[split] * cfg.context_size} were asked for",
                f"Lower tokens.{split}_tokens or use more text",
            )
    return windows


def unknown_token_warning(windows: dict[str, Tensor], tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A warning naming the share of the windows' tokens (BOS left out) that are the tokenizer's unknown
    token, when it is above UNKNOWN_WARNING_SHARE; None otherwise or when the tokenizer has no unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return None
    body = torch.cat([split[:, 1:].flatten() for split in windows.values()])
    share = (body == unk).float().mean().item() if body.numel() else 0.0
    if share <= UNKNOWN_WARNING_SHARE:
        return None
    return (
        f"{share:.0%} of the tokens are the unknown token {tokenizer.unk_token!r}: "
        "the text does not suit the model's tokenizer (check data.source and model.name)"
    )


def save_tokens(path: Path, input_ids: Tensor) -> None:
    """One split's windows, int32 [n_windows, context_size], as `input_ids` in a safetensors file."""
    save_safetensors_atomic(path, {"input_ids": input_ids})


def load_tokens(path: Path) -> Tensor:
    """int32 [n_windows, context_size] of a run's split (`RunDir.tokens(split)`)."""
    if not path.is_file():
        raise UserError(f"no token windows at {path}", "Run `randsae run` first to create the run directory")
    try:
        return load_file(path)["input_ids"]
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise UserError(
            f"token file {path} is damaged ({error})",
            "Rerun `randsae run` with the same --out: it tokenizes a damaged file again",
        ) from None
