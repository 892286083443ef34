"""SAE architectures (TopK, BatchTopK, Matryoshka, JumpReLU, gated, ReLU-L1), sparse kernels, the trainer,
and SAELens save/load.

Importing this package registers every architecture, so `load_sae` can build any saved SAE.
"""

from randsae.sae.base import (
    LossOutput,
    SAEConfig,
    SparseAutoencoder,
    SparseLatents,
    architecture_class,
    load_sae,
    register,
)
from randsae.sae.batchtopk import BatchTopKSAE
from randsae.sae.gated import GatedSAE
from randsae.sae.jumprelu import JumpReLUSAE
from randsae.sae.kernels import TopKOutput
from randsae.sae.matryoshka import MatryoshkaSAE
from randsae.sae.relu import ReluSAE
from randsae.sae.topk import TopKSAE
from randsae.sae.trainer import (
    ActivationSource,
    LogPoint,
    TensorSource,
    TrainConfig,
    TrainLog,
    TrainResult,
    build_sae,
    default_lr,
    train_sae,
)

__all__ = [
    "ActivationSource",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "MatryoshkaSAE",
    "LogPoint",
    "LossOutput",
    "ReluSAE",
    "SAEConfig",
    "SparseAutoencoder",
    "SparseLatents",
    "TensorSource",
    "TopKOutput",
    "TopKSAE",
    "TrainConfig",
    "TrainLog",
    "TrainResult",
    "architecture_class",
    "build_sae",
    "default_lr",
    "load_sae",
    "register",
    "train_sae",
]
