"""Independent random streams from one configured seed."""

from __future__ import annotations

import zlib

import numpy as np


def derived_seed(seed: int, stream: str) -> int:
    """The seed for one use of a configured seed (`stream`: "toy_data", "sae_init", ...).

    Two streams seeded alike would draw the same numbers: an SAE initialized from seed 0 would start
    with its decoder rows equal to features drawn from seed 0. Mixing the stream name into the seed keeps
    every use independent.
    """
    return int(np.random.SeedSequence([seed, zlib.crc32(stream.encode())]).generate_state(1, dtype=np.uint64)[0])
