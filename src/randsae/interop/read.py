"""`read_sae`: any SAE a user has, its format told by the files it holds, read into randsae's form."""

from __future__ import annotations

from pathlib import Path

from randsae.errors import UserError
from randsae.interop.dictionary_learning import WEIGHTS_FILE as DL_WEIGHTS
from randsae.interop.dictionary_learning import is_dictionary_learning_folder, read_dictionary_learning
from randsae.interop.imported import ImportedSAE
from randsae.interop.saelens import CONFIG_FILE as SAELENS_CONFIG
from randsae.interop.saelens import PRETRAINED_PREFIX, is_saelens_folder, read_saelens_folder, read_saelens_pretrained
from randsae.interop.saelens import WEIGHTS_FILE as SAELENS_WEIGHTS
from randsae.interop.sparsify import WEIGHTS_FILE as SPARSIFY_WEIGHTS
from randsae.interop.sparsify import is_sparsify_folder, read_sparsify, sparsify_hookpoints


def read_sae(source: str | Path) -> ImportedSAE:
    """The SAE at `source`, a folder (SAELens, a sparsify hookpoint folder, dictionary_learning) or
    `saelens:RELEASE:SAE_ID`, and its origin; a UserError naming the fix for anything else."""
    text = str(source)
    if text.startswith(PRETRAINED_PREFIX):
        return read_saelens_pretrained(text)
    folder = Path(source)
    if not folder.is_dir():
        raise UserError(
            f"--sae {folder} is not a folder",
            "Pass an SAE folder (SAELens, sparsify hookpoint, dictionary_learning) or saelens:RELEASE:SAE_ID",
        )
    if is_saelens_folder(folder):
        return read_saelens_folder(folder)
    if is_sparsify_folder(folder):
        return read_sparsify(folder)
    if is_dictionary_learning_folder(folder):
        return read_dictionary_learning(folder)
    hookpoints = sparsify_hookpoints(folder)
    if hookpoints:
        raise UserError(
            f"{folder} is a sparsify checkpoint with an SAE per hookpoint ({', '.join(hookpoints)})",
            f"Pass one hookpoint's folder, e.g. --sae {folder / hookpoints[0]}",
        )
    raise UserError(
        f"{folder} holds no SAE randsae can read",
        f"Pass a SAELens folder ({SAELENS_CONFIG} + {SAELENS_WEIGHTS}), a sparsify hookpoint folder "
        f"(cfg.json + {SPARSIFY_WEIGHTS}), a dictionary_learning folder ({DL_WEIGHTS} + config.json) "
        "or saelens:RELEASE:SAE_ID",
    )
