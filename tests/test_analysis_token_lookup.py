"""Token-lookup baseline and the explained variances beside it, against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from randsae.analysis.codes import row_layout
from randsae.analysis.measure import encode_heldout, token_samples
from randsae.analysis.token_lookup import TokenErrors, VarianceAccumulator, fit_token_lookup
from randsae.sae.base import SAEConfig
from randsae.sae.relu import ReluSAE
from randsae.sae.topk import TopKSAE

CONTEXT, VOCAB, D = 17, 11, 12


def token_windows(n_seq: int, seed: int) -> torch.Tensor:
    ids = torch.from_numpy(np.random.default_rng(seed).integers(1, VOCAB, size=(n_seq, CONTEXT)))
    ids[:, 0] = 0
    return ids.int()


def chunks(x: torch.Tensor, rows: int = 50):
    return (x[i : i + rows] for i in range(0, x.shape[0], rows))


def explained_variances(errors: TokenErrors) -> dict[str, float]:
    return {name: sample.value() for name, sample in token_samples(errors).items()}


def numpy_lookup(x: np.ndarray, token: np.ndarray, not_bos: np.ndarray) -> dict[int, np.ndarray]:
    """Plain per-token means."""
    return {t: x[not_bos & (token == t)].mean(0) for t in np.unique(token[not_bos])}


def numpy_shrunk_lookup(
    x: np.ndarray, token: np.ndarray, not_bos: np.ndarray
) -> tuple[dict[int, np.ndarray], np.ndarray, float, float]:
    """Reference of the shrunk lookup from the definitions: (means, global mean, sigma^2, lambda)."""
    x, token = x[not_bos].astype(np.float64), token[not_bos]
    plain = numpy_lookup(x, token, np.ones(token.size, dtype=bool))
    n = {t: int((token == t).sum()) for t in plain}
    n_rows, n_tokens, d = x.shape[0], len(plain), x.shape[1]
    g = x.mean(0)
    ss_within = sum(((x[token == t] - plain[t]) ** 2).sum() for t in plain)
    ss_between = sum(n[t] * ((plain[t] - g) ** 2).sum() for t in plain)
    sigma2 = ss_within / ((n_rows - n_tokens) * d)
    tau2 = max(0.0, ss_between / d - (n_tokens - 1) * sigma2) / (n_rows - sum(v * v for v in n.values()) / n_rows)
    lam = sigma2 / tau2 if tau2 > 0 else np.inf
    return {t: g + n[t] / (n[t] + lam) * (plain[t] - g) for t in plain}, g, sigma2, lam


def test_pure_token_lookup_data_has_lookup_ev_one_and_unseen_tokens_get_the_train_mean():
    table = torch.randn(VOCAB, D) * 3
    train_ids, heldout_ids = token_windows(40, seed=0), token_windows(10, seed=1)
    train_ids[train_ids == 7] = 6  # token 7 never appears in train
    train_x = table[train_ids.reshape(-1).long()]
    train_x[::CONTEXT] = 100.0  # BOS rows: outliers, must be skipped
    lookup = fit_token_lookup(chunks(train_x), train_ids)
    seen = torch.tensor([1, 2, 3])
    torch.testing.assert_close(lookup.predict(seen), table[seen])
    train_tokens = train_ids[:, 1:].reshape(-1).long()
    torch.testing.assert_close(lookup.predict(torch.tensor([7])), table[train_tokens].mean(0, keepdim=True))

    heldout_ids[heldout_ids == 7] = 8
    heldout_x = table[heldout_ids.reshape(-1).long()]
    layout = row_layout(heldout_ids, max_tokens=10**6, window_tokens=8)
    sae = ReluSAE(SAEConfig("relu_l1", D, 24, l1_coefficient=0.0))
    _, errors = encode_heldout(sae, chunks(heldout_x), layout, lookup)
    ev = explained_variances(errors)
    assert ev["lookup_ev"] == pytest.approx(1.0, abs=1e-6)
    assert float(errors.lookup_error.max()) < 1e-8


@pytest.mark.parametrize("architecture", ["topk", "relu_l1"])
def test_explained_variances_match_numpy(architecture: str):
    torch.manual_seed(0)
    train_ids, heldout_ids = token_windows(30, seed=2), token_windows(12, seed=3)
    table = torch.randn(VOCAB, D)
    train_x = table[train_ids.reshape(-1).long()] + 0.5 * torch.randn(train_ids.numel(), D) + 2.0
    heldout_x = table[heldout_ids.reshape(-1).long()] + 0.5 * torch.randn(heldout_ids.numel(), D) + 2.0
    cfg = SAEConfig(
        architecture,
        D,
        32,
        k=4 if architecture == "topk" else None,
        l1_coefficient=None if architecture == "topk" else 0.0,
    )
    sae = (TopKSAE if architecture == "topk" else ReluSAE)(cfg)
    with torch.no_grad():
        sae.b_dec.fill_(2.0)
    lookup = fit_token_lookup(chunks(train_x), train_ids)
    layout = row_layout(heldout_ids, max_tokens=8 * CONTEXT, window_tokens=8)  # first 8 sequences only
    codes, errors = encode_heldout(sae, chunks(heldout_x, rows=23), layout, lookup)

    # numpy reference on the same rows: sequences 0..7, BOS dropped
    rows = layout.cache_row.numpy()
    x = heldout_x.numpy()[rows].astype(np.float64)
    with torch.no_grad():
        x_hat = sae(heldout_x[rows]).double().numpy()
    flat_train = train_ids.reshape(-1).numpy()
    not_bos = np.arange(flat_train.size) % CONTEXT != 0
    means, _, sigma2, lam = numpy_shrunk_lookup(train_x.numpy(), flat_train, not_bos)
    count = {t: (flat_train[not_bos] == t).sum() for t in means}
    predicted = np.stack([means[t] for t in layout.token.numpy()])
    correction = np.array([D * sigma2 / (count[t] + lam) for t in layout.token.numpy()])
    total = ((x - x.mean(0)) ** 2).sum()
    sae_error, lookup_error = ((x - x_hat) ** 2).sum(), ((x - predicted) ** 2).sum() - correction.sum()
    ev = explained_variances(errors)
    assert ev["sae_ev"] == pytest.approx(1 - sae_error / total, rel=1e-5)
    assert ev["lookup_ev"] == pytest.approx(1 - lookup_error / total, rel=1e-5)
    assert ev["sae_ev_beyond_lookup"] == pytest.approx(1 - sae_error / lookup_error, rel=1e-5)
    per_sequence = np.bincount(layout.sequence.numpy(), ((x - x.mean(0)) ** 2).sum(1))
    np.testing.assert_allclose(errors.sequence_variance.numpy(), per_sequence, rtol=1e-6)

    with torch.no_grad():
        dense = sae.encode(heldout_x[rows]).numpy()
    assert codes.n_rows == rows.size and codes.value.numel() == np.count_nonzero(dense)
    np.testing.assert_allclose(dense[codes.row.numpy(), codes.latent.numpy()], codes.value.numpy(), rtol=1e-6)


def test_sae_worse_than_lookup_gives_negative_ev_beyond_lookup():
    errors = TokenErrors(
        torch.tensor([0, 0, 1]),
        torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64),
        torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
        torch.tensor([10.0, 10.0], dtype=torch.float64),
    )
    ev = explained_variances(errors)
    assert ev["sae_ev_beyond_lookup"] == pytest.approx(1 - 12 / 6)
    assert ev["lookup_ev"] == pytest.approx(1 - 6 / 20) and ev["sae_ev"] == pytest.approx(1 - 12 / 20)


def test_sequence_variance_stays_accurate_when_the_mean_dwarfs_the_spread():
    rng = np.random.default_rng(5)
    x = (1e4 + rng.normal(size=(300, D))).astype(np.float32)
    sequence = np.repeat(np.arange(6), 50)
    accumulator = VarianceAccumulator(6, center=torch.from_numpy(x[:100].mean(0)))
    for start in range(0, 300, 70):
        accumulator.add(torch.from_numpy(x[start : start + 70]), torch.from_numpy(sequence[start : start + 70]))
    x64 = x.astype(np.float64)
    expected = np.bincount(sequence, ((x64 - x64.mean(0)) ** 2).sum(1))
    np.testing.assert_allclose(accumulator.sequence_variance().numpy(), expected, rtol=1e-5)


def test_lookup_fitted_on_a_prefix_reads_only_those_rows():
    ids = token_windows(20, seed=6)
    x = torch.randn(VOCAB, D)[ids.reshape(-1).long()] + torch.randn(ids.numel(), D)
    prefix = fit_token_lookup(chunks(x, rows=45), ids[:7])
    alone = fit_token_lookup(chunks(x[: 7 * CONTEXT], rows=45), ids[:7])
    torch.testing.assert_close(prefix.means, alone.means)
    torch.testing.assert_close(prefix.token_ids, alone.token_ids)
    flat = ids[:7].reshape(-1).long().numpy()
    means, *_ = numpy_shrunk_lookup(x[: 7 * CONTEXT].numpy(), flat, np.arange(flat.size) % CONTEXT != 0)
    torch.testing.assert_close(
        prefix.predict(torch.tensor([3]))[0].double(), torch.from_numpy(means[3]), rtol=1e-5, atol=1e-6
    )


def test_shrinkage_on_a_hand_computed_case():
    # d = 1; token 1: rows 0, 2 (mean 1); token 2: rows 8, 10 (mean 9); token 3: row 5. Global mean 5.
    # SS_within = 1 + 1 + 1 + 1 = 4 over N - K = 2: sigma^2 = 2. SS_between = 2*16 + 2*16 + 0 = 64,
    # N - sum n_t^2 / N = 5 - 9/5 = 3.2: tau^2 = (64 - 2 * 2) / 3.2 = 18.75, lambda = 2 / 18.75.
    ids = torch.tensor([[0, 1, 1, 2, 2, 3]])
    x = torch.tensor([[99.0], [0.0], [2.0], [8.0], [10.0], [5.0]])  # the BOS row is skipped
    lookup = fit_token_lookup(iter([x]), ids)
    lam = 2 / 18.75
    assert lookup.within_variance == pytest.approx(2.0) and lookup.shrinkage == pytest.approx(lam)
    expected = [5 + 2 / (2 + lam) * (1 - 5), 5 + 2 / (2 + lam) * (9 - 5), 5.0, 5.0]  # token 4: unseen
    torch.testing.assert_close(lookup.predict(torch.tensor([1, 2, 3, 4]))[:, 0], torch.tensor(expected))
    corrections = [2 / (2 + lam), 2 / (2 + lam), 2 / (1 + lam), 2 / lam]  # d sigma^2 / (n_t + lambda)
    torch.testing.assert_close(
        lookup.estimation_error(torch.tensor([1, 2, 3, 4])), torch.tensor(corrections, dtype=torch.float64)
    )


@pytest.mark.parametrize("between_share", [0.3, 0.8])
def test_lookup_ev_matches_the_population_value_on_zipf_tokens(between_share: float):
    """32k train rows over a 49k-token Zipf vocabulary, as on the default run: each token a true mean
    (between-token variance `between_share`) plus noise. The population lookup EV is known in closed form;
    the corrected estimate lands within 0.03, the shrunk means alone and plain means do not."""
    vocab, dim, context, rng = 49_152, 16, 129, np.random.default_rng(0)
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    true_means = rng.normal(size=(vocab, dim)) * np.sqrt(between_share)
    noise = 1.0 - between_share
    spread = (p * ((true_means - p @ true_means) ** 2).sum(1)).sum()
    truth = 1.0 - noise * dim / (noise * dim + spread)

    def windows(n_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = rng.choice(vocab, size=(n_seq, context), p=p)
        ids[:, 0] = 0
        x = true_means[ids.reshape(-1)] + rng.normal(size=(ids.size, dim)) * np.sqrt(noise)
        return torch.from_numpy(ids), torch.from_numpy(x).float()

    train_ids, train_x = windows(256)  # 32768 non-BOS rows
    heldout_ids, heldout_x = windows(512)
    lookup = fit_token_lookup(chunks(train_x, rows=4096), train_ids)
    layout = row_layout(heldout_ids, max_tokens=10**7, window_tokens=32)
    sae = ReluSAE(SAEConfig("relu_l1", dim, 8, l1_coefficient=0.0))
    _, errors = encode_heldout(sae, chunks(heldout_x, rows=4096), layout, lookup)
    corrected = explained_variances(errors)["lookup_ev"]

    x = heldout_x[layout.cache_row].double().numpy()
    total = ((x - x.mean(0)) ** 2).sum()
    shrunk = 1 - ((x - lookup.predict(layout.token).double().numpy()) ** 2).sum() / total
    flat = train_ids.reshape(-1).numpy()
    plain_means = numpy_lookup(train_x.numpy(), flat, np.arange(flat.size) % context != 0)
    train_mean = train_x.numpy()[np.arange(flat.size) % context != 0].mean(0)
    plain = np.stack([plain_means.get(t, train_mean) for t in layout.token.tolist()])
    plain_ev = 1 - ((x - plain) ** 2).sum() / total
    assert abs(corrected - truth) < 0.03
    assert truth - shrunk > 0.05 and truth - plain_ev > truth - shrunk
