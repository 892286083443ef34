"""Random networks the toy data is passed through: does superposition survive a random map?

Weights keep PyTorch's default initialization (nn.Linear: U(±1/√fan_in) for weights and biases), seeded.
The planted features are mapped too, so MMCS can be measured after the network: feature i's image is
net(f_i) − net(0), the change that feature alone makes to the output. (The paper's code compares with
net(f_i) itself, which adds the network's constant output net(0) to every feature.)
"""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple

import torch
from torch import Tensor, nn

TRANSFORMER_CONTEXT = 16
"""Samples per sequence when the data goes through a transformer block (consecutive samples as tokens)."""
TRANSFORMER_HEADS = 4


class MappedData(NamedTuple):
    samples: Tensor
    """[n_samples, n_dims] network outputs."""
    features: Tensor
    """[n_features, n_dims] feature images net(f_i) − net(0)."""


def build_network(name: str, n_dims: int, seed: int) -> nn.Module:
    """`mlpN` (N linear layers, hidden width 4·n_dims, ReLU between) or `transformer_block`, freshly initialized."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "transformer_block":
            return _CausalBlock(n_dims)
        depth = int(name.removeprefix("mlp"))
        widths = [n_dims] + [4 * n_dims] * (depth - 1) + [n_dims]
        layers: list[nn.Module] = []
        for width_in, width_out in pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        return nn.Sequential(*layers[:-1]).eval()


class _CausalBlock(nn.Module):
    """One pre-LN transformer block with causal attention; each row of its input is one token."""

    def __init__(self, n_dims: int):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(
            n_dims, TRANSFORMER_HEADS, dim_feedforward=4 * n_dims, dropout=0.0, batch_first=True, norm_first=True
        )
        self.eval()

    def forward(self, rows: Tensor, context: int = TRANSFORMER_CONTEXT) -> Tensor:
        n_rows, n_dims = rows.shape
        padding = -n_rows % context
        sequences = torch.cat([rows, rows.new_zeros(padding, n_dims)]).view(-1, context, n_dims)
        mask = nn.Transformer.generate_square_subsequent_mask(context)
        return self.block(sequences, src_mask=mask, is_causal=True).reshape(-1, n_dims)[:n_rows]


@torch.no_grad()
def map_through(network: nn.Module, samples: Tensor, features: Tensor) -> MappedData:
    if isinstance(network, _CausalBlock):
        # Features are mapped one token at a time (context 1), so no feature attends to another.
        def image(rows: Tensor) -> Tensor:
            return network(rows, context=1)
    else:
        image = network
    origin = image(features.new_zeros(1, features.shape[1]))
    return MappedData(samples=network(samples), features=image(features) - origin)
