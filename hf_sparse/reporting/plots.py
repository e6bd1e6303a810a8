"""The figures of `hf-sparse report` (matplotlib, Agg backend: no display needed).

Each function draws one figure into ``path`` and returns the path, or ``None`` with nothing written when the
run lacks the data (the summary then says what is missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, works on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..metrics.weight_correlation import decorrelation_by_magnitude  # noqa: E402
from .run import RunData  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def density_per_layer(run: RunData, path: Path) -> Optional[Path]:
    """Horizontal bars: actual and target density of every sparse layer at the run's last checkpoint."""
    snap = run.final_snapshot
    if snap is None:
        return None
    mods = snap.record["modules"]
    names = [m["name"] for m in mods]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(names) + 1.6))
    ys = range(len(names))
    ax.barh(list(ys), [m["density"] for m in mods], color="tab:blue", label="actual density")
    ax.scatter([m.get("target_density", m["density"]) for m in mods], list(ys), color="tab:red", marker="|",
               s=120, label="target density", zorder=3)
    ax.set_yticks(list(ys), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("density (fraction of active weights)")
    ax.set_xlim(0, 1)
    ax.set_title(f"{run.name}: density per layer at step {snap.step}")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def dof_over_training(run: RunData, path: Path) -> Optional[Path]:
    """Explored degrees of freedom (fraction of weights ever active) and density against optimizer steps."""
    xs, dof = run.series("sparsity/dof")
    if not xs:  # fall back on the checkpoints' training statistics
        pts = [(s.step, (s.record.get("training_stats") or {}).get("dof")) for s in run.snapshots]
        pts = [(x, y) for x, y in pts if isinstance(y, (int, float))]
        xs, dof = [p[0] for p in pts], [p[1] for p in pts]
    if not xs:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(xs, dof, marker="o", ms=3, label="explored DOF (ever active)")
    dx, dens = run.series("sparsity/density")
    if dx:
        ax.plot(dx, dens, marker=".", ms=3, label="density (active now)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fraction of sparse-layer weights")
    ax.set_ylim(0, min(1.0, max(dof + (dens if dx else [])) * 1.15 + 0.01))
    ax.set_title(f"{run.name}: degrees of freedom over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def mask_accumulation(run: RunData, path: Path, layer: Optional[str] = None) -> Optional[Path]:
    """Image of one layer's masks summed over every checkpoint (DynSparse paper, Fig. 11 style)."""
    if not run.snapshots:
        return None
    layer = layer or run.snapshots[-1].record["modules"][0]["name"]
    total, n = None, 0
    for snap in run.snapshots:
        masks = snap.masks()
        if layer not in masks:
            raise ValueError(f"Layer {layer!r} is not in checkpoint {snap.path}; known: {sorted(masks)[:5]}...")
        m = masks[layer].to(torch.int32)
        total = m if total is None else total + m
        n += 1
    fig, ax = plt.subplots(figsize=(6.5, 5))
    image = ax.imshow(total.numpy(), cmap="viridis", vmin=0, vmax=n, aspect="auto", interpolation="nearest")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"checkpoints in which the weight is active (of {n})")
    rows, cols = total.shape
    ax.set_xlabel(f"weight column (dim 1, size {cols})")
    ax.set_ylabel(f"weight row (dim 0, size {rows})")
    ax.set_title(f"{run.name}: {layer}\nmasks summed over {n} checkpoints", fontsize=9)
    return _save(fig, path)


def threshold_sparsity_curves(run: RunData, path: Path) -> Optional[Path]:
    """Threshold sparsity ``s(eps)`` (fraction of weights with ``|w| < eps``) over training."""
    data = run.threshold
    if not data or not data.get("step"):
        return None
    steps, eps, groups = data["step"], data["thresholds"], data["sparsity"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    whole = torch.tensor(groups.get("all") or next(iter(groups.values())), dtype=torch.float64)
    for j, e in enumerate(eps):
        left.plot(steps, whole[:, j].tolist(), marker=".", label=f"eps = {e:.2g}")
    left.set_title(f"{run.name}: all measured layers")
    # One threshold for the per-group panel: the one nearest 2^-13 (the Singh et al. 2024 paper's headline value).
    j = min(range(len(eps)), key=lambda i: abs(eps[i] - 2.0 ** -13))
    for g, values in groups.items():
        if g != "all":
            right.plot(steps, [row[j] for row in values], marker=".", label=g)
    right.set_title(f"per module group, eps = {eps[j]:.2g}")
    for ax in (left, right):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("threshold sparsity (fraction |w| < eps)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def pareto_front(points: Sequence[tuple]) -> List[tuple]:
    """The ``(flops, loss, ...)`` points no other point beats on both (fewer FLOPs and lower loss), by FLOPs."""
    front, best = [], float("inf")
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if p[1] < best:
            front.append(p)
            best = p[1]
    return front


def loss_vs_flops(runs: Sequence[RunData], path: Path) -> Optional[Path]:
    """Training loss against accumulated training FLOPs, every run on one plot, with the runs' Pareto front."""
    curves = [(run, run.series("loss", x="sparsity/train_flops")) for run in runs]
    curves = [(run, xy) for run, xy in curves if xy[0]]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finals = []
    for run, (xs, ys) in curves:
        line, = ax.plot(xs, ys, marker=".", ms=3, label=run.name)
        ax.scatter([xs[-1]], [ys[-1]], color=line.get_color(), s=40, zorder=3)
        finals.append((xs[-1], ys[-1], run.name))
    front = pareto_front(finals)
    if len(curves) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front (final points)")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (forward + backward, all processes)")
    ax.set_ylabel("training loss")
    ax.set_title("loss vs training FLOPs")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def decorrelation_vs_magnitude(run: RunData, path: Path, num_bins: int = 10) -> Optional[Path]:
    """Median decorrelation time per bin of final weight magnitude (top-k paper, Fig. 1)."""
    t = run.trajectories
    if t is None or t["series"].dim() != 2 or t["series"].shape[0] < 3:
        return None
    steps = t["step"].tolist()
    interval = max(1, min(b - a for a, b in zip(steps, steps[1:])))
    total = run.max_steps or (steps[-1] - steps[0]) or 1
    result = decorrelation_by_magnitude(t["series"].float(), total_steps=total, step_interval=interval,
                                        num_bins=num_bins)
    edges = result.bin_edges
    centres = ((edges[:-1] + edges[1:]) / 2).tolist()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(centres, result.median_delta.tolist(), marker="o")
    ax.set_xlabel("final weight magnitude |w| (bin centre, equal-count bins)")
    ax.set_ylabel("median decorrelation time / training steps")
    ax.set_title(f"{run.name}: decorrelation time vs final magnitude")
    ax.grid(alpha=0.3)
    return _save(fig, path)
