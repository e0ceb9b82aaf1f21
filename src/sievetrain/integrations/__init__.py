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

__all__ = ["ResumableLoader"]
