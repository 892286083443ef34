"""The stacked λ sweep: same result as training each ReluSAE alone, and the paper's known outcomes at small size."""

import pytest
import torch

from randsae.sae.base import SAEConfig
from randsae.sae.relu import ReluSAE
from randsae.seeds import derived_seed
from randsae.toy.data import gaussian_control, generate_toy_data, unit_rms
from randsae.toy.metrics import mmcs
from randsae.toy.sweep import train_relu_sweep


def train_alone(x, d_sae, l1, seed, epochs, batch_size, learning_rate):
    """The plain loop the stacked sweep must reproduce: one SAE, one Adam, the same batches."""
    sae = ReluSAE(
        SAEConfig("relu_l1", x.shape[1], d_sae, l1_coefficient=l1),
        generator=torch.Generator().manual_seed(derived_seed(seed, "sae_init")),
    )
    optimizer = torch.optim.Adam([sae.W_enc, sae.b_enc, sae.W_dec], lr=learning_rate)
    order = torch.Generator().manual_seed(derived_seed(seed, "batch_order"))
    for _ in range(epochs):
        permutation = torch.randperm(x.shape[0], generator=order)
        for step in range(x.shape[0] // batch_size):
            optimizer.zero_grad()
            sae.loss(x[permutation[step * batch_size : (step + 1) * batch_size]]).loss.backward()
            optimizer.step()
            sae.normalize_decoder()
    return sae


def test_stacked_sweep_equals_training_each_sae_alone():
    x = torch.relu(torch.randn(330, 12, generator=torch.Generator().manual_seed(0)))
    l1s = [0.01, 0.3, 3.0]
    stacked = train_relu_sweep(x, 24, l1s, seed=5, epochs=3, batch_size=64, learning_rate=1e-2)
    assert [sae.cfg.l1_coefficient for sae in stacked] == l1s
    for sae, l1 in zip(stacked, l1s, strict=True):
        alone = train_alone(x, 24, l1, seed=5, epochs=3, batch_size=64, learning_rate=1e-2)
        for name in ("W_enc", "b_enc", "W_dec"):
            torch.testing.assert_close(getattr(sae, name), getattr(alone, name), rtol=1e-4, atol=1e-5)
        assert not sae.b_dec.any()  # the paper's toy SAE has no decoder bias
    # λ matters: the sweep did not train one SAE three times.
    assert not torch.allclose(stacked[0].W_dec, stacked[2].W_dec)


def test_sweep_returns_unit_norm_decoders_and_seed_metadata():
    x = torch.randn(200, 6)
    saes = train_relu_sweep(
        x, 10, [0.1, 1.0], seed=2, epochs=1, batch_size=50, learning_rate=1e-3, metadata={"dataset_path": "toy:test"}
    )
    for sae in saes:
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(10))
        assert sae.cfg.metadata == {"dataset_path": "toy:test", "seed": 2}


@pytest.fixture
def one_thread():
    """Matrices this small gain nothing from a second thread, and on a busy machine threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_planted_features_are_recovered_and_the_gaussian_control_gives_chance(one_thread):
    """The known outcome at small size: MMCS near 1 on the toy data in the right λ range, chance on the control."""
    generator = torch.Generator().manual_seed(derived_seed(0, "toy_data"))
    toy = generate_toy_data(5000, 64, 32, 3.0, 0.99, generator)
    control = gaussian_control(toy.samples, generator)
    best = {}
    for name, samples in (("toy", toy.samples), ("control", control)):
        saes = train_relu_sweep(
            unit_rms(samples), 128, [3.0, 10.0], seed=0, epochs=30, batch_size=256, learning_rate=5e-3
        )
        best[name] = max(mmcs(toy.features, sae.W_dec).item() for sae in saes)
    # Chance: the best of 128 random unit vectors in 32 dimensions has cosine ≈ 0.45 with a given direction.
    chance = mmcs(toy.features, torch.randn(128, 32)).item()
    assert best["toy"] > 0.9
    assert best["control"] < chance + 0.1
