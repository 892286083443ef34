"""The Sharkey et al. generator, its Gaussian control and the unit-RMS scaling."""

import pytest
import torch

from randsae.toy.data import gaussian_control, generate_toy_data, unit_rms


def generate(seed=0, n_samples=20_000, n_features=512, n_dims=256, mean_active=5.0, decay=0.99):
    return generate_toy_data(n_samples, n_features, n_dims, mean_active, decay, torch.Generator().manual_seed(seed))


def test_mean_number_of_active_features_is_close_to_m():
    for mean_active in (5.0, 12.0):
        data = generate(mean_active=mean_active)
        active = (data.coefficients > 0).sum(dim=1).float()
        # Per-sample probabilities sum to m before clipping at 1, so the mean sits at or just under m.
        assert active.mean().item() == pytest.approx(mean_active, rel=0.05)


def test_samples_are_the_weighted_sum_of_unit_features():
    data = generate(n_samples=500)
    assert data.samples.shape == (500, 256) and data.features.shape == (512, 256)
    torch.testing.assert_close(data.features.norm(dim=1), torch.ones(512))
    torch.testing.assert_close(data.samples, data.coefficients @ data.features)
    active = data.coefficients[data.coefficients > 0]
    assert active.max() < 1.0 and active.min() > 0.0


def test_frequency_decays_with_feature_index():
    data = generate(n_samples=50_000)
    frequency = (data.coefficients > 0).float().mean(dim=0)
    quarter = len(frequency) // 4
    assert frequency[0] > frequency[quarter:].mean()
    assert frequency[:quarter].mean() > frequency[-quarter:].mean()
    # With the paper's unscaled covariance the decay is mild: every feature still fires regularly.
    assert frequency.min() > 0.001


def test_activations_are_correlated_across_features():
    """Firing is correlated (weakly, as in the paper): more than after shuffling each feature's column."""
    data = generate(n_samples=50_000, n_features=64, n_dims=32, mean_active=8.0)
    fires = (data.coefficients > 0).float()
    shuffled = fires.gather(0, torch.rand(fires.shape, generator=torch.Generator().manual_seed(1)).argsort(dim=0))
    off_diagonal = ~torch.eye(64, dtype=torch.bool)
    spread = torch.corrcoef(fires.T)[off_diagonal].std()
    independent_spread = torch.corrcoef(shuffled.T)[off_diagonal].std()
    assert spread > 2 * independent_spread


def test_same_seed_same_data_and_other_seed_other_data():
    a, b, c = generate(seed=3, n_samples=100), generate(seed=3, n_samples=100), generate(seed=4, n_samples=100)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)


def test_gaussian_control_matches_scalar_mean_and_std():
    data = generate(n_samples=5000)
    control = gaussian_control(data.samples, torch.Generator().manual_seed(1))
    assert control.shape == data.samples.shape
    assert control.mean().item() == pytest.approx(data.samples.mean().item(), abs=0.01 * data.samples.std().item())
    assert control.std().item() == pytest.approx(data.samples.std().item(), rel=0.01)
    # ...but it is dense: no planted sparse structure.
    assert (control == 0).float().mean() < 1e-4


def test_unit_rms_is_one_scalar_rescaling():
    x = torch.randn(100, 7) * 3.0 + 1.0
    scaled = unit_rms(x)
    assert scaled.pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    ratio = scaled / x
    torch.testing.assert_close(ratio, ratio[0, 0].expand_as(ratio))
