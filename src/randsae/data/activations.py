"""The on-disk activation cache: residual-stream activations in shards, with a manifest.

Harvested once per (variant, layer, split), read by every SAE, metric and analysis after. A harvest writes
each shard atomically and records it in the manifest as it goes, so an interrupted harvest resumes at the
first missing shard; memory holds one shard per layer, whatever the token count.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from randsae.atomic import file_sha256, save_safetensors_atomic, write_text_atomic
from randsae.errors import UserError

MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Shard:
    file: str
    n_tokens: int
    sha256: str
    """Computed once, as the shard is written; `ActivationCache.verify` checks it."""
    n_bytes: int | None = None
    """File size, checked on every open (None in caches written before sizes were recorded)."""


@dataclasses.dataclass(frozen=True)
class CacheManifest:
    model: str
    variant: str
    layer: int
    hook_name: str
    split: str
    n_tokens: int
    """Tokens the finished cache holds (rows of all shards together)."""
    d_model: int
    dtype: str
    context_size: int
    complete: bool = False
    shards: tuple[Shard, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> CacheManifest:
        data = json.loads(text)
        data["shards"] = tuple(Shard(**shard) for shard in data["shards"])
        return cls(**data)


class ActivationCache:
    """Read access to one finished cache folder; rows in token order (row r = window r // C, position r % C)."""

    def __init__(self, folder: Path, manifest: CacheManifest):
        self.folder = folder
        self.manifest = manifest

    @classmethod
    def open(cls, folder: str | Path) -> ActivationCache:
        """Open a finished cache, checking the manifest and every shard's presence and size (cheap).

        The checksums are checked by `verify()`, which the pipeline runs before an SAE trains on a cache.
        """
        folder = Path(folder)
        fix = "Rerun `randsae run` with the same --out: it harvests what is missing or damaged again"
        try:
            manifest = CacheManifest.from_json((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise UserError(f"no activation cache at {folder}", fix) from None
        except (ValueError, TypeError, KeyError) as error:
            raise UserError(f"activation cache manifest {folder / MANIFEST} is corrupt ({error})", fix) from None
        if not manifest.complete:
            raise UserError(f"activation cache {folder} is incomplete (harvest interrupted)", fix)
        for shard in manifest.shards:
            path = folder / shard.file
            if not path.is_file() or (shard.n_bytes is not None and path.stat().st_size != shard.n_bytes):
                raise UserError(f"activation cache shard {path} is missing or truncated", fix)
        return cls(folder, manifest)

    def verify(self) -> None:
        """Re-hash every shard against the checksum recorded when it was written; UserError on a mismatch."""
        for shard in self.manifest.shards:
            path = self.folder / shard.file
            if file_sha256(path) != shard.sha256:
                raise UserError(
                    f"activation cache shard {path} is corrupt (checksum mismatch)", _rebuild_fix(self.folder)
                )

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    @property
    def d_model(self) -> int:
        return self.manifest.d_model

    def iter_chunks(self, rows: int = 65_536) -> Iterator[Tensor]:
        """float32 chunks of at most `rows` rows [n, d_model], in row order; one shard in memory at a time."""
        for shard in self.manifest.shards:
            try:
                data = load_file(self.folder / shard.file)["activations"]
            except Exception as error:  # safetensors raises its own error types for a damaged file
                raise UserError(
                    f"activation cache shard {self.folder / shard.file} is unreadable ({error})",
                    _rebuild_fix(self.folder),
                ) from None
            for start in range(0, data.shape[0], rows):
                yield data[start : start + rows].float()

    def load(self) -> Tensor:
        """Every row at once [n_tokens, d_model] (float32)."""
        return torch.cat(list(self.iter_chunks(rows=1 << 30)))


class CacheWriter:
    """Appends shards to one cache folder, resuming where an earlier harvest of the same spec stopped.

    Resuming keeps the recorded shards up to the first one that is missing or not at its recorded size, so a
    damaged cache is repaired by harvesting again from there (the harvest is deterministic).
    """

    def __init__(self, folder: Path, spec: CacheManifest, windows_per_shard: int):
        self.folder = folder
        self.windows_per_shard = windows_per_shard
        self.buffer: list[Tensor] = []
        folder.mkdir(parents=True, exist_ok=True)
        existing = self._existing_manifest()
        if existing is not None and dataclasses.replace(existing, complete=False, shards=()) == spec:
            intact = _intact_prefix(folder, existing.shards)
            self.manifest = existing
            if len(intact) < len(existing.shards):
                self.manifest = dataclasses.replace(existing, complete=False, shards=intact)
                self._save_manifest()
        else:
            self.manifest = spec
            self._save_manifest()

    def _existing_manifest(self) -> CacheManifest | None:
        try:
            return CacheManifest.from_json((self.folder / MANIFEST).read_text())
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None

    @property
    def windows_done(self) -> int:
        return sum(shard.n_tokens for shard in self.manifest.shards) // self.manifest.context_size

    def add(self, activations: Tensor) -> None:
        """Add the activations of a batch of windows, [batch, context_size, d_model]."""
        self.buffer.append(activations.reshape(-1, activations.shape[-1]).to("cpu", DTYPES[self.manifest.dtype]))
        if sum(chunk.shape[0] for chunk in self.buffer) >= self.windows_per_shard * self.manifest.context_size:
            self._flush()

    def finish(self) -> None:
        if self.buffer:
            self._flush()
        self.manifest = dataclasses.replace(self.manifest, complete=True)
        self._save_manifest()

    def _flush(self) -> None:
        data = torch.cat(self.buffer)
        self.buffer = []
        name = f"shard_{len(self.manifest.shards):05d}.safetensors"
        save_safetensors_atomic(self.folder / name, {"activations": data})
        path = self.folder / name
        shard = Shard(name, data.shape[0], file_sha256(path), path.stat().st_size)
        self.manifest = dataclasses.replace(self.manifest, shards=(*self.manifest.shards, shard))
        self._save_manifest()

    def _save_manifest(self) -> None:
        write_text_atomic(self.folder / MANIFEST, self.manifest.to_json())


def harvest(
    forward: Callable[[Tensor], dict[int, Tensor]],
    input_ids: Tensor,
    writers: dict[int, CacheWriter],
    batch_size: int,
    device: torch.device,
    desc: str = "harvest",
    progress: bool = True,
    before_batch: Callable[[int], None] | None = None,
) -> None:
    """Run `forward` (one truncated model pass → {layer: [batch, C, d]}) over all windows not yet cached.

    Every layer's writer is fed from the same forward; all writers resume from the least advanced one.
    `before_batch(first_window)` runs before each forward (the control reseeds its noise there, so a resumed
    or repaired harvest draws the same noise for the same windows).
    """
    pending = [writer for writer in writers.values() if not writer.manifest.complete]
    if not pending:
        return
    start = min(writer.windows_done for writer in pending)
    windows_per_shard = pending[0].windows_per_shard
    start -= start % windows_per_shard
    bar = tqdm(
        total=input_ids.shape[0] * input_ids.shape[1],
        initial=start * input_ids.shape[1],
        desc=desc,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    for begin in range(start, input_ids.shape[0], batch_size):
        batch = input_ids[begin : begin + batch_size].to(device=device, dtype=torch.long)
        if before_batch is not None:
            before_batch(begin)
        outputs = forward(batch)
        for layer, writer in writers.items():
            if not writer.manifest.complete and writer.windows_done <= begin:
                writer.add(outputs[layer])
        bar.update(batch.numel())
    bar.close()
    for writer in pending:
        writer.finish()


def _intact_prefix(folder: Path, shards: tuple[Shard, ...]) -> tuple[Shard, ...]:
    """The leading shards whose files are present at their recorded size."""
    for index, shard in enumerate(shards):
        path = folder / shard.file
        if not path.is_file() or (shard.n_bytes is not None and path.stat().st_size != shard.n_bytes):
            return shards[:index]
    return shards


def _rebuild_fix(folder: Path) -> str:
    return f"Delete {folder} and rerun `randsae run` with the same --out to harvest it again"
