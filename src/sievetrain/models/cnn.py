"""Small reference CNNs built from named stages.

Each model is an ``nn.Sequential`` whose children are named stages
(``stem``, ``stage1``, ``stage2``, ``head``); early exits attach after a named
stage, and ``head`` produces the logits. Batch norm but no dropout, so a
forward pass consumes no randomness.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["FashionCNN", "KWSCNN", "MNIST1DCNN", "ResNet8", "StagedSequential", "VGG8"]


class StagedSequential(nn.Sequential):
    """``nn.Sequential`` of named stages, the last one named ``"head"``."""

    input_ndim: int  # dimensions of one sample, channels included

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Names of the stages in forward order; the last is ``"head"``."""
        return tuple(name for name, _ in self.named_children())

    @property
    def exit_stage(self) -> str:
        """Where an early exit attaches by default: after the first stage (the
        first layer, as in SIFT's headline setting)."""
        return self.stage_names[0]


def _conv1d(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    # No conv bias: the batch norm right after it has one.
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


def _conv2d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MNIST1DCNN(StagedSequential):
    """1-D CNN for MNIST-1D, input ``(B, C, 40)``.

    Shapes for length 40 and ``width`` w: stem ``(B, w, 40)``, stage1
    ``(B, w, 20)``, stage2 ``(B, 2w, 10)``, head ``(B, num_classes)``. The head
    pools to 5 positions rather than 1 because where a feature sits along the
    sequence matters for MNIST-1D digits.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input sequence.
        width: Channels of the first stage; the second has ``2 * width``.
    """

    input_ndim = 2

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__(
            OrderedDict(
                stem=_conv1d(in_channels, width, 5),
                stage1=nn.Sequential(_conv1d(width, width, 3), nn.MaxPool1d(2)),
                stage2=nn.Sequential(
                    _conv1d(width, 2 * width, 3), _conv1d(2 * width, 2 * width, 3), nn.MaxPool1d(2)
                ),
                head=nn.Sequential(
                    nn.AdaptiveAvgPool1d(5), nn.Flatten(), nn.Linear(2 * width * 5, num_classes)
                ),
            )
        )


class KWSCNN(StagedSequential):
    """Temporal CNN for keyword spotting on log-mel features, input ``(B, n_mels, T)``:
    the mel bands are the channels and the convolutions run along time, as in
    TC-ResNet (Choi et al., 2019), whose authors found it cheaper than 2-D convolutions
    over the spectrogram at the same accuracy.

    Shapes for 40 mel bands by 101 frames and ``width`` w: stem ``(B, w, 101)``, stage1
    ``(B, w, 50)``, stage2 ``(B, 2w, 25)``, stage3 ``(B, 2w, 12)``, head
    ``(B, num_classes)``. The head averages over time: where in the second the word
    is spoken does not matter.

    Args:
        num_classes: Number of output logits.
        in_channels: Mel bands of the input.
        width: Channels of the first stages; the later ones have ``2 * width``.
    """

    input_ndim = 2

    def __init__(self, num_classes: int = 20, in_channels: int = 40, width: int = 64) -> None:
        super().__init__(
            OrderedDict(
                stem=_conv1d(in_channels, width, 5),
                stage1=nn.Sequential(_conv1d(width, width, 5), nn.MaxPool1d(2)),
                stage2=nn.Sequential(_conv1d(width, 2 * width, 5), nn.MaxPool1d(2)),
                stage3=nn.Sequential(
                    _conv1d(2 * width, 2 * width, 5),
                    _conv1d(2 * width, 2 * width, 5),
                    nn.MaxPool1d(2),
                ),
                head=nn.Sequential(
                    nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2 * width, num_classes)
                ),
            )
        )


class FashionCNN(StagedSequential):
    """2-D CNN for Fashion-MNIST, input ``(B, C, 28, 28)``.

    Shapes for 28x28 input: stem ``(B, 16, 14, 14)``, stage1 ``(B, 32, 7, 7)``,
    stage2 ``(B, 64, 7, 7)``, head ``(B, num_classes)``. Sized to train an epoch
    of 60,000 images in about 20 s on two CPU cores.

    The weights are stored channels-last: on CPU, max pooling and convolution
    run about 1.7x faster in that layout, and a one-channel input is already
    channels-last, so callers need not convert anything.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input image.
    """

    input_ndim = 3

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(
            OrderedDict(
                stem=nn.Sequential(_conv2d(in_channels, 16), nn.MaxPool2d(2)),
                stage1=nn.Sequential(_conv2d(16, 32), nn.MaxPool2d(2)),
                stage2=_conv2d(32, 64),
                # Adaptive pooling is the identity for 28x28 input and keeps other sizes working.
                head=nn.Sequential(
                    nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(64 * 7 * 7, num_classes)
                ),
            )
        )
        self.to(memory_format=torch.channels_last)


class _BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers, with the input added back when ``skip``.

    With ``skip=False`` it is the same two layers without the addition (and
    without the 1x1 projection a strided skip needs): the "plain" twin that tests
    whether a result is due to the skip connections.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, *, skip: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = skip
        self.shortcut: nn.Module = nn.Identity()
        if skip and (stride != 1 or c_in != c_out):
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip:
            out = out + self.shortcut(x)
        return torch.relu(out)


class ResNet8(StagedSequential):
    """A small residual CNN for 28x28 images: a conv stem and three basic blocks
    (7 conv layers plus the classifier), input ``(B, C, 28, 28)``.

    Shapes for 28x28 input: stem ``(B, 16, 14, 14)``, stage1 ``(B, 16, 14, 14)``,
    stage2 ``(B, 32, 7, 7)``, stage3 ``(B, 32, 7, 7)``, head ``(B, num_classes)``.
    :class:`VGG8` is the same network without the skip connections.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input image.
    """

    input_ndim = 3
    skip = True

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        skip = self.skip
        super().__init__(
            OrderedDict(
                stem=nn.Sequential(_conv2d(in_channels, 16), nn.MaxPool2d(2)),
                stage1=_BasicBlock(16, 16, skip=skip),
                stage2=_BasicBlock(16, 32, stride=2, skip=skip),
                stage3=_BasicBlock(32, 32, skip=skip),
                head=nn.Sequential(
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes)
                ),
            )
        )
        self.to(memory_format=torch.channels_last)


class VGG8(ResNet8):
    """:class:`ResNet8` without skip connections: a plain VGG-like stack of the
    same 7 conv layers, for testing claims about gradient flow through skips."""

    skip = False
