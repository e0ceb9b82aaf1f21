"""Reference models with named stages, and a registry to build them by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sievetrain.models.cnn import (
    KWSCNN,
    MNIST1DCNN,
    VGG8,
    FashionCNN,
    ResNet8,
    StagedSequential,
)
from sievetrain.models.transformer import MLMTransformer

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "FashionCNN",
    "KWSCNN",
    "MLMTransformer",
    "MNIST1DCNN",
    "ResNet8",
    "StagedSequential",
    "VGG8",
    "build_model",
    "check_model",
]

# Model name -> constructor taking (num_classes=, in_channels=), or other arguments
# named by its ``shape_kwargs(input_shape)`` (the transformer's ``max_len``).
MODELS: dict[str, Callable[..., StagedSequential]] = {
    "mnist1d-cnn": MNIST1DCNN,
    "fashion-cnn": FashionCNN,
    "resnet8": ResNet8,  # small residual CNN for 28x28 images
    "vgg8": VGG8,  # the same layers without skip connections
    "mlm-transformer": MLMTransformer,  # masked-LM encoder for token sequences
    "kws-cnn": KWSCNN,  # temporal CNN for log-mel keyword spotting
}

# Dataset name -> the model used for it by default.
DEFAULT_MODEL: dict[str, str] = {
    "mnist1d": "mnist1d-cnn",
    "fashion-mnist": "fashion-cnn",
    "shakespeare": "mlm-transformer",
    "speech-kws": "kws-cnn",
}


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Construct a registered model for samples of ``input_shape``.

    Parameters are initialised from the global torch RNG, unseeded here: the
    caller owns that seed (e.g. under ``torch.random.fork_rng``).

    Args:
        name: A key of :data:`MODELS`.
        num_classes: Number of output logits, > 0.
        input_shape: Shape of one sample, channels first: ``(C, L)`` or ``(C, H, W)``;
            ``(T,)`` token ids for a sequence model.

    Raises:
        ValueError: Unknown ``name``, ``num_classes`` <= 0, or an ``input_shape``
            with the wrong number of dimensions for the model.
    """
    factory = check_model(name, num_classes=num_classes, input_shape=input_shape)
    # A model whose first input dimension is not channels says what it takes instead.
    shape_kwargs = getattr(factory, "shape_kwargs", _channels_first)
    return factory(num_classes=num_classes, **shape_kwargs(tuple(input_shape)))


def check_model(name: str, *, num_classes: int, input_shape: tuple[int, ...]) -> Callable:
    """The constructor of model ``name``, once the arguments are checked (nothing is built).

    Raises:
        ValueError: as :func:`build_model`.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be > 0, got {num_classes}")
    factory = MODELS[name]
    ndim = getattr(factory, "input_ndim", None)
    if ndim is not None and len(input_shape) != ndim:
        raise ValueError(
            f"model {name!r} takes samples with {ndim} dimensions (channels first), "
            f"got input_shape={tuple(input_shape)}"
        )
    return factory


def _channels_first(input_shape: tuple[int, ...]) -> dict[str, int]:
    return {"in_channels": input_shape[0]}
