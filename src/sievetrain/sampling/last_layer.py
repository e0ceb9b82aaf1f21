"""Per-batch gradients of a network's final linear layer, in closed form: what
GRAD-MATCH matches, at the cost of forward passes only."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain.data import make_loader
from sievetrain.losses import IGNORE_INDEX, flatten_targets
from sievetrain.scoring import scoring_mode

__all__ = ["batch_gradients", "last_layer_gradient"]


def last_layer_gradient(
    features: Tensor, logits: Tensor, y: Tensor, *, bias: bool = True
) -> Tensor:
    """Mean gradient of softmax cross-entropy w.r.t. a final linear layer, in closed form.

    For logits ``o = z W^T + b``: dL/do = softmax(o) - onehot(y) = e, so dL/dW = e^T z
    and dL/db = e, averaged over the predicted targets. No backward pass.

    Args:
        features: the layer's input z, (B, h) for targets (B,), or (B, T, h) for token
            targets (B, T) (positions holding ``IGNORE_INDEX`` are left out).
        logits: the layer's output, (B, C) or (B, T, C).
        y: targets.
        bias: whether the layer has a bias (its gradient is appended).

    Returns:
        ``(C * h + C,)`` with a bias, ``(C * h,)`` without: ``[dW.flatten(), db]``.
    """
    rows, targets, _ = flatten_targets(logits, y)  # (N, C), (N,)
    if features.dim() == 3:
        features = features[y != IGNORE_INDEX]  # (N, h), same row order as flatten_targets
    e = torch.softmax(rows.float(), dim=1)
    e[torch.arange(len(targets), device=e.device), targets] -= 1.0  # (N, C)
    n = max(len(targets), 1)
    grad_w = e.T @ features.float() / n  # (C, h)
    parts = [grad_w.flatten(), e.sum(dim=0) / n] if bias else [grad_w.flatten()]
    return torch.cat(parts)


def batch_gradients(
    model: nn.Module, dataset: Dataset, batches: list[Tensor], *, layer: nn.Module | None = None
) -> Tensor:
    """Each batch's mean last-layer gradient, ``(d, len(batches))``, from forward passes only.

    The model runs as a training step would see each batch (training mode, batch
    statistics) but without side effects (:func:`~sievetrain.scoring.scoring_mode`).
    ``layer`` is the final ``nn.Linear`` whose output is the model's output (default:
    the model's last ``nn.Linear``).
    """
    layer = layer if layer is not None else _last_linear(model)
    device = next(model.parameters()).device
    sizes = {len(b) for b in batches}
    if len(sizes) != 1:
        raise ValueError(f"batches must have one size, got sizes {sorted(sizes)}")
    order = torch.cat(batches).tolist()
    loader = make_loader(dataset, len(batches[0]), sampler=order)  # one loader batch per batch
    captured: list[tuple[Tensor, Tensor]] = []
    hook = layer.register_forward_hook(lambda m, args, out: captured.append((args[0], out)))
    columns, was_training = [], model.training
    model.train()  # batch statistics, as a training step sees the batch
    try:
        with torch.no_grad(), scoring_mode(model):
            for x, y, _ in loader:
                captured.clear()
                logits = model(x.to(device))
                features, out = captured[-1]
                if out is not logits and not torch.equal(out, logits):
                    raise ValueError("the layer's output is not the model's output: pass layer=")
                columns.append(
                    last_layer_gradient(features, logits, y.to(device), bias=layer.bias is not None)
                )
    finally:
        hook.remove()
        model.train(was_training)
    return torch.stack(columns, dim=1)


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: pass layer=")
    return linears[-1]
