"""Epoch-level sampling: which samples an epoch trains on (Soft Random Sampling, the
GRAD-MATCH coreset) and coverage."""

from sievetrain.sampling.base import EpochSampler
from sievetrain.sampling.coverage import (
    CoverageTracker,
    expected_coverage,
    expected_epochs_to_full_coverage,
)
from sievetrain.sampling.gradmatch import (
    GradMatchOptions,
    GradMatchSampler,
    gradmatch_select,
    warm_start_schedule,
)
from sievetrain.sampling.last_layer import batch_gradients, last_layer_gradient
from sievetrain.sampling.omp import nonnegative_omp
from sievetrain.sampling.srs import (
    SoftRandomSampler,
    SRSOptions,
    batch_partition,
    selection_round,
    soft_random_indices,
    subset_size,
)

__all__ = [
    "CoverageTracker",
    "EpochSampler",
    "GradMatchOptions",
    "SRSOptions",
    "GradMatchSampler",
    "batch_gradients",
    "gradmatch_select",
    "last_layer_gradient",
    "nonnegative_omp",
    "warm_start_schedule",
    "SoftRandomSampler",
    "batch_partition",
    "expected_coverage",
    "expected_epochs_to_full_coverage",
    "selection_round",
    "soft_random_indices",
    "subset_size",
]
