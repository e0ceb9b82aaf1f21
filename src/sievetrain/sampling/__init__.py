"""Epoch-level sampling: which samples an epoch trains on (Soft Random Sampling, RS2,
InfoBatch, the GRAD-MATCH coreset, full data on a budget) and coverage."""

from sievetrain.sampling.base import EpochSampler
from sievetrain.sampling.coverage import (
    CoverageTracker,
    expected_coverage,
    expected_epochs_to_full_coverage,
    rs2_coverage,
    rs2_epochs_to_full_coverage,
)
from sievetrain.sampling.gradmatch import (
    GradMatchOptions,
    GradMatchSampler,
    gradmatch_select,
    warm_start_schedule,
)
from sievetrain.sampling.infobatch import InfoBatchOptions, InfoBatchSampler, infobatch_plan
from sievetrain.sampling.last_layer import batch_gradients, last_layer_gradient
from sievetrain.sampling.omp import nonnegative_omp
from sievetrain.sampling.rs2 import FullOptions, RS2Options, RS2Sampler, rs2_indices
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
    "FullOptions",
    "InfoBatchOptions",
    "InfoBatchSampler",
    "RS2Options",
    "RS2Sampler",
    "infobatch_plan",
    "rs2_coverage",
    "rs2_epochs_to_full_coverage",
    "rs2_indices",
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
