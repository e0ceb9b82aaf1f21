"""Greedy SGD against plain SGD: multinomial logistic regression on MNIST-1D, batch size 1.

Every method takes the same number of single-sample gradient steps from zero
parameters with the same step size; the seeds are shared, so for a seed every
method draws the same candidates (R = 1 takes the first column of them). The
step size is a multiple of 1 / L̄, where L̄ = mean_i (||x_i||² + 1) / 2 bounds the
average per-sample smoothness. The main grid runs every method at one step size;
a sweep runs plain SGD and exact-score GSGD at two more. The minimum average loss
F* comes from full-batch L-BFGS in float64.

    python benchmarks/greedy_sgd.py
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sievetrain.data import load_dataset
from sievetrain.files import atomic_write_text
from sievetrain.rng import make_generator
from sievetrain.selection.greedy import greedy_sgd
from sievetrain.train import environment

HERE = Path(__file__).parent
TABLE_AT = (100, 300, 1000, 3000)  # iterations reported, plus the final one


def methods(candidates: list[int]) -> dict[str, dict]:
    """Method label -> greedy_sgd keyword arguments."""
    out = {"SGD": dict(candidates=1, score="exact")}
    for score in ("exact", "approx"):
        for r in candidates:
            out[f"GSGD R={r} {score}"] = dict(candidates=r, score=score)
    return out


def minimum_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """F* of the average loss by full-batch L-BFGS in float64, and the final gradient's max-norm."""
    x = x.double()
    weight = x.new_zeros(x.shape[1], 10, requires_grad=True)
    bias = x.new_zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y)
        loss.backward()
        return loss

    opt.step(closure)
    loss = F.cross_entropy(x @ weight + bias, y)
    grads = torch.autograd.grad(loss, [weight, bias])
    return loss.item(), max(g.abs().max().item() for g in grads)


def run_grid(x, y, grid, *, lr, seeds, steps, record_every, approx_fraction):
    """Label -> list over seeds of greedy_sgd results; seeds interleaved across methods."""
    runs = {label: [] for label in grid}
    for seed in range(seeds):
        for label, kwargs in grid.items():
            start = time.perf_counter()
            result = greedy_sgd(
                x, y, steps=steps, lr=lr, record_every=record_every,
                approx_fraction=approx_fraction, generator=make_generator(seed, "greedy_sgd"),
                **kwargs,
            )  # fmt: skip
            result["seconds"] = time.perf_counter() - start
            runs[label].append(result)
    return runs


def first_reach(result: dict, level: float) -> int | None:
    """First recorded iteration at which the average loss is <= level, or None."""
    hit = (result["loss"] <= level).nonzero()
    return int(result["iterations"][hit[0, 0]]) if len(hit) else None


def mean_std(values: list[float], fmt: str = ".3f") -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{fmt}} ± {std:{fmt}}"


def loss_at(results: list[dict], iteration: int) -> list[float]:
    return [r["loss"][r["iterations"].tolist().index(iteration)].item() for r in results]


def loss_table(runs: dict[str, list[dict]], steps: int, f_star: float) -> list[str]:
    at = [i for i in TABLE_AT if i < steps] + [steps]
    lines = [
        "| method | " + " | ".join(f"loss @ {i}" for i in at) + " | final / F* | s per run |",
        "|---|" + "---|" * (len(at) + 2),
    ]
    for label, results in runs.items():
        final = [v / f_star for v in loss_at(results, steps)]
        cells = [mean_std(loss_at(results, i)) for i in at]
        seconds = statistics.mean(r["seconds"] for r in results)
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {statistics.mean(final):.3f} | {seconds:.2f} |"
        )
    return lines


