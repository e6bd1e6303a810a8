"""The study's figures: loss vs training FLOPs with the Pareto front (DynSparse Fig. 3 style), DOF curves (Fig. 11
style) and bars with seed error bars for the claims that compare arms at equal cost."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

from ..reporting.plots import pareto_front
from .verdicts import Stat, arm_stats


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def loss_vs_flops(decisions: Dict[str, Dict], claim_ids: List[str], path: Path, title: str) -> Optional[Path]:
    """Eval loss (mean ± std over seeds) against training FLOPs of every arm of ``claim_ids``, Pareto front dashed."""
    points, seen = {}, set()
    for cid in claim_ids:
        for label, runs in decisions.get(cid, {}).get("runs", {}).items():
            # An arm shared by several claims (same runs under another label) is drawn once, under its first label.
            key = tuple(r["eval_loss"] for r in runs)
            if runs and key not in seen:
                seen.add(key)
                loss = Stat.of([r["eval_loss"] for r in runs])
                points[label] = (sum(r["train_flops"] for r in runs) / len(runs), loss.mean, loss.std)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, (flops, mean, std)) in enumerate(points.items()):
        # Colours repeat after ten arms; the marker shape keeps every arm distinct.
        ax.errorbar(flops, mean, yerr=std, fmt="osD^vP*X"[i % 8], capsize=3, label=label)
    front = pareto_front([(f, m) for f, m, _ in points.values()])
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=0.8, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("eval loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def dof_curves(decisions: Dict[str, Dict], claim_id: str, path: Path) -> Optional[Path]:
    """Explored degrees of freedom over training, mean over seeds, per arm of ``claim_id``."""
    runs = decisions.get(claim_id, {}).get("runs", {})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for label, rs in runs.items():
        curves = [r["dof"] for r in rs if r.get("dof")]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        steps = [curves[0][i][0] for i in range(n)]
        ax.plot(steps, [sum(c[i][1] for c in curves) / len(curves) for i in range(n)], label=label)
        drawn = True
    if not drawn:
        _pyplot().close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("DOF (fraction of weights ever active)")
    ax.set_title("Explored degrees of freedom (DynSparse Fig. 11 style)")
    ax.legend()
    return _save(fig, path)


def bars(decisions: Dict[str, Dict], claim_id: str, path: Path, metric: str = "eval_loss") -> Optional[Path]:
    """Mean ± std over seeds of ``metric`` per arm of ``claim_id``."""
    runs = decisions.get(claim_id, {}).get("runs", {})
    stats = arm_stats(runs, metric)
    if not stats:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = list(stats)
    means = [stats[k].mean for k in labels]
    ax.bar(range(len(labels)), means, yerr=[stats[k].std for k in labels], capsize=4, color="tab:blue")
    lo = min(m - stats[k].std for k, m in zip(labels, means))
    hi = max(m + stats[k].std for k, m in zip(labels, means))
    pad = max((hi - lo) * 0.5, 1e-3 if metric == "eval_loss" else 1e-4)
    if metric == "eval_loss" and math.isfinite(lo):
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    ax.set_ylabel({"eval_loss": "eval loss", "threshold": "threshold sparsity s(eps)"}.get(metric, metric))
    ax.set_title(decisions[claim_id]["claim"].title, fontsize=9)
    return _save(fig, path)


def all_figures(decisions: Dict[str, Dict], folder: Path) -> Dict[str, Path]:
    """Every figure the study's document shows, by name (figures without data are skipped)."""
    made = {
        "loss_vs_flops_bert": loss_vs_flops(decisions, ["calibration-bert", "dynsparse-vs-static", "block-size",
                                                        "sparse-lr-rule", "dynsparse-vs-static-eq3",
                                                        "block-size-eq3"], folder / "loss_vs_flops_bert.png",
                                            "BERT MLM: loss vs training FLOPs (DynSparse Fig. 3 style)"),
        "loss_vs_flops_gpt2": loss_vs_flops(decisions, ["calibration-gpt2", "sparse-wide"],
                                            folder / "loss_vs_flops_gpt2.png", "GPT-2: loss vs training FLOPs"),
        "dof": dof_curves(decisions, "dof-random-vs-gradient", folder / "dof.png"),
        "block_size": bars(decisions, "block-size", folder / "block_size.png"),
        "block_size_eq3": bars(decisions, "block-size-eq3", folder / "block_size_eq3.png"),
        "exploitation": bars(decisions, "exploitation", folder / "exploitation.png"),
        "nm": bars(decisions, "nm-vs-unstructured", folder / "nm.png"),
        "regularizers": bars(decisions, "regularizers", folder / "regularizers_threshold.png", metric="threshold"),
    }
    return {k: v for k, v in made.items() if v is not None}
