"""Single-token share, positional R^2 and context dependence: known cases and independent references;
then how the per-latent arrays become an SAE's values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from randsae.analysis.codes import SparseCodes, between_group_share, row_layout
from randsae.analysis.config import AnalysisConfig
from randsae.analysis.context import context_dependence, firing_rate_bin, standardized_weights
from randsae.analysis.measure import LatentMeasures, context_samples, latent_samples
from randsae.analysis.positional import position_bin, positional_r2
from randsae.analysis.single_token import top_token_share
from randsae.run_dir import SAEKey


def codes_from_dense(acts: np.ndarray) -> SparseCodes:
    rows, latents = np.nonzero(acts)
    return SparseCodes(
        torch.from_numpy(rows),
        torch.from_numpy(latents),
        torch.from_numpy(acts[rows, latents]).float(),
        acts.shape[0],
        acts.shape[1],
    )


def layout_of(n_seq: int, context: int, vocab: int, seed: int, window_tokens: int = 8):
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(1, vocab, size=(n_seq, context)))
    return row_layout(ids, max_tokens=n_seq * context, window_tokens=window_tokens)


def sparse_random_acts(n_rows: int, d_sae: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    acts = rng.exponential(size=(n_rows, d_sae)) * (rng.random((n_rows, d_sae)) < density)
    return acts.astype(np.float32).astype(np.float64)


# ----- single-token share -------------------------------------------------------------------------------


def reference_top_token_share(acts: np.ndarray, window: np.ndarray, token: np.ndarray, top: int) -> np.ndarray:
    share = np.full(acts.shape[1], np.nan)
    for j in range(acts.shape[1]):
        a = acts[:, j]
        if not (a > 0).any():
            continue
        windows = np.unique(window)
        window_max = np.array([a[window == w].max() for w in windows])
        chosen = windows[np.argsort(-window_max, kind="stable")[:top]]
        chosen = chosen[window_max[np.searchsorted(windows, chosen)] > 0]
        in_top = np.isin(window, chosen)
        mass = np.bincount(token[in_top], a[in_top])
        share[j] = mass.max() / mass.sum()
    return share


def test_latent_on_one_token_is_single_token_and_dead_latent_is_nan():
    layout = layout_of(n_seq=6, context=17, vocab=9, seed=0)
    token = layout.token.numpy()
    acts = np.zeros((token.size, 3))
    acts[:, 0] = np.where(token == 5, 1.0 + np.arange(token.size) % 3, 0.0)  # only token 5
    acts[:, 1] = np.where(np.isin(token, [3, 4]), 1.0, 0.0)  # tokens 3 and 4 alike
    result = top_token_share(codes_from_dense(acts), layout.window, layout.token, top_windows=1000)
    assert result.share[0] == pytest.approx(1.0)
    assert int(result.top_token_id[0]) == 5
    n3, n4 = (token == 3).sum(), (token == 4).sum()
    assert result.share[1] == pytest.approx(max(n3, n4) / (n3 + n4))
    assert int(result.top_token_id[1]) == (3 if n3 >= n4 else 4)
    assert np.isnan(float(result.share[2])) and int(result.top_token_id[2]) == -1


def test_only_top_windows_count():
    layout = layout_of(n_seq=4, context=17, vocab=9, seed=1, window_tokens=17)  # one window per sequence
    token = layout.token.numpy()
    acts = np.zeros((token.size, 1))
    strong = layout.sequence.numpy() == 2
    acts[strong & (token == token[strong][0]), 0] = 10.0  # the top window: one token
    acts[~strong, 0] = 0.5  # weaker windows: every token
    top1 = top_token_share(codes_from_dense(acts), layout.window, layout.token, top_windows=1)
    all_windows = top_token_share(codes_from_dense(acts), layout.window, layout.token, top_windows=100)
    mass = np.bincount(token, acts[:, 0])
    assert float(top1.share[0]) == pytest.approx(1.0)
    assert float(all_windows.share[0]) == pytest.approx(mass.max() / mass.sum())
    assert mass.max() / mass.sum() < 0.9


@pytest.mark.parametrize("top", [1, 3, 50])
def test_top_token_share_matches_reference(top: int):
    layout = layout_of(n_seq=10, context=33, vocab=12, seed=2)
    acts = sparse_random_acts(layout.token.numel(), 40, density=0.05, seed=3)
    result = top_token_share(codes_from_dense(acts), layout.window, layout.token, top)
    expected = reference_top_token_share(acts, layout.window.numpy(), layout.token.numpy(), top)
    np.testing.assert_allclose(result.share.numpy(), expected, rtol=1e-6, equal_nan=True)


# ----- positional R^2 -----------------------------------------------------------------------------------


def reference_group_r2(a: np.ndarray, group: np.ndarray) -> float:
    """Adjusted R^2 of least squares on one-hot group indicators."""
    onehot = (group[:, None] == np.unique(group)[None, :]).astype(float)
    coef, *_ = np.linalg.lstsq(onehot, a, rcond=None)
    residual = a - onehot @ coef
    n, g = onehot.shape
    return 1.0 - (residual @ residual / (n - g)) / ((a - a.mean()) @ (a - a.mean()) / (n - 1))


def test_latent_that_is_a_function_of_position_has_r2_one():
    layout = layout_of(n_seq=8, context=17, vocab=9, seed=4)
    position = layout.position.numpy()
    acts = np.stack([np.sqrt(position), (position % 4 == 1) * 2.0, np.zeros_like(position)], 1).astype(float)
    r2 = positional_r2(codes_from_dense(acts), layout.position, layout.context_size, n_bins=64).numpy()
    np.testing.assert_allclose(r2[:2], 1.0, atol=1e-9)
    assert np.isnan(r2[2])


def test_positional_r2_matches_least_squares_with_bins():
    layout = layout_of(n_seq=12, context=65, vocab=20, seed=5)
    acts = sparse_random_acts(layout.token.numel(), 15, density=0.1, seed=6)
    acts[:, 0] += (layout.position.numpy() < 10) * 1.5  # some positional signal
    bins = position_bin(layout.position, layout.context_size, 8).numpy()
    assert sorted(np.unique(bins)) == list(range(8))
    r2 = positional_r2(codes_from_dense(acts), layout.position, layout.context_size, n_bins=8).numpy()
    expected = [reference_group_r2(acts[:, j], bins) for j in range(acts.shape[1])]
    np.testing.assert_allclose(r2, expected, rtol=1e-6, atol=1e-9)
    assert r2[0] > 0.3 > r2[1:].max()
    assert abs(np.mean(r2[1:])) < 0.02  # chance-adjusted: unrelated latents score about 0


def test_between_group_share_counts_inactive_rows_as_zero():
    # one latent, 3 groups of 2 rows; active only in group 0 with values 1 and 3 -> means (2, 0, 0)
    share = between_group_share(
        torch.tensor([0, 0]), torch.tensor([1.0, 3.0]), torch.tensor([0, 0]), torch.tensor([2, 2, 2]), d_sae=1
    )
    a = np.array([1.0, 3.0, 0, 0, 0, 0])
    assert float(share[0]) == pytest.approx(reference_group_r2(a, np.array([0, 0, 1, 1, 2, 2])))


# ----- context dependence -------------------------------------------------------------------------------


def reference_context_dependence(a: np.ndarray, token: np.ndarray, min_count: int) -> float:
    counts = np.bincount(token)
    frequent = counts[token] >= min_count
    a, token = a[frequent], token[frequent]
    groups = np.unique(token)
    within = sum(((a[token == t] - a[token == t].mean()) ** 2).sum() for t in groups)
    return (within / (a.size - groups.size)) / (((a - a.mean()) ** 2).sum() / (a.size - 1))


def test_token_lookup_latent_has_no_context_dependence_and_contextual_latent_has_some():
    layout = layout_of(n_seq=30, context=33, vocab=8, seed=7)
    token = layout.token.numpy()
    previous = np.roll(token, 1)
    acts = np.stack(
        [
            np.where(token == 3, 2.0, 0.0) + np.where(token == 5, 0.5, 0.0),  # pure function of the token
            np.where((token == 3) & (previous % 2 == 0), 2.0, 0.0),  # token 3, only in some contexts
            np.zeros(token.size),  # dead
        ],
        1,
    )
    top = top_token_share(codes_from_dense(acts), layout.window, layout.token, top_windows=1000).top_token_id
    cd = context_dependence(codes_from_dense(acts), layout.token, top, min_token_count=20).numpy()
    assert cd[0] == pytest.approx(0.0, abs=1e-9)
    assert cd[1] == pytest.approx(reference_context_dependence(acts[:, 1], token, 20))
    assert 0.2 < cd[1] < 1.0
    assert np.isnan(cd[2])


def test_context_dependence_matches_reference_and_skips_rare_top_tokens():
    layout = layout_of(n_seq=20, context=33, vocab=60, seed=8)
    token = layout.token.numpy()
    acts = sparse_random_acts(token.size, 30, density=0.08, seed=9)
    rare = np.bincount(token).argmin()
    acts[:, 0] = np.where(token == rare, 5.0, 0.0)
    codes = codes_from_dense(acts)
    top = top_token_share(codes, layout.window, layout.token, top_windows=1000).top_token_id
    cd = context_dependence(codes, layout.token, top, min_token_count=10).numpy()
    counts = np.bincount(token, minlength=60)
    assert np.isnan(cd[0]) and counts[rare] < 10
    for j in range(1, 30):
        if counts[int(top[j])] >= 10:
            assert cd[j] == pytest.approx(reference_context_dependence(acts[:, j], token, 10), rel=1e-6)
        else:
            assert np.isnan(cd[j])
    assert np.isfinite(cd[1:]).sum() > 10


# ----- from per-latent arrays to the SAE's values ------------------------------------------------------


def test_latent_metrics_cover_only_latents_active_often_enough():
    latents = LatentMeasures(
        firing_count=np.array([0, 2, 50, 80]),
        top_token_id=np.array([-1, 4, 5, 6]),
        top_token_share=np.array([np.nan, 1.0, 0.5, 0.95]),
        positional_r2=np.array([np.nan, 0.9, 0.1, 0.7]),
        context_dependence=np.array([np.nan, np.nan, 0.3, np.nan]),
    )
    strict = latent_samples(latents, AnalysisConfig(min_activations=10, positional_threshold=0.5))
    assert strict["single_token_fraction"].value() == pytest.approx(0.5)  # latents 2 and 3
    assert strict["positional_fraction"].value() == pytest.approx(0.5)
    assert strict["mean_positional_r2"].value() == pytest.approx(0.4)
    loose = latent_samples(latents, AnalysisConfig(min_activations=1))
    assert loose["single_token_fraction"].value() == pytest.approx(2 / 3)  # latent 1, seen twice, counts
    assert loose["mean_top_token_share"].n_units == 3
    assert loose["mean_top_token_share"].frequency.tolist() == [2, 50, 80]  # the pairing key


def test_firing_rate_bins_are_half_decades():
    counts = np.array([0, 9, 10, 31, 32, 99, 100, 316, 317, 999, 1000, 3162, 3163, 9999, 10_000, 100_000])
    assert firing_rate_bin(counts, 100_000).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    return float((values * weights).sum() / weights.sum())


def test_context_dependence_is_standardized_to_a_common_firing_rate_distribution():
    # SAE a: three latents in bin 1 (CD 0.2), one in bin 3 (0.8), one alone in bin 4 (0.9);
    # SAE b: one in bin 1 (0.2), three in bin 3 (0.8). Plain means: a (0.2*3 + 0.8 + 0.9)/5 = 0.46,
    # b 0.65. Bin 4 is left out (b has no latent there); the shares over bins 1 and 3 are (3/4, 1/4) and
    # (1/4, 3/4), whose average (1/2, 1/2) weights both: 0.5 * 0.2 + 0.5 * 0.8 = 0.5 for each.
    values = {"a": np.array([0.2, 0.2, 0.2, 0.8, 0.9]), "b": np.array([0.2, 0.8, 0.8, 0.8]), "none": np.zeros(0)}
    bins = {"a": np.array([1, 1, 1, 3, 4]), "b": np.array([1, 3, 3, 3]), "none": np.zeros(0, dtype=np.int64)}
    weighted = {
        key: (values[key][kept], weights) for key, (kept, weights) in standardized_weights(values, bins).items()
    }
    assert weighted_mean(*weighted["a"]) == pytest.approx(0.5) and weighted_mean(*weighted["b"]) == pytest.approx(0.5)
    np.testing.assert_allclose(weighted["a"][1], [0.5 / 0.75] * 3 + [0.5 / 0.25])  # w_b / share_b
    assert weighted["b"][0].size == 4 and weighted["none"][0].size == 0
    assert values["a"].mean() == pytest.approx(0.46) and values["b"].mean() == pytest.approx(0.65)
    kept, weights = standardized_weights({"a": values["a"]}, {"a": bins["a"]})["a"]  # one SAE: its plain mean
    assert weighted_mean(values["a"][kept], weights) == pytest.approx(values["a"].mean())
    disjoint = standardized_weights({"a": values["a"], "c": np.array([0.5])}, {"a": bins["a"], "c": np.array([0])})
    assert not disjoint["a"][0].any()  # no bin in common: no value


def test_context_samples_standardize_each_layer_over_its_measured_latents():
    def measures(firing_count: list[int], cd: list[float]) -> LatentMeasures:
        n = len(cd)
        return LatentMeasures(np.array(firing_count), np.zeros(n, int), np.ones(n), np.zeros(n), np.array(cd))

    latents = {
        SAEKey("trained", 0): measures([20, 20, 20, 5000, 5], [0.2, 0.2, 0.2, 0.8, 0.1]),  # the last is not measured
        SAEKey("step0", 0): measures([20, 5000, 5000, 5000, 30], [0.2, 0.8, 0.8, 0.8, np.nan]),  # the last: rare token
        SAEKey("step0", 1): measures([20, 5000], [0.4, 0.6]),  # another layer: standardized on its own
    }
    n_rows = dict.fromkeys(latents, 100_000)  # 20 rows: bin 1, 5000 rows: bin 5
    samples = context_samples(latents, n_rows, AnalysisConfig(min_activations=10))
    trained, step0 = samples[SAEKey("trained", 0)], samples[SAEKey("step0", 0)]
    assert trained.value() == pytest.approx(0.5) and step0.value() == pytest.approx(0.5)
    assert trained.n_units == 4 and samples[SAEKey("step0", 1)].value() == pytest.approx(0.5)
    assert trained.frequency.tolist() == [20, 20, 20, 5000]  # the latents' firing counts pair them
