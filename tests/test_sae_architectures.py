"""BatchTopK, Matryoshka, JumpReLU and gated SAEs: every gradient against an independent dense reference in
float64, their training behaviour, and their configs' checks (SAELens parity: tests/test_sae_saelens.py)."""

import pytest
import torch

from randsae.errors import UserError
from randsae.sae import SAEConfig, TensorSource, TrainConfig, build_sae, train_sae
from randsae.sae.batchtopk import encoder_start, threshold_rate
from randsae.sae.jumprelu import jumprelu_ste, step_ste
from randsae.sae.trainer import SAETraining, train_step

N, D, M, K = 23, 6, 40, 3
WIDTHS = (4, 16, 40)


def sae64(cfg: SAEConfig, seed: int = 0):
    """An SAE in float64 with non-default biases (and thresholds), so that every gradient term shows."""
    sae = build_sae(cfg, seed).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name != "threshold":
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return sae


def batch(seed: int = 3) -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


def grads(sae, loss):
    sae.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}


def dense_batchtopk_code(sae, x):
    """Reference: the whole [n, m] latent matrix, kept at the batch's k·n largest ReLU pre-activations."""
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    keep = torch.zeros(pre.numel(), dtype=torch.bool)
    keep[pre.detach().flatten().topk(K * x.shape[0]).indices] = True
    return torch.where(keep.view_as(pre), pre, torch.zeros_like(pre))


@pytest.mark.parametrize("widths", [None, WIDTHS])
def test_batchtopk_and_matryoshka_match_dense_autograd(widths):
    """The sparse pair kernels give the dense formulas' loss and every weight's gradient (float64)."""
    arch = "batchtopk" if widths is None else "matryoshka_batchtopk"
    sae = sae64(SAEConfig(arch, D, M, k=K, matryoshka_widths=widths))
    x = batch()
    total_variance = (x - x.mean(0)).pow(2).sum()
    out = sae.loss(x, total_variance=total_variance)
    fast = grads(sae, out.loss)

    z = dense_batchtopk_code(sae, x)
    loss = 0.0
    for width in widths or (M,):
        prefix = z[:, :width] @ sae.W_dec[:width] + sae.b_dec
        loss = loss + (x - prefix).pow(2).sum() / total_variance
    reference = grads(sae, loss)
    assert torch.allclose(out.loss, loss)
    assert torch.allclose(out.fvu, (x - z @ sae.W_dec - sae.b_dec).pow(2).sum() / total_variance)
    assert torch.equal(out.fired, (z > 0).any(dim=0))
    assert set(fast) == set(reference) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    for name, grad in reference.items():
        assert torch.allclose(fast[name], grad), name


def test_batchtopk_keeps_k_per_token_on_average_and_learns_a_running_threshold():
    sae = sae64(SAEConfig("batchtopk", D, M, k=K))
    x = batch()
    z = dense_batchtopk_code(sae, x)
    per_token = (z > 0).sum(dim=1)
    assert per_token.sum() == K * N and per_token.min() != per_token.max(), "k·n in all, unevenly spread"
    smallest = z[z > 0].min()
    sae.loss(x)
    assert torch.allclose(sae.threshold, torch.full((M,), smallest.item(), dtype=torch.float64)), "starts at min"
    with torch.no_grad():
        sae.threshold.fill_(0.5)
    sae.loss(x)
    assert torch.allclose(sae.threshold, torch.full((M,), 0.99 * 0.5 + 0.01 * smallest.item(), dtype=torch.float64))
    sae.set_run_length(50)  # a run of 50 steps: the threshold's time constant is 5 steps
    with torch.no_grad():
        sae.threshold.fill_(0.5)
    sae.loss(x)
    assert torch.allclose(sae.threshold, torch.full((M,), 0.8 * 0.5 + 0.2 * smallest.item(), dtype=torch.float64))
    with torch.no_grad():
        sae.threshold.fill_(0.3)
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        assert torch.allclose(sae.encode(x), torch.where(pre > 0.3, pre, torch.zeros_like(pre))), "inference: θ"


@pytest.mark.parametrize("n_steps, rate", [(1, 1.0), (10, 1.0), (50, 0.2), (600, 1 / 60), (1000, 0.01), (10**5, 0.01)])
def test_threshold_rate_is_a_tenth_of_the_run_at_most_and_saelens_at_least(n_steps, rate):
    assert threshold_rate(n_steps) == pytest.approx(rate)


