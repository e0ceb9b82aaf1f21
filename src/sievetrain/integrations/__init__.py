"""sievetrain in the frameworks people train with.

- :class:`~sievetrain.integrations.loader.ResumableLoader`: a ``DataLoader`` over a
  sievetrain sampler that a framework checkpoints mid-epoch and resumes exactly.
- :mod:`sievetrain.integrations.lightning`: PyTorch Lightning (``pip install
  'sievetrain[lightning]'``).
- :mod:`sievetrain.integrations.hf`: the Hugging Face ``Trainer`` (``pip install
  'sievetrain[hf]'``).
- :mod:`sievetrain.integrations.accelerate`: accelerate (``pip install
  'sievetrain[hf]'``).

Each framework module imports its framework; this package imports none.
"""

from sievetrain.integrations.loader import ResumableLoader

__all__ = ["ResumableLoader", "missing_extra"]


def missing_extra(module: str, extra: str) -> str:
    """The message of the ImportError a framework module raises when its framework is
    not installed."""
    return (
        f"sievetrain.integrations.{module} needs a framework that is not installed: "
        f"pip install 'sievetrain[{extra}]'"
    )
