"""randsae: sparse autoencoders on trained and randomized transformers, side by side."""

__version__ = "0.1.0"
