"""What every SAE architecture shares: its config, the encode/decode interface and the SAELens format.

An SAE folder is what SAELens, SAEBench and Neuronpedia read: `cfg.json` plus `sae_weights.safetensors`
holding `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]` and `b_dec [d_in]`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from randsae.atomic import save_safetensors_atomic, write_text_atomic
from randsae.errors import UserError
from randsae.run_dir import SAE_CONFIG_FILE as CONFIG_FILE
from randsae.run_dir import SAE_WEIGHTS_FILE as WEIGHTS_FILE

SAELENS_ARCHITECTURE = {
    "topk": "topk",
    "relu_l1": "standard",
    "gated": "gated",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
    "matryoshka_batchtopk": "jumprelu",
}
"""Our architecture names -> the inference architecture SAELens writes in cfg.json. SAELens saves a trained
BatchTopK or Matryoshka SAE as a JumpReLU one (its running threshold in every latent's `threshold`) and names
the training architecture in `metadata.training_architecture`; we do the same, and read that name back."""

SAELENS_INFERENCE = {"topk": "topk", "standard": "relu_l1", "gated": "gated", "jumprelu": "jumprelu"}
"""SAELens's inference architectures -> ours that encode the same way: what a SAELens folder loads as when it
does not name one of our training architectures."""


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Shape and sparsity of one SAE, plus where its activations came from (SAELens `metadata`)."""

    architecture: str
    """A registered name: `topk`, `batchtopk`, `matryoshka_batchtopk`, `jumprelu`, `gated` or `relu_l1`."""
    d_in: int
    d_sae: int
    k: int | None = None
    """Active latents per token: exactly (topk), or on average over a training batch (the BatchTopKs)."""
    l1_coefficient: float | None = None
    """L1 penalty (relu_l1, gated)."""
    l0_coefficient: float | None = None
    """L0 penalty, in FVU per active latent and token (jumprelu)."""
    jumprelu_bandwidth: float | None = None
    """Width of the straight-through estimator's window (jumprelu), for activations scaled to mean norm
    sqrt(d_in) as SAELens's defaults assume; the SAE rescales it to the data's norm."""
    matryoshka_widths: tuple[int, ...] | None = None
    """Strictly increasing prefix widths ending at d_sae, each with its own reconstruction loss (matryoshka)."""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    """model_name, hook_name, context_size, prepend_bos, dataset_path, variant, seed..."""

    def to_json(self) -> dict[str, Any]:
        """SAELens-compatible cfg.json (our own fields ride along: SAELens ignores the keys it does not know)."""
        cfg = dataclasses.asdict(self)
        saelens = SAELENS_ARCHITECTURE.get(self.architecture, self.architecture)
        if saelens != self.architecture and saelens in SAELENS_ARCHITECTURE:  # saved as another of ours
            cfg["metadata"] = {**self.metadata, "training_architecture": self.architecture}
        if self.matryoshka_widths is not None:
            cfg["matryoshka_widths"] = list(self.matryoshka_widths)
        cfg.update(
            architecture=saelens,
            dtype="float32",
            device="cpu",
            apply_b_dec_to_input=True,
            normalize_activations="none",
        )
        return cfg

    @classmethod
    def from_json(cls, cfg: dict[str, Any]) -> SAEConfig:
        """Ours or SAELens's cfg.json; a SAELens-trained BatchTopK keeps its training settings in
        `metadata.training_architecture_details`."""
        names = {f.name for f in dataclasses.fields(cls)}
        metadata = dict(cfg.get("metadata") or {})
        trained_as = metadata.pop("training_architecture", None)
        details = metadata.pop("training_architecture_details", None) or {}
        fields = {key: value for key, value in {**details, **cfg}.items() if key in names}
        fields["metadata"] = metadata
        saved_as = fields.get("architecture", "")
        fields["architecture"] = (
            trained_as if trained_as in SAELENS_ARCHITECTURE else SAELENS_INFERENCE.get(saved_as, saved_as)
        )
        if fields.get("matryoshka_widths") is not None:
            fields["matryoshka_widths"] = tuple(fields["matryoshka_widths"])
        return cls(**fields)


class LossOutput(NamedTuple):
    """One training step's loss and what the trainer tracks about it."""

    loss: Tensor
    """Scalar to minimize (includes any sparsity term, not `aux_loss`)."""
    fvu: Tensor
    """Scalar fraction of variance unexplained on this batch (about the batch mean)."""
    fired: Tensor
    """Bool [d_sae]: latents active on at least one token of the batch (for dead-latent tracking)."""
    aux_loss: Tensor | None = None
    """Unweighted auxiliary loss (TopK's AuxK on dead latents), or None; the trainer adds it times its
    coefficient. Not included in `loss`."""


class SparseLatents(NamedTuple):
    """The non-zero latent activations of a batch [n, d_in], in COO form, in row order."""

    rows: Tensor
    """int64 [nnz]: row of the batch."""
    latents: Tensor
    """int64 [nnz]."""
    values: Tensor
    """[nnz], non-zero."""

    def to(self, device: str | torch.device) -> SparseLatents:
        return SparseLatents(self.rows.to(device), self.latents.to(device), self.values.to(device))


class SparseAutoencoder(nn.Module):
    """Base class: subclasses set `architecture` and implement `encode` and `loss`.

    Default initialization (drawn from torch's global generator: seed it, or build through
    `randsae.sae.build_sae`): random unit-norm decoder rows, encoder = decoder transposed times
    `encoder_init_norm`, zero biases.
    """

    architecture: ClassVar[str]
    encoder_init_norm: float = 3**-0.5
    """Norm of each latent's encoder column at initialization (its decoder row has norm 1). The default is the
    reference TopK trainers' (Gao et al.'s code, EleutherAI sparsify), which JumpReLU and gated keep: torch's
    default Linear init, U(±1/sqrt(d_in)), whose rows have norm 1/sqrt(3). Adam's steps do not scale with the
    weights, so a smaller encoder turns its directions faster: a unit-norm one cost 0.03 of explained variance
    on the default run (benchmarks/README.md)."""
    decoder_lr_scale: float = 1.0
    """The decoder's learning rate as a multiple of the run's (`parameter_groups`). Its rows are held at unit
    norm, so its per-coordinate Adam steps turn it more slowly than the smaller encoder turns."""
    mean_over_inputs: ClassVar[bool] = False
    """Whether the loss averages its squared error over d_in where SAELens sums it (`gradient_clip`)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        W_dec = torch.randn(cfg.d_sae, cfg.d_in)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_enc = nn.Parameter((W_dec.T * self.encoder_init_norm).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam's parameter groups at learning rate `lr`: the decoder at `decoder_lr_scale` times it."""
        rest = [parameter for name, parameter in self.named_parameters() if name != "W_dec"]
        return [{"params": rest, "lr": lr}, {"params": [self.W_dec], "lr": lr * self.decoder_lr_scale}]

    @torch.no_grad()
    def set_start(self, encoder_init_norm: float | None, decoder_lr_scale: float | None) -> None:
        """Replace the architecture's start by a run's own (`TrainConfig`'s; None keeps the architecture's): the
        freshly initialized encoder rescaled to columns of norm `encoder_init_norm`, the decoder's lr multiple."""
        if encoder_init_norm is not None:
            self.W_enc.mul_(encoder_init_norm / self.encoder_init_norm)
            self.encoder_init_norm = encoder_init_norm
        if decoder_lr_scale is not None:
            self.decoder_lr_scale = decoder_lr_scale

    def set_run_length(self, n_steps: int) -> None:
        """Called by the trainer before a run of `n_steps` optimizer steps, and before `set_start` so that a
        run's own start wins, for settings that scale with the run's length (none by default; BatchTopK's
        encoder start and threshold rate)."""

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Called by the trainer once with its first buffer [n, d_in]: `b_dec` starts at the data mean."""
        self.b_dec.copy_(x.mean(dim=0))

    def encode(self, x: Tensor) -> Tensor:
        """[n, d_in] -> dense latent activations [n, d_sae], zero where a latent is inactive."""
        raise NotImplementedError

    def loss(self, x: Tensor, dead_mask: Tensor | None = None, total_variance: Tensor | None = None) -> LossOutput:
        """Training loss on a batch [n, d_in]; `dead_mask` [d_sae] marks latents the trainer saw die;
        `total_variance` normalizes the FVU in place of x's own (data-parallel: this rank's share of the global
        batch's, see `randsae.sae.distributed.total_variance`)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """[n, d_sae] -> reconstruction [n, d_in]."""
        return z @ self.W_dec + self.b_dec

    def encode_sparse(self, x: Tensor) -> tuple[SparseLatents, Tensor]:
        """The non-zero latents of x [n, d_in] and its reconstruction [n, d_in], from one encode: what a pass
        over many activations keeps. Architectures with a sparse encoder (TopK) override it, so that no
        dense [n, d_sae] tensor is built."""
        z = self.encode(x)
        rows, latents = z.nonzero(as_tuple=True)
        return SparseLatents(rows, latents, z[rows, latents]), self.decode(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def gradient_clip(self, max_grad_norm: float) -> float:
        """The gradient-norm bound of this SAE's loss for `train.max_grad_norm`, which is stated in the units
        of the loss SAELens clips for the architecture. A loss that averages its squared error over d_in
        (`mean_over_inputs`) is d_in times smaller than SAELens's summed one, so its bound is too: at the plain
        bound the clip never acted on ReLU-L1, which then reached 0.06 less explained variance than SAELens's
        at the same L0 (benchmarks/README.md)."""
        return max_grad_norm / self.cfg.d_in if self.mean_over_inputs else max_grad_norm

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Give every decoder row unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out of each decoder row's gradient its component along the (unit) row itself.

        With unit rows renormalized after each step, that component would only change the norm."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad.sub_(parallel * self.W_dec)

    def save(self, folder: str | os.PathLike) -> None:
        """Write the SAELens folder atomically (temporary files renamed into place)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().contiguous().cpu() for name, p in self.state_dict().items()}
        save_safetensors_atomic(folder / WEIGHTS_FILE, tensors)
        write_text_atomic(folder / CONFIG_FILE, json.dumps(self.cfg.to_json(), indent=2))


_ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {}


def register(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
    """Class decorator: make an architecture loadable by name."""
    _ARCHITECTURES[cls.architecture] = cls
    return cls


_RETRAIN = "Rerun `randsae run` with the same --out: it retrains a damaged SAE"


def load_sae(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE saved by `SparseAutoencoder.save` (or by SAELens, for the architectures we have)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise UserError(
            f"no SAE at {folder} (needs {CONFIG_FILE} and {WEIGHTS_FILE})",
            "Point to a folder written by `randsae run` or SAELens",
        )
    cfg = read_sae_config(folder)
    sae = architecture_class(cfg.architecture)(cfg)
    try:
        sae.load_state_dict(load_file(folder / WEIGHTS_FILE))
    except Exception as error:  # safetensors raises its own error types; a wrong shape is a RuntimeError
        raise UserError(f"SAE weights {folder / WEIGHTS_FILE} are damaged ({error})", _RETRAIN) from None
    return sae.to(device)


def read_sae_config(folder: Path) -> SAEConfig:
    """The SAE's cfg.json, without its weights."""
    try:
        return SAEConfig.from_json(json.loads((folder / CONFIG_FILE).read_text()))
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(f"SAE config {folder / CONFIG_FILE} is damaged ({error})", _RETRAIN) from None


def architecture_names() -> tuple[str, ...]:
    """The registered architectures (importing `randsae.sae` registers them all)."""
    return tuple(sorted(_ARCHITECTURES))


def architecture_class(name: str) -> type[SparseAutoencoder]:
    """The registered class for an architecture name; UserError naming the known ones otherwise."""
    if name not in _ARCHITECTURES:
        raise UserError(f"unknown SAE architecture {name!r}", f"Use one of {sorted(_ARCHITECTURES)}")
    return _ARCHITECTURES[name]


def start_recipe(cfg: SAEConfig) -> list[float]:
    """The architecture's encoder start and decoder lr multiple: a training checkpoint written by code with
    other values must not be resumed, so its fingerprint holds them."""
    cls = architecture_class(cfg.architecture)
    return [cls.encoder_init_norm, cls.decoder_lr_scale]
