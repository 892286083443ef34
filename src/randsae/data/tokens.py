"""Tokenize documents, split them train / held-out, and pack each split into fixed windows.

The split is by document (a stable hash of its text), so no document, and hence no token, is in both.
Documents are joined by EOS and cut into windows of `context_size - 1` tokens; each window starts with
an explicit BOS token, so position 0 is always the same token whatever the tokenizer adds by itself.
Activation caches flatten the windows (row r = window r // context_size, position r % context_size), and
everything downstream leaves the BOS rows out (`not_bos`): their activations are attention-sink outliers.
With `exclude_special` the other special tokens inside windows (the EOS that separates documents, chat
markers such as `<|im_end|>`) are left out too (`counted`): their ids are recorded in each token file's
header (`excluded_ids`), so every stage reads the same rule off the tokens it uses.

Windows are packed and written a chunk at a time into the split's token file, and read back memory-mapped,
so no split is ever held in memory whole, whatever `train_tokens` is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from randsae.atomic import temporary_sibling
from randsae.errors import UserError
from randsae.toml_config import invalid

SPLITS = ("train", "heldout")
UNKNOWN_WARNING_SHARE = 0.05
"""Above this share of unknown tokens the text does not suit the tokenizer (a warning, not an error)."""
CHUNK_WINDOWS = 1024
"""Windows packed and written at a time: what tokenization holds in memory, whatever the split's size."""


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
    exclude_special: bool = True
    """Leave the tokenizer's special tokens inside windows (the EOS between documents, chat markers such as
    `<|im_end|>`) out of SAE training and every measurement, as BOS at position 0 always is: like BOS they
    carry outlier activations that dominate squared errors. False keeps them (BOS stays out)."""

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


def counted(input_ids: Tensor, excluded_ids: Iterable[int], bos: bool = False) -> Tensor:
    """bool [n_windows * context_size], flattened like an activation cache: the rows SAEs train on and every
    measurement uses; not a token of `excluded_ids` (`load_excluded_ids`), nor position 0 (BOS) unless
    `bos` (training with `train.skip_bos` off)."""
    excluded = torch.tensor(sorted(excluded_ids), dtype=input_ids.dtype)
    keep = ~torch.isin(input_ids, excluded)
    keep[:, 0] = bos
    return keep.reshape(-1)


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