def reach_table(runs: dict[str, list[dict]], levels: dict[str, float]) -> list[str]:
    """Iterations to first reach each level: mean ± std over the seeds that reach it."""
    lines = [
        "| method | " + " | ".join(f"{name} (≤ {v:.3f})" for name, v in levels.items()) + " |",
        "|---|" + "---|" * len(levels),
    ]
    sgd = runs["SGD"]
    for label, results in runs.items():
        cells = []
        for level in levels.values():
            hits = [first_reach(r, level) for r in results]
            reached = [h for h in hits if h is not None]
            base = [first_reach(r, level) for r in sgd]
            if not reached:
                cells.append(f"not reached (0/{len(hits)})")
                continue
            cell = mean_std(reached, ".0f")
            if len(reached) < len(hits):
                cell += f" ({len(reached)}/{len(hits)} seeds)"
            elif None not in base and statistics.mean(base) > 0:
                cell += f", {statistics.mean(reached) / statistics.mean(base):.2f}× SGD"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot(panels: dict[str, dict[str, list[dict]]], f_star: float, path: str) -> None:
    """One panel per step size: mean loss over seeds against iterations, log x.
    Colour is R (black: SGD); dashed lines are the approximate score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"R=2": "tab:blue", "R=4": "tab:orange", "R=8": "tab:green", "SGD": "k"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), sharey=True)
    for ax, (title, runs) in zip(axes, panels.items(), strict=True):
        for label, results in runs.items():
            loss = torch.stack([r["loss"] for r in results]).mean(0)
            colour = next((c for key, c in colours.items() if key in label), None)
            style = "--" if "approx" in label else "-"
            ax.plot(results[0]["iterations"][1:], loss[1:], style, color=colour, label=label, lw=1)
        ax.axhline(f_star, color="grey", lw=0.8, ls=":", label="F* (L-BFGS)")
        ax.set_xscale("log")
        ax.set_xlabel("iteration (single-sample gradient steps)")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"average training loss (nats), mean of {len(results)} seeds")
    fig.suptitle("Greedy SGD against SGD, logistic regression on MNIST-1D")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--record-every", type=int, default=25)
    parser.add_argument("--candidates", default="2,4,8", help="R values of the main grid")
    parser.add_argument("--lr-scale", type=float, default=0.5, help="main grid lr, × 1/L̄")
    parser.add_argument("--sweep-scales", default="0.25,1", help="more lrs, × 1/L̄")
    parser.add_argument("--approx-fraction", type=float, default=0.5)
    parser.add_argument("--out", default=str(HERE / "greedy_sgd.md"))
    parser.add_argument("--plot", default=str(HERE / "greedy_sgd.png"))
    args = parser.parse_args()
    # Batch-size-1 steps are tiny, overhead-bound ops: a second intra-op thread only
    # adds synchronisation (and contends with mnist1d's OpenMP runtime if it is loaded).
    torch.set_num_threads(1)
    start = time.perf_counter()

    split = load_dataset("mnist1d", train_size=args.train_size)
    x, y = split.train.tensors
    x = x.flatten(1)
    x = (x - x.mean(0)) / x.std(0)  # (N, 40), per-feature standardised
    l_bar = ((x.pow(2).sum(1) + 1) / 2).mean().item()
    l_max = ((x.pow(2).sum(1) + 1) / 2).max().item()
    f_star, grad_norm = minimum_loss(x, y)
    print(f"F* = {f_star:.5f} (|grad|max {grad_norm:.1e}), 1/L̄ = {1 / l_bar:.4f}", flush=True)

    candidates = [int(r) for r in args.candidates.split(",")]
    common = dict(
        seeds=args.seeds, steps=args.steps, record_every=args.record_every,
        approx_fraction=args.approx_fraction,
    )  # fmt: skip
    main_runs = run_grid(x, y, methods(candidates), lr=args.lr_scale / l_bar, **common)
    sweep_grid = {k: v for k, v in methods(candidates).items() if "approx" not in k}
    panels = {}  # "lr = 0.25/L̄" -> label -> results over seeds; the main lr has every method
    for scale in sorted([float(s) for s in args.sweep_scales.split(",")] + [args.lr_scale]):
        if scale == args.lr_scale:
            panels[f"lr = {scale:g}/L̄"] = main_runs
        else:
            panels[f"lr = {scale:g}/L̄"] = run_grid(x, y, sweep_grid, lr=scale / l_bar, **common)
    total = time.perf_counter() - start
    plot(panels, f_star, args.plot)

    sgd_final = statistics.mean(loss_at(main_runs["SGD"], args.steps))
    levels = {
        "1.2 × SGD's final loss": 1.2 * sgd_final,
        "1.2 F*": 1.2 * f_star,
        "1.1 F*": 1.1 * f_star,
    }
    env = environment()
    lines = [
        "# Greedy SGD against SGD: logistic regression on MNIST-1D",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/greedy_sgd.py', *sys.argv[1:]])}`",
        "",
        f"Multinomial logistic regression (weights 40 × 10 + bias, from zero) on the MNIST-1D "
        f"train set ({len(y)} samples, features standardised), batch size 1, constant step "
        f"size, {args.steps} steps, {args.seeds} seeds (mean ± std over seeds). "
        f"L̄ = mean (‖x_i‖² + 1) / 2 = {l_bar:.2f} (1/L̄ = {1 / l_bar:.4f}; "
        f"max over samples {l_max:.1f}, 1/L_max = {1 / l_max:.4f}). "
        f"F* = {f_star:.4f} (L-BFGS, float64, gradient max-norm {grad_norm:.0e}); "
        f"the loss at zero parameters is ln 10 = 2.3026. Approximate score: the logits from "
        f"a fixed random {args.approx_fraction:g} of the 40 features, rescaled. "
        f"Whole run {total:.0f} s; ![plot](greedy_sgd.png)",
        "",
        f"## Every method at lr = {args.lr_scale:g} / L̄ = {args.lr_scale / l_bar:.4f}",
        "",
        *loss_table(main_runs, args.steps, f_star),
        "",
        "s per run: wall time of one run, its full-set loss records included, one thread "
        "of a shared CPU. The approx runs also score the candidates exactly, for the "
        "agreement diagnostic below, so their time is not the method's cost.",
        "",
        "Iterations to first reach a level (recorded every "
        f"{args.record_every} steps; mean ± std over the seeds that reach it; ratio to "
        "SGD's mean where every seed of both reaches it):",
        "",
        *reach_table(main_runs, levels),
        "",
        "Approximate score: fraction of steps whose chosen candidate has the largest exact "
        "loss among the candidates (ties count; chance is about 1/R):",
        "",
        "| method | argmax agreement |",
        "|---|---|",
    ]
    for label, results in main_runs.items():
        if "approx" in label:
            lines.append(f"| {label} | {mean_std([r['argmax_agreement'] for r in results])} |")
    lines += ["", "## Step-size sweep: SGD and exact-score GSGD", ""]
    for title, runs in panels.items():
        runs = {k: v for k, v in runs.items() if k in sweep_grid}
        lines += [f"### {title}", "", *loss_table(runs, args.steps, f_star), ""]
        lines += [*reach_table(runs, levels), ""]
    lines += [
        f"Environment: torch {env['torch']}, {env['cpu']}, 1 torch thread "
        f"({env['cpu_count']} cores, shared), GPU: none used, sievetrain {env['git_sha']}.",
        "",
    ]
    atomic_write_text(Path(args.out), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
