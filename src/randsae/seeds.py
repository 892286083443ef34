"""Independent random streams from one configured seed."""

from __future__ import annotations

import zlib

import numpy as np


def derived_seed(seed: int, stream: str, index: int | None = None) -> int:
    """The seed for one use of a configured seed (`stream`: "toy_data", "sae_init", ...), and for the
    `index`-th draw of that use when one use draws many times (the control's noise, once per batch).

    Two streams seeded alike would draw the same numbers: an SAE initialized from seed 0 would start
    with its decoder rows equal to features drawn from seed 0. Mixing the stream name into the seed keeps
    every use independent. The index is numpy's spawn key (how SeedSequence.spawn makes independent
    children), not part of the name: names are hashed to 32 bits, so among many "name/index" strings two
    would eventually share a seed, and an index appended to the entropy would let index 0 repeat the
    unindexed seed (SeedSequence pads its entropy with zeros).
    """
    key = () if index is None else (index,)
    entropy = [seed, zlib.crc32(stream.encode())]
    return int(np.random.SeedSequence(entropy, spawn_key=key).generate_state(1, dtype=np.uint64)[0])
