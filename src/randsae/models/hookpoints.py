"""The residual stream after block i, found generically, and a forward that stops after the deepest layer.

A block's output (first element when it returns a tuple) is the residual stream the paper's SAEs read:
`gpt_neox.layers.i` on Pythia, `model.layers.i` on Llama, `transformer.h.i` on GPT-2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from randsae.errors import UserError

KNOWN_BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma, OLMo
    "gpt_neox.layers",  # Pythia, GPT-NeoX
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "model.decoder.layers",  # OPT
    "transformer.layers",
    "layers",
)


KNOWN_FINAL_NORM_PATHS = (
    "model.norm",
    "gpt_neox.final_layer_norm",
    "transformer.ln_f",
    "model.decoder.final_layer_norm",
)


def final_norm_weight(model: nn.Module) -> Tensor | None:
    """The scale of the norm before the unembedding (None when the model has none at a known path)."""
    for path in KNOWN_FINAL_NORM_PATHS:
        module: nn.Module | None = model
        for name in path.split("."):
            module = getattr(module, name, None)
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor):
            return weight
    return None


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, block list): `path` if given, else the first known path that exists."""
    for candidate in [path] if path else KNOWN_BLOCK_PATHS:
        module = model
        try:
            for part in candidate.split("."):
                module = getattr(module, part)
        except AttributeError:
            if path:
                raise UserError(
                    f"model has no module {path!r}",
                    "Set model.blocks to the dotted path of its block list (print(model) shows it)",
                ) from None
            continue
        if isinstance(module, nn.ModuleList):
            return candidate, module
    raise UserError(
        f"cannot find the transformer blocks of {type(model).__name__}",
        "Set model.blocks to the dotted path of its block list, e.g. 'gpt_neox.layers'",
    )


def hook_name(blocks_path: str, layer: int) -> str:
    return f"{blocks_path}.{layer}"


def check_layers(layers: Sequence[int], n_layers: int) -> None:
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise UserError(
            f"layer {bad[0]} is out of range: the model has {n_layers} blocks",
            f"Choose layers between 0 and {n_layers - 1}",
        )


class _StopForward(Exception):
    """Raised by the deepest hook so the rest of the model never runs."""


def _block_output(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def residual_stream(
    model: nn.Module, blocks: nn.ModuleList, layers: Sequence[int], input_ids: Tensor
) -> dict[int, Tensor]:
    """One truncated forward: {layer: block output [batch, seq, d_model]} for every requested layer."""
    captured: dict[int, Tensor] = {}
    deepest = max(layers)

    def capture(layer: int) -> Callable:
        def hook(_module, _inputs, output):
            captured[layer] = _block_output(output)
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(capture(layer)) for layer in sorted(set(layers))]
    try:
        model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


@contextlib.contextmanager
def replace_residual(block: nn.Module, replace: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the context, the block's output residual stream is replaced by `replace(output)`."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (replace(output[0]), *output[1:])
        return replace(output)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
