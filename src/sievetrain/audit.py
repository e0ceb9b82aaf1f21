"""The selection audit: which kinds of samples a method actually backpropagates.

A data regime (:mod:`sievetrain.data.regimes`) flags what each training sample is:
a corrupted label (``noisy``), one of many copies (``duplicate``), text off the
target (``off_target``). The audit counts, per epoch, the backpropagated samples of
each flag and of each class, so that a record can say "Selective Backprop trains
noisy labels at 2.4x their share of the data" (a ratio above 1: the method prefers
them, below 1: it avoids them). This is how a user sees *why* a method helps or hurts.

:class:`SelectionAudit` is the thin stateful part (counts, ``state_dict``), fed the
indices of every backpropagated batch by :meth:`sievetrain.Sieve.loss`;
:func:`audit_record` is the pure summary a result record carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from sievetrain.distributed import all_reduce, world
from sievetrain.options import as_int

__all__ = ["SelectionAudit", "audit_record", "dataset_labels"]


def dataset_labels(dataset: Dataset) -> Tensor | None:
    """The class of each sample of a ``TensorDataset(x, y)`` with labels ``y`` (N,);
    None for other datasets and token targets (N, T), which have no one class."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
        if labels.dim() == 1 and not labels.is_floating_point():
            return labels
    return None


class SelectionAudit:
    """Backpropagated samples per epoch: in all, per flag and per class.

    Args:
        n: training samples.
        flags: name -> bool ``(n,)``: what each training sample is.
        labels: each training sample's class, int ``(n,)``, or None (no per-class count).
        num_classes: classes of ``labels`` (default: the largest label + 1).

    ``update(idx)`` counts the dataset indices of one backpropagated batch into the
    current epoch (``set_epoch``). Under a process group each rank counts its own
    samples; :meth:`merge_epoch` sums an epoch's counts over the ranks.
    """

    def __init__(
        self,
        n: int,
        flags: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
        *,
        num_classes: int | None = None,
    ) -> None:
        self.n = as_int("n", n, 0)
        flags = dict(flags or {})
        named = {**flags, **({"labels": labels} if labels is not None else {})}
        if wrong := [f"{k} ({len(v)})" for k, v in named.items() if len(v) != self.n]:
            raise ValueError(f"the audit of {self.n} samples got {', '.join(wrong)}")
        self.names = tuple(flags)
        if labels is not None and num_classes is None:
            num_classes = int(labels.max()) + 1 if len(labels) else 0
        self.num_classes = num_classes if labels is not None else 0
        # One column per group: all samples, each flag, each class.  (n, G)
        columns = [torch.ones(self.n, 1, dtype=torch.long)]
        columns += [flags[name].reshape(-1, 1).long().cpu() for name in self.names]
        if labels is not None:
            columns.append(torch.nn.functional.one_hot(labels.cpu().long(), self.num_classes))
        self._groups = torch.cat(columns, dim=1)
        self.data_counts = self._groups.sum(0)  # (G,)
        # (epochs so far, G): a row per epoch begun, epoch 0 from the start
        self.counts = torch.zeros(1, self._groups.shape[1], dtype=torch.long)
        self.epoch = 0

    @classmethod
    def of_dataset(
        cls, dataset: Dataset, flags: Mapping[str, Tensor] | None = None
    ) -> SelectionAudit:
        """The audit of ``dataset``: ``flags``, and per class when it has class labels."""
        return cls(len(dataset), flags, dataset_labels(dataset))

    def set_epoch(self, epoch: int) -> None:
        """Count what follows into ``epoch``."""
        self.epoch = as_int("epoch", epoch, 0)
        if len(self.counts) <= self.epoch:
            rows = self.counts.new_zeros(self.epoch + 1 - len(self.counts), self.counts.shape[1])
            self.counts = torch.cat([self.counts, rows])

    def update(self, idx: Tensor) -> None:
        """Count the backpropagated samples of dataset indices ``idx`` (B,)."""
        self.counts[self.epoch] += self._groups[idx.cpu().long()].sum(0)

    def merge_epoch(self, epoch: int) -> None:
        """Sum ``epoch``'s counts over the process group's ranks (no-op on one process)."""
        if world()[0] > 1:
            self.set_epoch(epoch)
            self.counts[epoch] = all_reduce(self.counts[epoch].clone()).to(torch.long)

    def record(self) -> dict[str, Any]:
        """The counts as a result record's ``selection_audit`` (:func:`audit_record`)."""
        return audit_record(self.counts, self.data_counts, self.names, self.num_classes)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.clone(), "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counts = state["counts"]
        if counts.dim() != 2 or counts.shape[1] != self.counts.shape[1]:
            raise ValueError(
                f"an audit of {counts.shape[-1]} groups does not fit this one of "
                f"{self.counts.shape[1]} (other flags or classes)"
            )
        self.counts, self.epoch = counts.clone().long(), as_int("epoch", state["epoch"], 0)


def audit_record(
    counts: Tensor, data_counts: Tensor, names: tuple[str, ...], num_classes: int
) -> dict[str, Any]:
    """What a result record carries: for each flag (and for each class, under
    ``classes``) its share of the data, its share of the backpropagated samples
    overall and per epoch, and their ratio (None when the data has none of it).

    ``counts`` (epochs, G) and ``data_counts`` (G,) have the columns: all samples,
    then one per name, then one per class."""
    totals = counts[:, 0]  # (epochs,)
    overall = counts.sum(0)  # (G,)
    n, kept = int(data_counts[0]), int(overall[0])

    def group(column: int) -> dict[str, Any]:
        data_share = int(data_counts[column]) / n if n else 0.0
        share = int(overall[column]) / kept if kept else 0.0
        per_epoch = [
            int(c) / int(t) if t else None
            for c, t in zip(counts[:, column].tolist(), totals.tolist(), strict=True)
        ]
        return {
            "data_share": data_share,
            "backprop_share": share,
            "ratio": share / data_share if data_share else None,
            "count": int(overall[column]),
            "per_epoch": per_epoch,
        }

    record: dict[str, Any] = {
        "samples": n,
        "backpropagated": kept,
        "per_epoch_backpropagated": [int(t) for t in totals],
        "flags": {name: group(1 + i) for i, name in enumerate(names)},
    }
    if num_classes:
        first = 1 + len(names)
        classes = [group(first + c) for c in range(num_classes)]
        record["classes"] = {key: [c[key] for c in classes] for key in classes[0]}
    return record
