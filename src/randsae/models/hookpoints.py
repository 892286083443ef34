"""The residual stream after block i, found generically, and a forward that stops after the deepest layer.

A block's output (first element when it returns a tuple) is the residual stream the paper's SAEs read:
`gpt_neox.layers.i` on Pythia, `model.layers.i` on Llama, `transformer.h.i` on GPT-2, `backbone.layers.i`
on Mamba, `rwkv.blocks.i` on RWKV. Any causal LM whose forward runs a `ModuleList` of blocks in order works:
the known paths are tried first, then the list that holds most of the model's weights; `model.blocks`
names it when neither finds it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from randsae.errors import UserError

KNOWN_BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma, OLMo, RecurrentGemma
    "model.language_model.layers",  # the text model inside transformers' multimodal wrappers
    "gpt_neox.layers",  # Pythia, GPT-NeoX
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "model.decoder.layers",  # OPT
    "backbone.layers",  # Mamba, Mamba2, FalconMamba
    "rwkv.blocks",  # RWKV
    "backbone.blocks",  # xLSTM
    "transformer.layers",
    "layers",
)

_TORCH_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
_NORM_CLASS_NAME = re.compile(r"Norm(Gated|[0-9]d)?$")
"""`LlamaRMSNorm`, `T5LayerNorm`, `MambaRMSNormGated`, `LayerNorm2d`; not `Normalizer`, nor Baichuan's
`NormHead` (an unembedding that normalizes its rows)."""


def is_norm(module: nn.Module) -> bool:
    """Whether the module is a normalization layer: a torch norm, or a class named like one (each family
    defines its own RMSNorm)."""
    return isinstance(module, _TORCH_NORMS) or bool(_NORM_CLASS_NAME.search(type(module).__name__))


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the unembedding (`norm_f` on Mamba, `ln_out` on RWKV): the last
    norm the model registers outside its block lists (None when it has none)."""
    found = None

    def visit(module: nn.Module) -> None:
        nonlocal found
        if is_norm(module):
            found = module
        for child in module.children():
            if not isinstance(child, nn.ModuleList):
                visit(child)

    visit(model)
    return found


@torch.no_grad()
def final_norm_weight(model: nn.Module) -> Tensor | None:
    """The final norm's elementwise scale [d_model], which the dashboards fold into the unembedding (None when
    the model has no final norm or it has no weight): its weight on LayerNorm and most RMSNorms, 1 + weight
    on Gemma's and Qwen3-Next's. Measured, so each family's convention is followed: every such norm maps
    x = ±c·(1, -1, 1, ...) (mean 0, rms c) to ±scale·x/c (+ a bias the difference cancels)."""
    norm = final_norm(model)
    weight = getattr(norm, "weight", None)
    if norm is None or not isinstance(weight, Tensor) or weight.ndim != 1 or weight.numel() % 2:
        return weight if isinstance(weight, Tensor) else None  # an odd width has no mean-0 alternating probe
    c = 100.0  # the norm's epsilon, added to c^2, then shifts the scale by eps / 2c^2 (~1e-9)
    sign = torch.tensor([1.0, -1.0], device=weight.device).repeat(weight.numel() // 2)
    x = (c * sign).to(weight.dtype).view(1, 1, -1)  # shaped like hidden states [batch, seq, d_model]
    return ((norm(x) - norm(-x)).float().flatten() / (2 * sign)).to(weight.dtype)


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, block list): `path` if given, else the first known path that exists, else the
    model's largest list of blocks (`block_list_by_structure`)."""
    if path:
        module = _module_at(model, path)
        if module is None:
            raise UserError(
                f"model has no module {path!r}",
                "Set model.blocks to the dotted path of its block list (print(model) shows it)",
            )
        if not isinstance(module, nn.ModuleList):
            raise UserError(
                f"model.blocks = {path!r} is a {type(module).__name__}, not a list of blocks",
                "Set model.blocks to the dotted path of the ModuleList that holds the blocks (print(model))",
            )
        return path, module
    for candidate in KNOWN_BLOCK_PATHS:
        module = _module_at(model, candidate)
        if isinstance(module, nn.ModuleList):
            return candidate, module
    return block_list_by_structure(model)


def _module_at(model: nn.Module, path: str) -> nn.Module | None:
    module: nn.Module | None = model
    for part in path.split("."):
        module = getattr(module, part, None)
    return module if isinstance(module, nn.Module) else None


def block_list_by_structure(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The `ModuleList` holding the most parameters among those no other `ModuleList` holds: the blocks hold
    most of any language model's weights, while lists inside a block (a mixture's experts) are parts of it,
    and lists beside the blocks (per-layer norms) are small. Blocks of several classes (Jamba's attention
    and Mamba layers) are one list all the same. Two lists of equal size (an encoder and a decoder) are
    ambiguous and left to `model.blocks`."""
    lists: list[tuple[str, nn.ModuleList, int]] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList):
                lists.append((f"{prefix}{name}", child, sum(p.numel() for p in child.parameters())))
            else:
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    most = max((size for *_, size in lists), default=0)
    largest = [(path, blocks) for path, blocks, size in lists if size == most > 0]
    if len(largest) == 1:
        return largest[0]
    found = f": {' and '.join(repr(path) for path, _ in largest)} are alike" if largest else ""
    raise UserError(
        f"cannot find the block list of {type(model).__name__}{found}",
        "Set model.blocks to the dotted path of its block list, e.g. 'gpt_neox.layers' (print(model) shows it)",
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
