"""Random networks: the paper's shape, seeded default init, causal attention and the feature images."""

import pytest
import torch
from torch import nn

from randsae.toy.networks import TRANSFORMER_CONTEXT, build_network, map_through


def test_mlp2_is_the_papers_network():
    network = build_network("mlp2", 8, seed=0)
    linear = [layer for layer in network if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == [(8, 32), (32, 8)]
    assert [type(layer) for layer in network] == [nn.Linear, nn.ReLU, nn.Linear]
    # PyTorch's default init: weights and biases within ±1/√fan_in.
    for layer in linear:
        bound = layer.in_features**-0.5
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert layer.weight.abs().max() > 0.8 * bound


def test_deeper_mlp_has_that_many_linear_layers():
    network = build_network("mlp4", 8, seed=0)
    assert sum(isinstance(layer, nn.Linear) for layer in network) == 4
    assert network(torch.randn(3, 8)).shape == (3, 8)


def test_networks_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_network("mlp2", 8, seed=1), build_network("mlp2", 8, seed=1), build_network("mlp2", 8, seed=2)
    assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)


def test_feature_images_are_the_change_from_the_empty_input():
    network = build_network("mlp2", 6, seed=0)
    samples, features = torch.randn(10, 6), torch.randn(4, 6)
    mapped = map_through(network, samples, features)
    with torch.no_grad():
        torch.testing.assert_close(mapped.samples, network(samples))
        torch.testing.assert_close(mapped.features, network(features) - network(torch.zeros(1, 6)))


def test_transformer_block_is_causal_within_each_sequence():
    block = build_network("transformer_block", 8, seed=0)
    rows = torch.randn(2 * TRANSFORMER_CONTEXT + 5, 8)  # not a multiple of the context: padded internally
    changed = rows.clone()
    changed[TRANSFORMER_CONTEXT + 3] = torch.randn(8)  # a token in the second sequence
    with torch.no_grad():
        before, after = block(rows), block(changed)
    assert before.shape == rows.shape
    unaffected = list(range(TRANSFORMER_CONTEXT + 3)) + list(range(2 * TRANSFORMER_CONTEXT, len(rows)))
    torch.testing.assert_close(before[unaffected], after[unaffected])
    assert not torch.allclose(before[TRANSFORMER_CONTEXT + 4], after[TRANSFORMER_CONTEXT + 4])


def test_transformer_feature_images_see_one_token_at_a_time():
    block = build_network("transformer_block", 8, seed=0)
    features = torch.randn(5, 8)
    mapped = map_through(block, torch.randn(20, 8), features)
    with torch.no_grad():
        alone = block(features[2:3], context=1) - block(torch.zeros(1, 8), context=1)
    torch.testing.assert_close(mapped.features[2:3], alone)
    assert mapped.samples.shape == (20, 8)


@pytest.mark.parametrize("name", ["mlp2", "transformer_block"])
def test_random_network_keeps_superposed_directions_distinct(name):
    """The images of distinct random features stay far from parallel (nothing collapses them)."""
    features = torch.randn(64, 32)
    features /= features.norm(dim=1, keepdim=True)
    images = map_through(build_network(name, 32, seed=0), torch.randn(4, 32), features).features
    images = images / images.norm(dim=1, keepdim=True)
    cosines = images @ images.T
    assert cosines[~torch.eye(64, dtype=torch.bool)].abs().mean() < 0.5
