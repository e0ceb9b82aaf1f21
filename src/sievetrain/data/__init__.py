"""Datasets held in memory as tensors, loaders that yield ``(x, y, idx)`` batches, and
the data regimes that corrupt a training split (:mod:`sievetrain.data.regimes`)."""

from sievetrain.data.corruptions import (
    CONFUSION_PAIRS,
    duplicate_sources,
    long_tail_indices,
    long_tail_sizes,
    noisy_labels,
    shift,
)
from sievetrain.data.datasets import (
    DATASETS,
    cache_dir,
    load_dataset,
    load_fashion_mnist,
    load_mnist1d,
)
from sievetrain.data.loader import BatchLoader, IndexedDataset, make_loader
from sievetrain.data.off_target import mix_off_target, off_target_sequences
from sievetrain.data.regimes import (
    REGIMES,
    Duplicates,
    LabelNoise,
    LongTail,
    OffTarget,
    apply_regimes,
    format_regime,
    parse_regime,
)
from sievetrain.data.shakespeare import IGNORE_INDEX, VOCAB_SIZE, load_shakespeare, mask_tokens
from sievetrain.data.speech import SPEECH_KWS_WORDS, load_speech_kws
from sievetrain.data.split import DataSplit

__all__ = [
    "CONFUSION_PAIRS",
    "DATASETS",
    "IGNORE_INDEX",
    "REGIMES",
    "SPEECH_KWS_WORDS",
    "VOCAB_SIZE",
    "BatchLoader",
    "DataSplit",
    "Duplicates",
    "IndexedDataset",
    "LabelNoise",
    "LongTail",
    "OffTarget",
    "apply_regimes",
    "cache_dir",
    "duplicate_sources",
    "format_regime",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist1d",
    "load_shakespeare",
    "load_speech_kws",
    "long_tail_indices",
    "long_tail_sizes",
    "make_loader",
    "mask_tokens",
    "mix_off_target",
    "noisy_labels",
    "off_target_sequences",
    "parse_regime",
    "shift",
]
