"""SAEs of other libraries: read SAELens, sparsify and dictionary_learning SAEs (and SAELens's pretrained
registry) into randsae's form, write randsae's SAEs for sparsify, and `compare` an imported SAE with SAEs
trained on random variants of its model (docs/interop.md)."""

from randsae.interop.imported import ImportedSAE, SAEOrigin
from randsae.interop.read import read_sae

__all__ = ["ImportedSAE", "SAEOrigin", "read_sae"]
