"""Toy metrics against hand-computed values and a numpy reference."""

import math

import numpy as np
import pytest
import torch

from randsae.toy.metrics import code_stats, front_gap, mmcs, pareto_front


def test_mmcs_hand_example():
    features = torch.eye(3)
    # Feature 0 matched exactly; feature 1: best of (1/√2, 0.8, -0.8); feature 2: best of (1/√2, -0.6, 0.6).
    decoder = torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0.8, -0.6], [0, -0.8, 0.6]]) * 2.0
    expected = (1.0 + 0.8 + 1 / math.sqrt(2)) / 3
    assert mmcs(features, decoder).item() == pytest.approx(expected, rel=1e-5)


def test_mmcs_is_signed_and_batched():
    features = torch.tensor([[1.0, 0.0]])
    assert mmcs(features, torch.tensor([[-1.0, 0.0]])).item() == pytest.approx(-1.0)
    decoders = torch.randn(4, 7, 5)
    features = torch.randn(6, 5)
    batched = mmcs(features, decoders)
    assert batched.shape == (4,)
    for index in range(4):
        assert batched[index].item() == pytest.approx(mmcs(features, decoders[index]).item(), rel=1e-6)


def reference_stats(x, x_hat, z):
    """Straightforward per-sample numpy version of code_stats, for one SAE."""
    fvu = np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(axis=0)) ** 2)
    n = z.shape[1]
    l0, l1, ratio, hoyer = [], [], [], []
    for code in z:
        a, b = np.sum(np.abs(code)), np.sqrt(np.sum(code**2))
        l0.append(np.count_nonzero(code))
        l1.append(a)
        ratio.append(a / np.sqrt(b) if b > 0 else 0.0)
        hoyer.append((np.sqrt(n) - a / b) / (np.sqrt(n) - 1) if b > 0 else 1.0)
    dead = np.mean(~np.any(z != 0, axis=0))
    return fvu, np.mean(l0), np.mean(l1), np.mean(ratio), np.mean(hoyer), dead


def test_code_stats_match_numpy_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=gen)
    x_hat = x + 0.3 * torch.randn(30, 5, generator=gen)
    z = torch.relu(torch.randn(30, 9, generator=gen) - 0.5)
    z[3] = 0.0  # an all-zero code
    z[:, 4] = 0.0  # a dead latent
    stats = code_stats(x, x_hat, z)
    expected = reference_stats(x.double().numpy(), x_hat.double().numpy(), z.double().numpy())
    got = (stats.fvu, stats.l0, stats.l1, stats.l1_over_sqrt_l2, stats.hoyer, stats.dead_fraction)
    for value, reference in zip(got, expected, strict=True):
        assert value.item() == pytest.approx(reference, rel=1e-5)


def test_hoyer_closed_forms():
    x = torch.zeros(3, 2)
    codes = torch.tensor([[0.0, 5.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    # one-hot: 1; flat: 0; all-zero counts as 1 → mean 2/3. L1/√L2: 5/√5, 8/√4, 0.
    stats = code_stats(x + torch.eye(3, 2), x, codes)
    assert stats.hoyer.item() == pytest.approx(2 / 3)
    assert stats.l1_over_sqrt_l2.item() == pytest.approx((math.sqrt(5) + 4.0 + 0.0) / 3)
    assert stats.l0.item() == pytest.approx(5 / 3)


def test_code_stats_batched_over_saes():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 4, generator=gen)
    x_hat = torch.randn(3, 20, 4, generator=gen)
    z = torch.relu(torch.randn(3, 20, 6, generator=gen))
    batched = code_stats(x, x_hat, z)
    for index in range(3):
        single = code_stats(x, x_hat[index], z[index])
        for got, want in zip(batched, single, strict=True):
            assert got[index].item() == pytest.approx(want.item(), rel=1e-6)


def test_perfect_reconstruction_has_zero_fvu_and_mean_prediction_has_one():
    x = torch.randn(50, 3)
    z = torch.ones(50, 2)
    assert code_stats(x, x, z).fvu.item() == pytest.approx(0.0, abs=1e-7)
    assert code_stats(x, x.mean(dim=0).expand_as(x), z).fvu.item() == pytest.approx(1.0, rel=1e-6)


def test_pareto_front_hand_example():
    # Point 2 is dominated by point 1 (sparser and better); point 4 ties point 3 on sparsity but explains less.
    sparsity = np.array([1.0, 2.0, 3.0, 5.0, 5.0])
    explained = np.array([0.1, 0.6, 0.5, 0.9, 0.7])
    assert pareto_front(sparsity, explained, higher_is_sparser=False).tolist() == [0, 1, 3]
    # Higher-is-sparser: point 3 is both the sparsest and the best explained, so it beats every other.
    assert pareto_front(sparsity, explained, higher_is_sparser=True).tolist() == [3]
    assert pareto_front(sparsity, 1 - explained, higher_is_sparser=True).tolist() == [4, 2, 0]


def test_front_gap_of_constant_fronts_is_their_difference():
    a = (np.array([1.0, 10.0, 100.0]), np.array([0.8, 0.8, 0.8]))
    b = (np.array([2.0, 50.0, 500.0]), np.array([0.3, 0.3, 0.3]))
    assert front_gap(a, b, higher_is_sparser=False, log_scale=True) == pytest.approx(0.5)
    assert front_gap(b, a, higher_is_sparser=False, log_scale=True) == pytest.approx(-0.5)


def test_front_gap_step_functions_on_a_linear_grid():
    # On [0, 1]: front a reaches 1.0 from sparsity 0.5 on (0.0 before); b stays 0. Mean ≈ 0.5.
    a = (np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0]))
    b = (np.array([0.0, 1.0]), np.array([0.0, 0.0]))
    assert front_gap(a, b, higher_is_sparser=False, log_scale=False, n_grid=1001) == pytest.approx(0.5, abs=1e-3)
    # Hoyer-like axis (higher is sparser): a reaches 1.0 only at sparsity ≤ 0.25.
    a = (np.array([1.0, 0.25, 0.0]), np.array([0.0, 1.0, 1.0]))
    b = (np.array([1.0, 0.0]), np.array([0.0, 0.0]))
    assert front_gap(a, b, higher_is_sparser=True, log_scale=False, n_grid=1001) == pytest.approx(0.25, abs=1e-3)


def test_front_gap_without_overlap_is_nan():
    a = (np.array([1.0, 2.0]), np.array([0.5, 0.6]))
    b = (np.array([10.0, 20.0]), np.array([0.5, 0.6]))
    assert math.isnan(front_gap(a, b, higher_is_sparser=False, log_scale=True))
    # Zero sparsity cannot sit on a log axis: only (0, ·) points left means nothing to compare.
    assert math.isnan(front_gap((np.array([0.0]), np.array([0.0])), a, higher_is_sparser=False, log_scale=True))
