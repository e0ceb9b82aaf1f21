"""Per-batch gradients of a network's final linear layer, in closed form: what
GRAD-MATCH matches, at the cost of forward passes only; under data parallelism each
rank computes a share and the ranks exchange them."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain import distributed
from sievetrain.data import make_loader
from sievetrain.losses import IGNORE_INDEX, flatten_targets
from sievetrain.scoring import scoring_mode

__all__ = ["batch_gradients", "last_layer_gradient", "scoring_block", "shared_batch_gradients"]


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
    the model's last ``nn.Linear``). No batches: ``(d, 0)``.
    """
    layer = layer if layer is not None else _last_linear(model)
    device = next(model.parameters()).device
    if not batches:
        d = layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
        return torch.zeros(d, 0, device=device)  # float32, as last_layer_gradient's
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


def scoring_block(batches: int, *, num_replicas: int, rank: int) -> range:
    """The candidate batches ``rank`` scores: a contiguous block of ``ceil(batches /
    num_replicas)`` (the last ranks' blocks may be shorter, or empty)."""
    per = -(-batches // num_replicas)
    return range(min(rank * per, batches), min((rank + 1) * per, batches))


def shared_batch_gradients(
    model: nn.Module,
    dataset: Dataset,
    batches: list[Tensor],
    *,
    num_replicas: int = 1,
    rank: int = 0,
    layer: nn.Module | None = None,
) -> Tensor:
    """:func:`batch_gradients` of all ``batches``, ``(d, len(batches))``, the work split
    over the ``num_replicas`` ranks of the process group: this rank computes its
    :func:`scoring_block`, and the blocks, padded to one size, are all-gathered in rank
    order. Each column is computed as one process would, so the result is the same on
    every rank and equal to one process's up to floating-point noise between machines.

    Call it on every rank, with the inner module of a ``DistributedDataParallel``
    (:func:`~sievetrain.distributed.unwrap`): scoring runs no DDP collectives.
    ``num_replicas=1`` computes every column here and communicates nothing.

    Raises:
        RuntimeError: ``(num_replicas, rank)`` is not the process group's.
    """
    if num_replicas == 1:
        return batch_gradients(model, dataset, batches, layer=layer)
    if distributed.world() != (num_replicas, rank):
        raise RuntimeError(
            f"num_replicas={num_replicas}, rank={rank} need a process group of {num_replicas} "
            f"ranks with this rank {rank}; it is (world, rank) = {distributed.world()}"
        )
    block = scoring_block(len(batches), num_replicas=num_replicas, rank=rank)
    mine = batch_gradients(model, dataset, [batches[b] for b in block], layer=layer)  # (d, k)
    per = len(scoring_block(len(batches), num_replicas=num_replicas, rank=0))  # the longest
    padded = torch.cat([mine.T, mine.new_zeros(per - len(block), mine.shape[0])])  # (per, d)
    # Blocks are in batch order and only trailing ranks are short: the padding is at the end.
    return distributed.all_gather(padded)[: len(batches)].T.contiguous()  # (d, B)


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: pass layer=")
    return linears[-1]
