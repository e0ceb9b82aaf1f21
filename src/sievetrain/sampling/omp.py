"""Orthogonal matching pursuit with non-negative weights (GRAD-MATCH's solver)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sievetrain.sampling.base import as_int

__all__ = ["check_omp_options", "nonnegative_omp"]


def check_omp_options(lam: float, eps: float) -> None:
    """ValueError naming λ or ε unless both are >= 0 (NaN fails)."""
    if not lam >= 0 or not eps >= 0:
        raise ValueError(f"lam and eps must be >= 0, got lam={lam!r}, eps={eps!r}")


def nonnegative_omp(
    columns: Tensor, target: Tensor, budget: int, *, lam: float, eps: float
) -> tuple[Tensor, Tensor]:
    """Orthogonal matching pursuit with non-negative weights: ``columns @ w ≈ target``.

    Each step adds the column most positively correlated with the residual, then
    re-solves ``min ||A_S w - b||² + lam ||w||²`` on the chosen set S; while a weight
    is negative the most negative column is dropped and the system re-solved. It stops
    after ``budget`` steps, when the residual falls to ``eps * ||target||``, or when no
    column correlates positively with the residual. The work is done on the Gram
    matrix ``A^T A`` (n x n, float64 on the CPU), so a step costs O(n |S|), not O(d n).

    Args:
        columns: A, (d, n): one candidate per column.
        target: b, (d,).
        budget: most steps (and so most columns chosen), >= 1.
        lam: ridge regularisation λ >= 0.
        eps: relative residual tolerance ε >= 0.

    Returns:
        ``(indices (k,), weights (k,))``: chosen columns (int64, in the order chosen)
        and their weights (float64, >= 0), k <= budget.
    """
    if columns.dim() != 2 or target.shape != columns.shape[:1]:
        raise ValueError(
            f"columns (d, n) and target (d,) expected, got {columns.shape}, {target.shape}"
        )
    budget = as_int("budget", budget, 1)
    check_omp_options(lam, eps)
    work = torch.promote_types(columns.dtype, torch.float32)
    a, b = columns.to(work), target.to(work)
    gram = (a.T @ a).double().cpu()  # (n, n)
    corr = (a.T @ b).double().cpu()  # (n,) A^T b
    b_sq = float(b.double().square().sum())
    support: list[int] = []
    weights = corr.new_zeros(0)
    residual_corr, residual_sq = corr, b_sq  # A^T r and ||r||² for r = b - A_S w
    for _ in range(budget):
        if residual_sq <= eps**2 * b_sq:
            break
        scores = residual_corr.clone()
        scores[support] = -math.inf
        best = int(scores.argmax())
        if not scores[best] > 0:
            break
        support, weights = _nonnegative_solve(gram, corr, [*support, best], lam)
        chosen = torch.tensor(support, dtype=torch.long)
        residual_corr = corr - gram[:, chosen] @ weights
        fit = weights @ corr[chosen]
        residual_sq = b_sq - 2 * float(fit) + float(weights @ gram[chosen][:, chosen] @ weights)
    return torch.tensor(support, dtype=torch.long), weights


def _nonnegative_solve(
    gram: Tensor, corr: Tensor, support: list[int], lam: float
) -> tuple[list[int], Tensor]:
    """Ridge least squares on ``support``, dropping the most negative weight until none is."""
    while True:
        chosen = torch.tensor(support, dtype=torch.long)
        system = gram[chosen][:, chosen] + lam * torch.eye(len(support), dtype=gram.dtype)
        # lstsq (CPU driver gelsy) tolerates a singular system, e.g. two identical batches.
        weights = torch.linalg.lstsq(system, corr[chosen].unsqueeze(1)).solution.squeeze(1)
        if len(support) == 1 or bool((weights >= 0).all()):
            return support, weights
        support = [s for i, s in enumerate(support) if i != int(weights.argmin())]
