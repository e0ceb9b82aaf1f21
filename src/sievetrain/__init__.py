"""sievetrain: train neural networks faster by sampling, and measure what it buys.

The pieces for your own PyTorch loop:

- ``sievetrain.sampling.SoftRandomSampler``: a fresh uniform random subset per epoch;
  ``EpochSampler`` is the protocol of epoch-level samplers.
- ``sievetrain.selection``: batch-level selectors; ``Selector`` is their protocol.
- ``sievetrain.optim.StochGradAdam``: Adam on a random subset of gradient entries.
- ``sievetrain.Sieve``: the step protocol every front end runs (epochs, selection,
  gathering, the weighted loss, one checkpoint state), for a loop of your own.
- ``sievetrain.SelectionAudit``: which kinds of samples (a data regime's flags, each
  class) the backward passes went to.
- ``sievetrain.train.Trainer``: the accounted training loop the CLI uses.

Each method's options are one frozen dataclass (``SRSOptions``, ``SIFTOptions``, ...;
see ``sievetrain.options``), the single home of their defaults.
"""

__version__ = "0.1.0"

__all__ = ["SelectionAudit", "Sieve", "__version__"]


def __getattr__(name: str) -> object:
    # Imported on first use: ``import sievetrain`` (the CLI's --version) stays light.
    if name == "Sieve":
        from sievetrain.sieve import Sieve

        return Sieve
    if name == "SelectionAudit":
        from sievetrain.audit import SelectionAudit

        return SelectionAudit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