@pytest.mark.parametrize("n_steps, start", [(1, 0.3), (150, 0.3), (300, 0.3 * 3**-0.5), (600, 0.1), (10**6, 0.1)])
def test_the_encoder_start_is_geometric_in_the_steps_between_a_short_and_a_long_run(n_steps, start):
    assert encoder_start(n_steps, 0.3, 0.1) == pytest.approx(start)


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("own_start", [None, 0.05])
def test_the_trainer_starts_the_encoder_for_its_run_unless_the_run_sets_its_own(architecture, own_start):
    data = torch.randn(256, D, generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig(architecture, D, M, k=K, matryoshka_widths=(M // 4, M) if "matryoshka" in architecture else None)
    train = TrainConfig(batch_size=64, lr=1e-3, encoder_init_norm=own_start)
    long_run_start = 0.3 if "matryoshka" in architecture else 0.1  # Matryoshka keeps its start at every length
    for n_steps in (16, 1000):
        sae = SAETraining(cfg, train, seed=0, n_steps=n_steps, first_buffer=data, device="cpu").sae
        expected = own_start or encoder_start(n_steps, 0.3, long_run_start)
        norms = sae.W_enc.norm(dim=0)
        assert sae.encoder_init_norm == expected and torch.allclose(norms, torch.full_like(norms, expected))


def test_the_trainer_sets_the_threshold_rate_of_its_run():
    data = torch.randn(1024, D, generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig("batchtopk", D, M, k=K)
    result = train_sae(TensorSource(data), TrainConfig(batch_size=64, n_epochs=1, lr=1e-3), cfg, progress=False)
    assert result.sae.threshold_rate == threshold_rate(16) == 1 / 1.6


def test_batchtopk_auxk_trains_only_dead_latents():
    sae = sae64(SAEConfig("batchtopk", D, M, k=K))
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::4] = True
    out = sae.loss(batch(), dead)
    g = grads(sae, out.aux_loss)
    assert g["W_enc"][:, ~dead].abs().max() == 0 and g["W_enc"][:, dead].abs().max() > 0
    assert g["W_dec"][~dead].abs().max() == 0
    assert sae.loss(batch(), torch.zeros(M, dtype=torch.bool)).aux_loss is None


def straight_through_reference(pre, threshold, bandwidth):
    """JumpReLU and its L0 with the straight-through gradients, built from plain autograd: a ramp whose
    slope is the rectangle kernel carries θ's gradient, with zero value."""
    ramp = -((threshold - pre.detach()) / bandwidth + 0.5).clamp(0, 1)
    ste = ramp - ramp.detach()
    step = (pre > threshold).to(pre.dtype)
    return pre * step.detach() + threshold.detach() * ste, step.detach() + ste


def test_jumprelu_straight_through_gradients_match_reference():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(200, 7, generator=g, dtype=torch.float64, requires_grad=True)
    threshold = (torch.rand(7, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    weights = torch.randn(200, 7, generator=g, dtype=torch.float64)
    z_ref, step_ref = straight_through_reference(pre, threshold, 0.3)
    z, step = jumprelu_ste(pre, threshold, 0.3), step_ste(pre, threshold, 0.3)
    assert torch.equal(z, z_ref) and torch.equal(step, step_ref)
    for ours, ref in ((z, z_ref), (step, step_ref)):
        got = torch.autograd.grad((ours * weights).sum(), (pre, threshold), allow_unused=True, retain_graph=True)
        want = torch.autograd.grad((ref * weights).sum(), (pre, threshold), allow_unused=True, retain_graph=True)
        assert want[1].abs().max() > 0, "some pre-activations fall in the window"
        for a, b in zip(got, want, strict=True):
            assert (a is None and (b is None or b.abs().max() == 0)) or torch.allclose(a, b)


def test_jumprelu_straight_through_matches_saelens():
    jumprelu_sae = pytest.importorskip("sae_lens.saes.jumprelu_sae", reason="sae-lens is not installed")
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(50, 5, generator=g, dtype=torch.float64, requires_grad=True)
    threshold = (torch.rand(5, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    for ours, theirs in ((jumprelu_ste, jumprelu_sae.JumpReLU), (step_ste, jumprelu_sae.Step)):
        a = torch.autograd.grad(ours(pre, threshold, 0.2).sum(), threshold)[0]
        b = torch.autograd.grad(theirs.apply(pre, threshold, 0.2, False).sum(), threshold)[0]
        assert torch.allclose(a, b)


def test_jumprelu_loss_and_gradients_match_dense_reference():
    sae = sae64(SAEConfig("jumprelu", D, M, l0_coefficient=0.02, jumprelu_bandwidth=0.5))
    x = batch()
    sae.init_from_data(x)
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(M, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.4)
    out = sae.loss(x)
    fast = grads(sae, out.loss)

    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    z, step = straight_through_reference(pre, sae.threshold, sae.bandwidth)
    fvu = (x - z @ sae.W_dec - sae.b_dec).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    loss = fvu + 0.02 * step.sum(dim=1).mean()
    reference = grads(sae, loss)
    assert torch.allclose(out.loss, loss) and torch.allclose(out.fvu, fvu)
    assert reference["threshold"].abs().max() > 0
    for name, grad in reference.items():
        assert torch.allclose(fast[name], grad), name


def test_jumprelu_bandwidth_and_initial_threshold_follow_the_data_scale():
    sae = build_sae(SAEConfig("jumprelu", D, M, l0_coefficient=0.0, jumprelu_bandwidth=0.05), 0)
    x = batch().float() * 40
    sae.init_from_data(x)
    scale = x.norm(dim=1).mean().item() / D**0.5
    assert sae.bandwidth == pytest.approx(0.05 * scale) and torch.allclose(
        sae.threshold, torch.full((M,), 0.01 * scale)
    )
    with torch.no_grad():
        sae.threshold[0] = -1.0
    sae.loss(x)
    assert sae.threshold[0] == 0, "a negative threshold is projected back to 0"


def gated_reference_loss(p, x, frozen_W_dec, frozen_b_dec, l1):
    """The gated loss written out from the paper, the auxiliary term through a constant copy of the decoder."""
    pi = (x - p["b_dec"]) @ p["W_enc"]
    gate = pi + p["b_gate"]
    z = (gate > 0) * (pi * p["r_mag"].exp() + p["b_mag"]).relu()
    via_gate = gate.relu() @ frozen_W_dec + frozen_b_dec
    recon = z @ p["W_dec"] + p["b_dec"]
    return (recon - x).pow(2).mean() + l1 * gate.relu().mean() + (via_gate - x).pow(2).mean()


def test_gated_gradients_match_finite_differences():
    """The gated loss is smooth away from the gate's switching points: autograd against central differences
    of the written-out loss, whose auxiliary term sees the decoder as a constant."""
    sae = sae64(SAEConfig("gated", D, M, l1_coefficient=0.3))
    x = batch()
    out = sae.loss(x)
    fast = grads(sae, out.loss)
    p = {name: q.detach().clone() for name, q in sae.named_parameters()}
    frozen = (p["W_dec"].clone(), p["b_dec"].clone())
    assert torch.allclose(out.loss, gated_reference_loss(p, x, *frozen, 0.3))
    eps = 1e-6
    for name, tensor in p.items():
        numeric = torch.zeros_like(tensor)
        for i in range(tensor.numel()):
            flat = tensor.view(-1)
            flat[i] += eps
            up = gated_reference_loss(p, x, *frozen, 0.3)
            flat[i] -= 2 * eps
            down = gated_reference_loss(p, x, *frozen, 0.3)
            flat[i] += eps
            numeric.view(-1)[i] = (up - down) / (2 * eps)
        assert torch.allclose(fast[name], numeric, atol=1e-7), name


def test_gated_loss_terms():
    sae = sae64(SAEConfig("gated", D, M, l1_coefficient=0.3))
    x = batch()
    pi = (x - sae.b_dec) @ sae.W_enc
    gate = pi + sae.b_gate
    z = (gate > 0) * (pi * sae.r_mag.exp() + sae.b_mag).relu()
    via_gate = gate.relu() @ sae.W_dec + sae.b_dec
    expected = (z @ sae.W_dec + sae.b_dec - x).pow(2).mean() + 0.3 * gate.relu().mean() + (via_gate - x).pow(2).mean()
    out = sae.loss(x)
    assert torch.allclose(out.loss, expected) and torch.allclose(sae.encode(x), z)
    g = grads(sae, out.loss)
    assert set(g) == {"W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag"}, "no b_enc in the gated format"


@pytest.mark.parametrize(
    "cfg",
    [
        SAEConfig("batchtopk", 8, 32, k=3),
        SAEConfig("matryoshka_batchtopk", 8, 32, k=3, matryoshka_widths=(8, 32)),
        SAEConfig("jumprelu", 8, 32, l0_coefficient=1e-3, jumprelu_bandwidth=0.05),
        SAEConfig("gated", 8, 32, l1_coefficient=1e-3),
    ],
    ids=lambda cfg: cfg.architecture,
)
def test_trainer_trains_every_architecture(cfg):
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(32, 8, generator=g)
    codes = torch.rand(4096, 32, generator=g) * (torch.rand(4096, 32, generator=g) < 0.1)
    data = codes @ directions
    result = train_sae(
        TensorSource(data), TrainConfig(batch_size=256, n_epochs=4, lr=3e-3, log_points=8), cfg, progress=False
    )
    untrained = build_sae(cfg, seed=0)
    untrained.init_from_data(data)
    final = result.log.loss_curve[-1].fvu
    assert final < 0.6 * untrained.loss(data).fvu.item(), "the trained SAE's last FVU against its start's"


@pytest.mark.parametrize(
    "cfg, match",
    [
        (SAEConfig("batchtopk", D, M, k=M), "0 < k < d_sae"),
        (SAEConfig("batchtopk", D, M), "0 < k < d_sae"),
        (SAEConfig("matryoshka_batchtopk", D, M, k=K, matryoshka_widths=(4, 16)), "ending at d_sae"),
        (SAEConfig("matryoshka_batchtopk", D, M, k=K, matryoshka_widths=(16, 4, 40)), "increasing"),
        (SAEConfig("jumprelu", D, M, l0_coefficient=-1.0, jumprelu_bandwidth=0.1), "l0_coefficient"),
        (SAEConfig("jumprelu", D, M, l0_coefficient=0.1, jumprelu_bandwidth=0.0), "bandwidth"),
        (SAEConfig("gated", D, M), "l1_coefficient"),
    ],
)
def test_missing_or_bad_settings_are_user_errors(cfg, match):
    with pytest.raises(UserError, match=match):
        build_sae(cfg, seed=0)


@pytest.mark.parametrize("architecture", ["jumprelu", "batchtopk", "gated"])
def test_thresholded_inference_does_not_depend_on_the_batch(architecture):
    """Thresholds placed exactly on float32 pre-activations: a row encodes the same alone as in its batch,
    and every decision is the float64 one."""
    cfg = SAEConfig(
        architecture,
        64,
        256,
        **{
            "jumprelu": {"l0_coefficient": 0.0, "jumprelu_bandwidth": 0.05},
            "batchtopk": {"k": 4},
            "gated": {"l1_coefficient": 0.0},
        }[architecture],
    )
    sae = build_sae(cfg, seed=0)
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(1))
    bias = sae.b_gate if architecture == "gated" else sae.b_enc
    with torch.no_grad():
        bias.copy_(torch.randn(256, generator=torch.Generator().manual_seed(2)) * 0.1)
        pre = (x - sae.b_dec) @ sae.W_enc + bias
        if architecture == "gated":  # the gate's zero on row 7's pre-activations; every magnitude positive
            bias.sub_(pre[7])
            sae.b_mag.fill_(100.0)
        else:
            sae.threshold.copy_(pre[7].abs())
            bias.add_(pre[7].abs() - pre[7])  # row 7's pre-activations now equal θ up to rounding
    with torch.no_grad():
        whole = sae.encode(x)
        alone = torch.cat([sae.encode(row[None]) for row in x])
        threshold = torch.zeros(256) if architecture == "gated" else sae.threshold
        exact = (x.double() - sae.b_dec.double()) @ sae.W_enc.double() + bias.double()
    assert torch.equal(whole != 0, alone != 0)
    assert torch.equal(whole != 0, exact > threshold.double())


def test_a_jumprelu_sae_without_training_settings_encodes_but_does_not_train():
    """SAELens's JumpReLU folders carry no L0 price or bandwidth: such an SAE encodes, and training it is a
    one-line error before any step."""
    sae = build_sae(SAEConfig("jumprelu", D, M), seed=0)
    assert sae.encode(batch().float()).shape == (N, M)
    with pytest.raises(UserError, match="l0_coefficient and a jumprelu_bandwidth"):
        train_sae(TensorSource(torch.randn(512, D)), TrainConfig(batch_size=64), SAEConfig("jumprelu", D, M))


class _RecordingSGD(torch.optim.SGD):
    """Plain SGD that records the global gradient norm it is handed (after the trainer's clipping)."""

    def step(self, closure=None):
        self.seen = torch.cat([p.grad.flatten() for group in self.param_groups for p in group["params"]]).norm()
        return super().step(closure)


@pytest.mark.parametrize("architecture", ["relu_l1", "gated"])
def test_mean_unit_losses_are_clipped_in_saelens_units(architecture):
    """SAELens clips the ReLU-L1 and gated losses with the squared error summed over d_in: our mean-unit
    losses' clip is max_grad_norm / d_in, and a large batch's gradient is held to it."""
    d_in = 16
    sae = build_sae(SAEConfig(architecture, d_in, 32, l1_coefficient=1.0), seed=0)
    assert sae.gradient_clip(2.0) == 2.0 / d_in
    optimizer = _RecordingSGD(sae.parameters(), lr=0.0)
    train_step(sae, optimizer, 100 * torch.randn(64, d_in), TrainConfig(batch_size=64, max_grad_norm=2.0))
    assert optimizer.seen == pytest.approx(2.0 / d_in, rel=1e-4)


def test_k_sparse_losses_keep_the_plain_clip():
    """TopK and JumpReLU losses (not mean-unit) are clipped at max_grad_norm itself."""
    for cfg in (SAEConfig("topk", 8, 32, k=2), SAEConfig("jumprelu", 8, 32, l0_coefficient=1.0)):
        assert build_sae(cfg, seed=0).gradient_clip(2.0) == 2.0
