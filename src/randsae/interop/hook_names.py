"""Which residual stream another library's hook name is: the output of block L, the one randsae's SAEs read.

Each library names it its own way: TransformerLens (SAELens) `blocks.L.hook_resid_post` (and
`blocks.L+1.hook_resid_pre`, the same tensor), sparsify and randsae the block module's dotted path
(`layers.L`, `gpt_neox.layers.L`, `model.layers.L`), dictionary_learning `resid_post_layer_L`.
"""

from __future__ import annotations

import re

from randsae.models.hookpoints import KNOWN_BLOCK_PATHS

_TRANSFORMER_LENS = re.compile(r"blocks\.(?P<layer>\d+)\.hook_resid_(?P<where>pre|post)")
_MODULE = re.compile(r"(?P<path>[A-Za-z_][A-Za-z0-9_.]*)\.(?P<layer>\d+)")
_DICTIONARY_LEARNING = re.compile(r"resid_post_layer_(?P<layer>\d+)")


def residual_layer(hook: str) -> int | None:
    """The block whose output `hook` names, counted from 0; None when it names something else (an attention
    or MLP output, the embeddings, a head)."""
    match = _TRANSFORMER_LENS.fullmatch(hook)
    if match:
        layer = int(match["layer"])
        if match["where"] == "post":
            return layer
        return layer - 1 if layer > 0 else None  # resid_pre of block 0 is the embeddings
    match = _DICTIONARY_LEARNING.fullmatch(hook)
    if match:
        return int(match["layer"])
    match = _MODULE.fullmatch(hook)
    if match and match["path"] in KNOWN_BLOCK_PATHS:
        return int(match["layer"])
    return None
