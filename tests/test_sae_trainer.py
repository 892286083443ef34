"""Trainer: schedule, shuffled bounded-memory batches with BOS skipping, determinism, and that it learns."""

import dataclasses
import json
import math

import pytest
import torch

from randsae.errors import UserError
from randsae.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, default_lr, load_sae, train_sae
from randsae.sae.trainer import (
    CurvePoint,
    SAETraining,
    build_sae,
    convergence,
    curve_steps,
    dead_threshold,
    explained_variance,
    lr_factor,
    shuffled_buffers,
    usable_rows,
)

D = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These SAEs are tiny: a second thread only adds synchronization (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sparse_activations(n_tokens: int, seed: int = 0) -> torch.Tensor:
    """Tokens made of 3 out of 64 ground-truth directions plus a little noise and an offset [n, D]."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(64, D, generator=g), dim=1)
    codes = torch.zeros(n_tokens, 64).scatter(
        1, torch.randint(0, 64, (n_tokens, 3), generator=g), torch.rand(n_tokens, 3, generator=g) * 2 + 0.5
    )
    return codes @ directions + 0.02 * torch.randn(n_tokens, D, generator=g) + 3.0


def test_default_lr_follows_the_scaling_law():
    assert default_lr(2**14) == pytest.approx(2e-4)
    assert default_lr(2**16) == pytest.approx(1e-4)
    assert default_lr(576 * 64) == pytest.approx(2e-4 / math.sqrt(576 * 64 / 16384))


def test_lr_factor_warms_up_then_decays_to_zero():
    factors = [lr_factor(step, 4, 14) for step in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[9] == 0.5 and factors[13] == pytest.approx(0.1)
    assert [lr_factor(step, 0, 4) for step in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_usable_rows_counts_one_bos_per_window():
    assert usable_rows(1000, TrainConfig(context_size=100)) == 990
    assert usable_rows(1050, TrainConfig(context_size=100)) == 1039
    assert usable_rows(1000, TrainConfig(context_size=100, skip_bos=False)) == 1000
    assert usable_rows(1000, TrainConfig()) == 1000


def test_shuffled_buffers_skip_bos_cover_each_epoch_and_stay_bounded():
    n, context = 1000, 10
    rows = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    cfg = TrainConfig(batch_size=32, buffer_tokens=200, context_size=context)
    stream = shuffled_buffers(TensorSource(rows), cfg, torch.Generator().manual_seed(0))
    served = []
    while sum(len(b) for b in served) < 2 * usable_rows(n, cfg):
        served.append(next(stream))
    assert all(len(b) % 32 == 0 and len(b) <= 200 * 1.25 for b in served)
    ids = torch.cat(served)[:, 0].long()
    first_epoch = ids[: usable_rows(n, cfg) // 32 * 32]
    assert (ids % context != 0).all(), "BOS rows never served"
    assert len(set(first_epoch.tolist())) == len(first_epoch), "no row twice within an epoch"
    assert not torch.equal(first_epoch[:200], first_epoch[:200].sort().values), "shuffled"
    again = next(shuffled_buffers(TensorSource(rows), cfg, torch.Generator().manual_seed(0)))
    other = next(shuffled_buffers(TensorSource(rows), cfg, torch.Generator().manual_seed(1)))
    assert torch.equal(again, served[0]) and not torch.equal(other, served[0])


@pytest.fixture(scope="module")
def trained():
    source = TensorSource(sparse_activations(24_000))
    cfg = TrainConfig(batch_size=256, n_epochs=2, buffer_tokens=4096, warmup_steps=20, lr=3e-3, context_size=64)
    return source, cfg, train_sae(source, cfg, SAEConfig("topk", D, 128, k=4), seed=0, progress=False)


def test_training_learns_a_sparse_code(trained):
    source, cfg, result = trained
    log = result.log
    assert log.steps == 2 * usable_rows(source.n_tokens, cfg) // 256 and log.tokens == log.steps * 256
    assert log.final_fvu < log.loss_curve[0].fvu / 1.5, "training improves on the first step"
    assert log.final_fvu < 0.2, "3-sparse data is well reconstructed by a k=4 SAE (the mean alone: 1.0)"
    assert log.warmup_steps == 18, "capped at 10% of the steps"
    assert log.loss_curve[-1].step == log.steps and log.loss_curve[-1].lr == pytest.approx(3e-3 / (log.steps - 18))
    assert 0 <= log.dead_fraction < 0.5 and log.tokens_per_s > 0
    assert torch.allclose(result.sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)
    x = source.activations[:2000]
    fvu = ((x - result.sae(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 0.2


def test_curve_steps_are_evenly_spaced_and_include_three_quarters():
    assert curve_steps(64, 4) == {16, 32, 48, 64}
    assert curve_steps(10, 4) == {3, 5, 8, 10}  # ceil(i * 10 / 4); 75%: ceil(7.5) = 8
    assert curve_steps(10, 2) == {5, 8, 10}  # 75% added
    assert curve_steps(3, 16) == {1, 2, 3}
    assert curve_steps(64, 0) == frozenset()


def test_convergence_compares_the_end_with_three_quarters():
    curve = [CurvePoint(4, 40, 0.5), CurvePoint(6, 60, 0.792), CurvePoint(8, 80, 0.8)]
    change, converged = convergence(curve, 8, threshold=0.02)
    assert change == pytest.approx(0.008 / 0.8) and converged
    assert convergence(curve, 8, threshold=0.005) == (pytest.approx(0.01), False)
    falling = [CurvePoint(6, 60, 0.5), CurvePoint(8, 80, 0.4)]
    assert convergence(falling, 8, threshold=0.02) == (pytest.approx(-0.25), False)
    assert convergence(curve[:2], 8, 0.02) == (None, None), "no end point"
    assert convergence([CurvePoint(3, 3, 0.5)], 3, 0.02) == (None, None), "3 steps have no last quarter"
    assert convergence([], 8, 0.02) == (None, None)


@pytest.mark.parametrize("field, value", [("curve_points", -1), ("curve_tokens", 0), ("converged_below", 0.0)])
def test_curve_settings_are_checked(field, value):
    with pytest.raises(UserError, match=f"train.{field}"):
        TrainConfig(**{field: value})
    TrainConfig(curve_points=0)  # no curve is allowed


def test_explained_variance_is_pooled_about_the_mean():
    sae = build_sae(SAEConfig("topk", 2, 4, k=1), seed=0)
    with torch.no_grad():  # x̂ = b_dec = (1, 1) for every row: the decoder's rows scaled to 0
        sae.W_dec.zero_()
        sae.b_dec.fill_(1.0)
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])  # mean (1, 2), Σ‖x - μ‖² = 4 * 5 = 20
    # Σ‖x - x̂‖² = (1 + 1) + (1 + 1) + (1 + 9) + (1 + 9) = 24: EV = 1 - 24 / 20
    assert explained_variance(sae, x, chunk_rows=3) == pytest.approx(-0.2)


def test_heldout_curve_tracks_the_sae_on_heldout_rows():
    data = sparse_activations(8192)
    heldout = sparse_activations(1000, seed=7)
    cfg = TrainConfig(batch_size=256, warmup_steps=4, lr=3e-3, curve_points=4, converged_below=0.5)
    result = train_sae(TensorSource(data), cfg, SAEConfig("topk", D, 64, k=4), progress=False, heldout=heldout)
    log = result.log
    assert [point.step for point in log.heldout_curve] == [8, 16, 24, 32] and log.steps == 32
    assert [point.tokens for point in log.heldout_curve] == [2048, 4096, 6144, 8192]
    assert log.heldout_curve[-1].explained_variance == pytest.approx(explained_variance(result.sae, heldout))
    assert log.heldout_curve[0].explained_variance < log.heldout_curve[-1].explained_variance, "it learns"
    ev = {point.step: point.explained_variance for point in log.heldout_curve}
    assert log.ev_change_last_quarter == pytest.approx((ev[32] - ev[24]) / abs(ev[32]))
    assert log.converged == (abs(log.ev_change_last_quarter) < 0.5)
    saved = result.log.to_json()
    assert saved["heldout_curve"][-1] == {"step": 32, "tokens": 8192, "explained_variance": ev[32]}
    without = train_sae(TensorSource(data), cfg, SAEConfig("topk", D, 64, k=4), progress=False)
    assert without.log.heldout_curve == () and without.log.converged is None
    assert torch.equal(without.sae.W_enc, result.sae.W_enc), "measuring the curve changes nothing in training"


def test_b_dec_starts_at_the_mean_of_the_first_buffer():
    source = TensorSource(sparse_activations(4096))
    cfg = TrainConfig(batch_size=256, lr=1e-12, buffer_tokens=2048)
    result = train_sae(source, cfg, SAEConfig("topk", D, 64, k=4), seed=5, progress=False)
    first = next(shuffled_buffers(source, cfg, torch.Generator().manual_seed(5)))
    assert torch.allclose(result.sae.b_dec, first.mean(0), atol=1e-5)


def test_same_seed_same_sae_other_seed_other_sae(trained):
    source, cfg, result = trained
    again = train_sae(source, cfg, SAEConfig("topk", D, 128, k=4), seed=0, progress=False)
    other = train_sae(source, cfg, SAEConfig("topk", D, 128, k=4), seed=1, progress=False)
    for name, tensor in result.sae.state_dict().items():
        assert torch.equal(tensor, again.sae.state_dict()[name]), name
    assert not torch.equal(result.sae.W_dec, other.sae.W_dec)


def test_auxk_acts_only_once_latents_count_as_dead():
    source = TensorSource(sparse_activations(8192, seed=2))
    sae_cfg = SAEConfig("topk", D, 512, k=4)
    cfg = TrainConfig(batch_size=256, warmup_steps=4, lr=3e-3, dead_tokens_threshold=1024)
    plain = train_sae(source, cfg, sae_cfg, progress=False)
    auxk = train_sae(source, dataclasses.replace(cfg, auxk_coefficient=1 / 32), sae_cfg, progress=False)
    # A whole training's tokens: no latent has gone that long without firing before the last step.
    never_dead = dataclasses.replace(cfg, auxk_coefficient=1 / 32, dead_tokens_threshold=10**6, dead_tokens_fraction=1)
    never = train_sae(source, never_dead, sae_cfg, progress=False)
    assert torch.equal(never.sae.W_enc, plain.sae.W_enc), "no dead latent: AuxK adds nothing"
    assert not torch.equal(auxk.sae.W_enc, plain.sae.W_enc)
    assert auxk.log.final_fvu < auxk.log.loss_curve[0].fvu


def test_dead_threshold_is_a_share_of_the_training_capped_at_10m_tokens():
    cfg = TrainConfig()
    assert cfg.dead_tokens_fraction == 0.1 and cfg.dead_tokens_threshold == 10_000_000
    assert dead_threshold(cfg, 131_072) == 13_108  # the default run: ceil(13,107.2)
    assert dead_threshold(cfg, 100_000_000) == 10_000_000  # the paper's 100M tokens: Gao et al.'s 10M
    assert dead_threshold(cfg, 10**10) == 10_000_000  # capped
    assert dead_threshold(dataclasses.replace(cfg, dead_tokens_fraction=1.0), 4096) == 4096
    assert dead_threshold(dataclasses.replace(cfg, dead_tokens_fraction=1e-9), 4096) == 1


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_dead_tokens_fraction_outside_0_1_is_a_user_error(fraction):
    with pytest.raises(UserError, match=r"train.dead_tokens_fraction = .* is invalid"):
        TrainConfig(dead_tokens_fraction=fraction)


@pytest.mark.parametrize(
    "sae_cfg",
    [
        SAEConfig("topk", D, 64, k=4),
        SAEConfig("batchtopk", D, 64, k=4),
        SAEConfig("jumprelu", D, 64, l0_coefficient=1e-3, jumprelu_bandwidth=0.05),
        SAEConfig("gated", D, 64, l1_coefficient=1.0),
        SAEConfig("relu_l1", D, 64, l1_coefficient=1.0),
    ],
    ids=lambda cfg: cfg.architecture,
)
def test_decoder_trains_at_its_multiple_of_the_scheduled_lr(sae_cfg):
    """Every parameter is in one Adam group; the decoder's lr stays `decoder_lr_scale` times the others' as the
    schedule warms up and decays."""
    x = sparse_activations(2048)
    training = SAETraining(sae_cfg, TrainConfig(batch_size=256, warmup_steps=2, lr=3e-3), 0, 40, x, "cpu")
    rest, decoder = training.optimizer.param_groups
    assert [id(p) for p in decoder["params"]] == [id(training.sae.W_dec)]
    grouped = [id(p) for p in rest["params"] + decoder["params"]]
    assert sorted(grouped) == sorted(id(p) for p in training.sae.parameters())
    for step, batch in enumerate(x.split(256)[:5]):
        factor = lr_factor(step + 1, 2, 40)
        training.train_on(batch)
        assert rest["lr"] == pytest.approx(3e-3 * factor)
        assert decoder["lr"] == pytest.approx(3e-3 * factor * training.sae.decoder_lr_scale)


def test_auxk_switches_on_in_a_short_run_with_the_default_dead_threshold():
    """32 steps of 256 tokens (8,192, far below 10M): latents that stop firing count as dead after 820 tokens,
    the AuxK loss is positive and the dead latents' encoder columns get a gradient from it. With the reference
    trainers' start (TopK's own leaves about 90 dead here, more than 256 tokens' top k_aux always reach)."""
    x = sparse_activations(8192, seed=2)
    cfg = TrainConfig(
        batch_size=256, warmup_steps=4, lr=3e-3, auxk_coefficient=1 / 32, encoder_init_norm=3**-0.5, decoder_lr_scale=1
    )
    sae_cfg = SAEConfig("topk", D, 512, k=4)
    training = SAETraining(sae_cfg, cfg, seed=0, n_steps=32, first_buffer=x, device="cpu")
    assert training.dead_after == 820
    seen = []
    loss = training.sae.loss

    def recording_loss(batch, dead_mask=None, total_variance=None):
        out = loss(batch, dead_mask, total_variance)
        if out.aux_loss is not None:
            grad = torch.autograd.grad(out.aux_loss, training.sae.W_enc, retain_graph=True)[0]
            dead_columns = grad[:, dead_mask].abs().sum(0)
            seen.append((out.aux_loss.item(), int(dead_mask.sum()), int((dead_columns > 0).sum())))
        return out

    training.sae.loss = recording_loss
    for batch in x.split(256):
        training.train_on(batch)
    assert seen, "some latents counted as dead during the run"
    assert all(aux > 0 and n_dead > 0 and n_graded == n_dead for aux, n_dead, n_graded in seen)


def test_bf16_selection_trains_as_well_and_saves_an_exact_sae(trained):
    source, cfg, result = trained
    fast = train_sae(
        source,
        dataclasses.replace(cfg, topk_selection_dtype="bfloat16"),
        SAEConfig("topk", D, 128, k=4),
        seed=0,
        progress=False,
    )
    assert fast.log.final_fvu < result.log.final_fvu + 0.03
    assert fast.sae.selection_dtype is None
    with pytest.raises(UserError, match="TopK"):
        train_sae(
            source,
            dataclasses.replace(cfg, topk_selection_dtype="bfloat16"),
            SAEConfig("relu_l1", D, 64, l1_coefficient=1e-3),
            progress=False,
        )


class InterruptedSource(TensorSource):
    """Raises once, partway through its first pass, as a killed run would stop."""

    def __init__(self, activations, fail_after_chunks):
        super().__init__(activations)
        object.__setattr__(self, "fail_after_chunks", fail_after_chunks)

    def iter_chunks(self, rows):
        for i, chunk in enumerate(super().iter_chunks(rows)):
            if i == self.fail_after_chunks:
                object.__setattr__(self, "fail_after_chunks", None)
                raise KeyboardInterrupt
            yield chunk


def test_interrupted_training_resumes_to_the_same_sae(tmp_path):
    data = sparse_activations(6000)
    cfg = TrainConfig(batch_size=256, n_epochs=2, buffer_tokens=1024, warmup_steps=4, checkpoint_every_s=0.0)
    sae_cfg = SAEConfig("topk", D, 64, k=4)
    heldout = sparse_activations(500, seed=1)
    uninterrupted = train_sae(TensorSource(data), cfg, sae_cfg, seed=3, progress=False, heldout=heldout)
    source = InterruptedSource(data, fail_after_chunks=9)
    checkpoint = tmp_path / "ckpt" / "train.pt"
    with pytest.raises(KeyboardInterrupt):
        train_sae(source, cfg, sae_cfg, seed=3, progress=False, checkpoint=checkpoint, heldout=heldout)
    state = torch.load(checkpoint, weights_only=True)
    assert checkpoint.is_file() and 0 < state["step"] < uninterrupted.log.steps
    assert 0 < len(state["heldout_curve"]) < len(uninterrupted.log.heldout_curve), "the curve so far is saved"
    resumed = train_sae(source, cfg, sae_cfg, seed=3, progress=False, checkpoint=checkpoint, heldout=heldout)
    for name, tensor in uninterrupted.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], tensor), name
    assert resumed.log.loss_curve == uninterrupted.log.loss_curve
    assert resumed.log.heldout_curve == uninterrupted.log.heldout_curve
    assert not checkpoint.exists(), "removed once training finished"


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "jumprelu", "relu_l1"])
def test_a_run_sets_its_own_start(architecture):
    """TrainConfig's encoder_init_norm and decoder_lr_scale replace the architecture's: the same encoder
    directions at that norm, the decoder's peak lr at that multiple of the run's."""
    x = sparse_activations(2048)
    settings = {"k": 4} if "topk" in architecture else {"l0_coefficient": 1e-3, "jumprelu_bandwidth": 0.05}
    settings = {"l1_coefficient": 1e-3} if architecture == "relu_l1" else settings
    sae_cfg = SAEConfig(architecture, D, 64, **settings)
    cfg = TrainConfig(batch_size=256, lr=1e-3)
    own = SAETraining(sae_cfg, cfg, seed=0, n_steps=8, first_buffer=x, device="cpu")
    changed = dataclasses.replace(cfg, encoder_init_norm=0.05, decoder_lr_scale=3.0)
    chosen = SAETraining(sae_cfg, changed, seed=0, n_steps=8, first_buffer=x, device="cpu")
    norms = chosen.sae.W_enc.norm(dim=0)
    assert torch.allclose(norms, torch.full_like(norms, 0.05))
    own_norm = own.sae.encoder_init_norm
    assert torch.allclose(chosen.sae.W_enc * own_norm / 0.05, own.sae.W_enc, atol=1e-6)
    assert [group["initial_lr"] for group in chosen.optimizer.param_groups] == [1e-3, 3e-3]
    assert (chosen.sae.encoder_init_norm, chosen.sae.decoder_lr_scale) == (0.05, 3.0)


