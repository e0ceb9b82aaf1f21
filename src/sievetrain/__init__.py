"""sievetrain: train neural networks faster by sampling, and measure what it buys.

The pieces for your own PyTorch loop:

- ``sievetrain.sampling.SoftRandomSampler``: a fresh uniform random subset per epoch.
- ``sievetrain.train.Trainer``: the accounted training loop the CLI uses.
- ``sievetrain.selection``: the batch-level selector hook.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