class WindowPacker:
    """Packs one split's documents into windows as they come, handing them to `sink` in chunks of whole
    windows: only one chunk of tokens is held, however many the split asks for."""

    def __init__(
        self,
        n_windows: int,
        context_size: int,
        bos: int,
        separator: int,
        sink: Callable[[np.ndarray], None],
        chunk_windows: int = CHUNK_WINDOWS,
    ):
        self.n_windows, self.body, self.bos, self.separator = n_windows, context_size - 1, bos, separator
        self.sink, self.chunk_tokens = sink, chunk_windows * self.body
        self.packed = 0
        self.stream: list[int] = []

    @property
    def full(self) -> bool:
        return self.packed == self.n_windows

    def add(self, ids: list[int]) -> None:
        """Append one document and its separator (ignored once the split is full)."""
        if self.full:
            return
        self.stream.extend(ids)
        self.stream.append(self.separator)
        if len(self.stream) >= self.chunk_tokens:
            self.emit()

    def emit(self) -> None:
        """Hand the whole windows the stream holds to the sink (the rest waits for more text)."""
        n = min(self.n_windows - self.packed, len(self.stream) // self.body)
        if n == 0:
            return
        windows = np.empty((n, self.body + 1), dtype=np.int32)
        windows[:, 0] = self.bos
        windows[:, 1:] = np.asarray(self.stream[: n * self.body], dtype=np.int32).reshape(n, self.body)
        del self.stream[: n * self.body]
        self.packed += n
        if self.full:
            self.stream.clear()
        self.sink(windows)


def pack_windows(documents: Iterable[list[int]], n_windows: int, context_size: int, bos: int, separator: int) -> Tensor:
    """int32 [≤ n_windows, context_size] in memory: documents joined by `separator`, cut, each window led by BOS."""
    chunks: list[np.ndarray] = [np.empty((0, context_size), dtype=np.int32)]
    packer = WindowPacker(n_windows, context_size, bos, separator, chunks.append)
    for ids in documents:
        packer.add(ids)
        if packer.full:
            break
    packer.emit()
    return torch.from_numpy(np.concatenate(chunks))


def tokenize_splits(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    cfg: TokenConfig,
    paths: Mapping[str, Path],
    batch_docs: int = 256,
) -> float:
    """Write the windows of each split in `paths` (of SPLITS) to its token file, reading text only until they
    are full; returns the share of their tokens (BOS left out) that are the tokenizer's unknown token."""
    bos, separator = special_ids(tokenizer)
    unk = tokenizer.unk_token_id
    counts = {"unknown": 0, "all": 0}
    with contextlib.ExitStack() as stack:
        packers = {}
        for split, path in paths.items():
            n_windows = getattr(cfg, f"{split}_tokens") // cfg.context_size
            excluded = special_token_ids(tokenizer) if cfg.exclude_special else ()
            writer = stack.enter_context(TokenFileWriter(path, n_windows, cfg.context_size, excluded))

            def sink(windows: np.ndarray, writer: TokenFileWriter = writer) -> None:
                writer.write(windows)
                counts["all"] += windows.size - windows.shape[0]
                counts["unknown"] += int((windows[:, 1:] == unk).sum()) if unk is not None else 0

            packers[split] = WindowPacker(n_windows, cfg.context_size, bos, separator, sink)
        pending: list[str] = []

        def flush() -> None:
            if not pending:
                return
            encoded = tokenizer(pending, add_special_tokens=False)["input_ids"]
            for text, ids in zip(pending, encoded, strict=True):
                split = "heldout" if is_heldout(text, cfg.heldout_fraction, cfg.split_seed) else "train"
                if split in packers:
                    packers[split].add(ids)
            pending.clear()

        for text in texts:
            pending.append(text)
            if len(pending) == batch_docs:
                flush()
                if all(packer.full for packer in packers.values()):
                    break
        flush()
        for split, packer in packers.items():
            packer.emit()
            if not packer.full:
                raise UserError(
                    f"the text has only {packer.packed * cfg.context_size} {split} tokens, "
                    f"{packer.n_windows * cfg.context_size} were asked for",
                    f"Lower tokens.{split}_tokens or use more text",
                )
    return counts["unknown"] / counts["all"] if counts["all"] else 0.0


def unknown_token_warning(share: float, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A warning naming the share of unknown tokens (`tokenize_splits`) when it is above UNKNOWN_WARNING_SHARE."""
    if share <= UNKNOWN_WARNING_SHARE:
        return None
    return (
        f"{share:.0%} of the tokens are the unknown token {tokenizer.unk_token!r}: "
        "the text does not suit the model's tokenizer (check data.source and model.name)"
    )


class TokenFileWriter:
    """Writes one split's token file as windows arrive: a safetensors file (`input_ids`, int32 [n, C]) whose
    header, written first, already holds the final shape, so the data streams after it. The file is built
    under a temporary name of this writer's own and renamed into place once all `n_windows` are written; on an
    error it is removed. Tokenization is deterministic, so jobs of a split run that tokenize at once write the
    same bytes and the last rename wins with the same file.
    """

    def __init__(self, path: Path, n_windows: int, context_size: int, excluded_ids: Iterable[int] = ()):
        self.path, self.n_windows, self.context_size = path, n_windows, context_size
        self.excluded_ids = sorted(excluded_ids)
        self.tmp = temporary_sibling(path, shared=True)
        self.written = 0

    def __enter__(self) -> TokenFileWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "wb")
        self.file.write(_header(self.n_windows, self.context_size, self.excluded_ids))
        return self

    def write(self, windows: np.ndarray) -> None:
        if windows.shape[1:] != (self.context_size,) or self.written + windows.shape[0] > self.n_windows:
            raise ValueError(f"windows of shape {windows.shape} do not fit {self.path}")
        self.file.write(np.ascontiguousarray(windows, dtype="<i4").tobytes())
        self.written += windows.shape[0]

    def __exit__(self, error_type: object, *_: object) -> None:
        self.file.close()
        if error_type is None and self.written == self.n_windows:
            self.tmp.replace(self.path)
            return
        self.tmp.unlink(missing_ok=True)
        if error_type is None:
            raise ValueError(f"{self.written} of the {self.n_windows} windows of {self.path} were written")


def _header(n_windows: int, context_size: int, excluded_ids: list[int]) -> bytes:
    """The safetensors header of `input_ids` int32 [n_windows, context_size] with the `excluded_ids` metadata,
    byte for byte as `safetensors.torch.save_file` writes it (JSON padded with spaces to a multiple of 8)."""
    size = n_windows * context_size * 4
    entry = {"dtype": "I32", "shape": [n_windows, context_size], "data_offsets": [0, size]}
    metadata = {"excluded_ids": json.dumps(excluded_ids)}
    text = json.dumps({"__metadata__": metadata, "input_ids": entry}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def save_tokens(path: Path, input_ids: Tensor, excluded_ids: Iterable[int] = ()) -> None:
    """One split's windows, int32 [n_windows, context_size], written atomically (`TokenFileWriter`)."""
    n_windows, context_size = input_ids.shape
    with TokenFileWriter(path, n_windows, context_size, excluded_ids) as writer:
        writer.write(input_ids.numpy())


def load_tokens(path: Path) -> Tensor:
    """int32 [n_windows, context_size] of a run's split (`RunDir.tokens(split)`)."""
    if not path.is_file():
        raise UserError(f"no token windows at {path}", "Run `randsae run` first to create the run directory")
    try:
        return torch.from_numpy(_map_windows(path))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error) as error:
        raise UserError(
            f"token file {path} is damaged ({error})",
            "Rerun `randsae run` with the same --out: it tokenizes a damaged file again",
        ) from None


def load_excluded_ids(path: Path) -> tuple[int, ...]:
    """The special token ids a split's rows leave out besides BOS (`counted`); () for a file without them."""
    try:
        header, _ = _read_header(path)
        return tuple(int(i) for i in json.loads(header.get("__metadata__", {}).get("excluded_ids", "[]")))
    except (OSError, ValueError, TypeError, AttributeError, struct.error) as error:
        raise UserError(
            f"token file {path} is damaged ({error})",
            "Rerun `randsae run` with the same --out: it tokenizes a damaged file again",
        ) from None


def counted_rows(path: Path, bos: bool = False) -> Tensor:
    """`counted` of a run's split: the rows of its activation caches that SAEs train on and stages measure."""
    return counted(load_tokens(path), load_excluded_ids(path), bos)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The tokenizer's special token ids that mark structure (BOS, EOS, padding, chat markers...): all but the
    unknown token, which stands for text (a word the vocabulary cannot spell) and is only warned about."""
    marks = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    unknown = {tokenizer.unk_token_id} - marks
    return tuple(sorted(set(tokenizer.all_special_ids) - unknown))


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header as JSON, and its length in bytes."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > 1 << 20:
            raise ValueError("header length out of range")
        return json.loads(file.read(length)), length


def _map_windows(path: Path) -> np.ndarray:
    """The file's `input_ids` memory-mapped (copy on write), after checking its header against its size."""
    header, length = _read_header(path)
    entry = header["input_ids"]
    rows, columns = entry["shape"]
    start, end = entry["data_offsets"]
    if entry["dtype"] != "I32" or start != 0 or end != rows * columns * 4:
        raise ValueError(f"input_ids is {entry}, not int32 [n_windows, context_size]")
    if path.stat().st_size != 8 + length + end:
        raise ValueError(f"{path.stat().st_size} bytes, {8 + length + end} expected")
    if rows == 0:
        return np.empty((0, columns), dtype=np.int32)
    return np.memmap(path, dtype="<i4", mode="c", offset=8 + length, shape=(rows, columns))