@pytest.mark.parametrize("name", ["encoder_init_norm", "decoder_lr_scale"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_a_start_that_is_not_positive_is_refused(name, value):
    with pytest.raises(UserError, match=f"train.{name} = {value} is invalid"):
        TrainConfig(**{name: value})


@pytest.mark.parametrize("attribute, other", [("encoder_init_norm", 3**-0.5), ("decoder_lr_scale", 1.0)])
def test_a_checkpoint_of_another_start_recipe_is_not_resumed(tmp_path, monkeypatch, attribute, other):
    """A checkpoint written by code with another encoder start or decoder lr starts over rather than mixing."""
    data = sparse_activations(6000)
    cfg = TrainConfig(batch_size=256, n_epochs=2, buffer_tokens=1024, warmup_steps=4, checkpoint_every_s=0.0)
    sae_cfg = SAEConfig("topk", D, 64, k=4)
    fresh = train_sae(TensorSource(data), cfg, sae_cfg, seed=3, progress=False)
    checkpoint = tmp_path / "train.pt"
    monkeypatch.setattr(TopKSAE, attribute, other)
    with pytest.raises(KeyboardInterrupt):
        train_sae(
            InterruptedSource(data, fail_after_chunks=9), cfg, sae_cfg, seed=3, progress=False, checkpoint=checkpoint
        )
    assert checkpoint.is_file()
    monkeypatch.undo()
    again = train_sae(TensorSource(data), cfg, sae_cfg, seed=3, progress=False, checkpoint=checkpoint)
    for name, tensor in fresh.sae.state_dict().items():
        assert torch.equal(again.sae.state_dict()[name], tensor), name
    assert not checkpoint.exists(), "removed once training finished"


def test_relu_l1_trains_through_the_same_trainer():
    source = TensorSource(sparse_activations(8192))
    cfg = TrainConfig(batch_size=256, n_epochs=2, warmup_steps=10, lr=3e-3)
    result = train_sae(source, cfg, SAEConfig("relu_l1", D, 64, l1_coefficient=1e-3), seed=0, progress=False)
    assert result.log.final_fvu < 0.5 * result.log.loss_curve[0].fvu


def test_save_writes_saelens_folder_and_training_log(trained, tmp_path):
    _, cfg, result = trained
    result.save(tmp_path / "sae")
    log = json.loads((tmp_path / "sae" / "training.json").read_text())
    assert log["steps"] == result.log.steps and log["config"]["batch_size"] == cfg.batch_size
    assert len(log["loss_curve"]) == len(result.log.loss_curve)
    assert (log["encoder_init_norm"], log["decoder_lr_scale"]) == (TopKSAE.encoder_init_norm, TopKSAE.decoder_lr_scale)
    assert torch.equal(load_sae(tmp_path / "sae").W_enc, result.sae.W_enc)
    assert not list((tmp_path / "sae").glob("*.tmp"))


@pytest.mark.parametrize(
    "cfg, sae_cfg, match",
    [
        (TrainConfig(batch_size=512), SAEConfig("topk", D, 64, k=4), "less than one batch"),
        (TrainConfig(batch_size=64), SAEConfig("topk", D + 1, 64, k=4), "d_in"),
        (TrainConfig(batch_size=64), SAEConfig("mystery", D, 64), "architecture"),
    ],
)
def test_bad_settings_are_user_errors(cfg, sae_cfg, match):
    with pytest.raises(UserError, match=match):
        train_sae(TensorSource(sparse_activations(300)), cfg, sae_cfg, progress=False)
