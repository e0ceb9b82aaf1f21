"""A small pre-norm transformer encoder for masked language modelling, built from named stages.

Stages: ``embed`` (token + learned position embedding), ``layer1`` .. ``layerN``
(one encoder layer each) and ``head`` (final layer norm + output layer). Every
stage but the head maps ``(B, T, d)`` to ``(B, T, d)``, so the model's own head
can be applied to any layer's output: an early exit after ``layer1`` reuses it
rather than training a new one. No dropout, so a forward pass consumes no
randomness.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from sievetrain.models.cnn import StagedSequential

__all__ = ["MLMTransformer", "TokenEmbedding"]


class TokenEmbedding(nn.Module):
    """Token ids ``(B, T)`` -> token embedding + learned position embedding ``(B, T, d)``.

    Args:
        vocab_size: Number of token ids.
        d_model: Embedding width ``d``.
        max_len: Longest sequence, > 0; positions ``0 .. max_len - 1`` are learned.
    """

    def __init__(self, vocab_size: int, d_model: int, max_len: int) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)
        # BERT/GPT-2 scale: the default N(0, 1) would swamp the residual stream.
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length, max_len = ids.shape[-1], self.position.num_embeddings
        if length > max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={max_len}")
        positions = torch.arange(length, device=ids.device)  # (T,)
        return self.token(ids) + self.position(positions)  # (B, T, d) + (T, d)


class MLMTransformer(StagedSequential):
    """Pre-norm transformer encoder for masked-LM, input int64 token ids ``(B, T)``.

    Shapes: embed ``(B, T, d)``, each ``layer{i}`` ``(B, T, d)``, head ``(B, T, V)``
    logits with ``V = num_classes``. Each layer is ``nn.TransformerEncoderLayer(d,
    n_heads, 4 d, dropout=0, gelu, batch_first, norm_first)``. Because every layer
    outputs ``(B, T, d)``, ``model.head`` (final norm + output layer) applies to any
    layer's output; that is how an early exit after ``layer1`` reuses it.

    There is no attention mask: padding is rare (in Shakespeare only the last chunk
    of each play is padded: 2,016 PAD in 5.0 M tokens at seq_len 128), so PAD
    positions are attended to like any token; they are never targets.

    Defaults d=64, 4 heads, 4 layers: 0.22 M parameters, sized for a CPU (a
    training step on 64 x 128 tokens takes about 0.42 s on one CPU thread, see
    ``benchmarks/sift_scoring.md``). Pass a larger ``d_model`` for a GPU.

    Args:
        num_classes: Vocabulary size ``V``: both the token ids taken and the logits
            given (``num_classes`` so that :func:`~sievetrain.models.build_model`
            builds it like the classifiers); the data's, e.g.
            ``sievetrain.data.VOCAB_SIZE`` for ``shakespeare``.
        max_len: Longest input sequence ``T``; the dataset's ``seq_len``.
        d_model: Width ``d``.
        n_heads: Attention heads; must divide ``d_model``.
        n_layers: Encoder layers, named ``layer1`` .. ``layer{n_layers}``.
    """

    input_ndim = 1  # one sample is T token ids

    def __init__(
        self,
        num_classes: int,
        max_len: int = 128,
        *,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 4,
    ) -> None:
        for label, value in (("num_classes", num_classes), ("max_len", max_len)):
            if value <= 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        if n_layers <= 0:
            raise ValueError(f"n_layers must be > 0, got {n_layers}")
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must be > 0 and divide d_model={d_model}")
        stages: OrderedDict[str, nn.Module] = OrderedDict(
            embed=TokenEmbedding(num_classes, d_model, max_len)
        )
        for i in range(1, n_layers + 1):
            stages[f"layer{i}"] = nn.TransformerEncoderLayer(
                d_model,
                n_heads,
                4 * d_model,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
        # Pre-norm layers leave the residual stream unnormalised: the head norms it first.
        stages["head"] = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, num_classes))
        super().__init__(stages)

    @property
    def exit_stage(self) -> str:
        """Where an early exit attaches by default: after ``layer1``, the first
        layer to mix information across positions (``embed`` sees one token)."""
        return "layer1"

    @staticmethod
    def shape_kwargs(input_shape: tuple[int, ...]) -> dict[str, int]:
        """Constructor arguments for samples of ``input_shape = (T,)``: ``max_len=T``."""
        return {"max_len": input_shape[0]}
