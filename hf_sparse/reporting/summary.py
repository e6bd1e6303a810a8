"""`write_report`: the figures and a markdown summary (plus ``summary.json``) for one or more runs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .run import RunData

logger = logging.getLogger(__name__)

REPORT_NAME = "report.md"
SUMMARY_NAME = "summary.json"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def run_summary(run: RunData) -> Dict[str, Any]:
    """Headline numbers of a run: taken from the training log, else from its last hf_sparse checkpoint."""
    snap = run.final_snapshot
    stats = dict((snap.record.get("training_stats") or {}) if snap else {})
    loss_steps, losses = run.series("loss")
    out: Dict[str, Any] = {
        "name": run.name,
        "path": str(run.path),
        "steps": int(loss_steps[-1]) if loss_steps else stats.get("step"),
        "final_loss": losses[-1] if losses else None,
        "train_flops": run.last("sparsity/train_flops") or stats.get("train_flops"),
        "dense_train_flops": run.last("sparsity/dense_train_flops") or stats.get("dense_train_flops"),
        "dof": run.last("sparsity/dof") if run.last("sparsity/dof") is not None else stats.get("dof"),
        "checkpoints": [str(s.path) for s in run.snapshots],
    }
    if out["train_flops"] and out["dense_train_flops"]:
        out["flops_ratio"] = out["train_flops"] / out["dense_train_flops"]
    if snap is not None:
        mods = snap.record["modules"]
        active, numel = sum(m["active"] for m in mods), sum(m["numel"] for m in mods)
        out["density"] = active / numel
        out["checkpoint_step"] = snap.step
        out["layers"] = [{"name": m["name"], "density": m["density"], "target_density": m.get("target_density"),
                          "active": m["active"], "numel": m["numel"]} for m in mods]
    return out


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _markdown(summaries: List[Dict[str, Any]], figures: Dict[str, Dict[str, Optional[str]]],
              shared: Dict[str, Optional[str]]) -> str:
    lines = ["# hf_sparse training report", ""]
    lines += ["| run | steps | final loss | training FLOPs | dense-equivalent FLOPs | FLOPs / dense | density | DOF |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(
            f"| {s['name']} | {_fmt(s['steps'], 'd')} | {_fmt(s['final_loss'], '.4f')} | "
            f"{_fmt(s['train_flops'], '.4e')} | {_fmt(s['dense_train_flops'], '.4e')} | "
            f"{_fmt(s.get('flops_ratio'), '.4f')} | {_fmt(s.get('density'), '.4f')} | {_fmt(s['dof'], '.4f')} |"
        )
    lines.append("")
    if shared.get("loss_vs_flops"):
        lines += ["## Loss vs training FLOPs", "", f"![loss vs training FLOPs]({shared['loss_vs_flops']})", ""]
    else:
        lines += ["_No run logged `sparsity/train_flops` with its losses: no loss-vs-FLOPs plot._", ""]
    titles = {
        "density_per_layer": "Density per layer",
        "dof": "Degrees of freedom over training",
        "mask_accumulation": "Masks accumulated over checkpoints",
        "threshold_sparsity": "Threshold sparsity",
        "decorrelation": "Decorrelation time vs final magnitude",
    }
    missing = {
        "density_per_layer": "no hf_sparse checkpoint (sparsity_config.json) found",
        "dof": "no `sparsity/dof` in the log and no checkpoint statistics",
        "mask_accumulation": "no hf_sparse checkpoint found",
        "threshold_sparsity": "no threshold_sparsity.json (MetricsCallback) found",
        "decorrelation": "no weight_trajectories.safetensors with 3+ snapshots found",
    }
    for s in summaries:
        lines += [f"## Run `{s['name']}`", "", f"Directory: `{s['path']}`; "
                  f"{len(s['checkpoints'])} hf_sparse checkpoint(s).", ""]
        if s.get("layers"):
            lines += [f"Layers at step {s['checkpoint_step']}:", "", "| layer | density | target | active / total |",
                      "|---|---:|---:|---:|"]
            for m in s["layers"]:
                lines.append(f"| {m['name']} | {m['density']:.4f} | {_fmt(m['target_density'], '.4f')} | "
                             f"{m['active']} / {m['numel']} |")
            lines.append("")
        for key, title in titles.items():
            path = figures[s["name"]].get(key)
            lines += [f"### {title}", "", f"![{title}]({path})" if path else f"_Not drawn: {missing[key]}._", ""]
    return "\n".join(lines)


def write_report(runs: Sequence[RunData], out: str | Path, layer: Optional[str] = None) -> Dict[str, Any]:
    """Draws every figure the runs have data for and writes ``report.md`` and ``summary.json`` into ``out``.

    Args:
        runs: Runs read with `load_run` (names must differ).
        out: Output directory (created).
        layer: Layer for the accumulated-mask image (default: the first sparse layer).

    Returns:
        The summary written to ``summary.json``: ``runs`` (numbers per run), ``figures`` (file names per run)
        and ``shared`` (figures with every run).

    Example:
        >>> write_report([load_run("out/s90"), load_run("out/s75")], "report")
    """
    from . import plots  # matplotlib is imported only when a report is drawn

    if not runs:
        raise ValueError("write_report needs at least one run.")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"Run names must differ, got {names}; pass distinct names.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = len(runs) > 1
    figures: Dict[str, Dict[str, Optional[str]]] = {}
    for run in runs:
        pre = f"{_slug(run.name)}-" if prefix else ""
        drawn = {
            "density_per_layer": plots.density_per_layer(run, out / f"{pre}density_per_layer.png"),
            "dof": plots.dof_over_training(run, out / f"{pre}dof.png"),
            "mask_accumulation": plots.mask_accumulation(run, out / f"{pre}mask_accumulation.png", layer),
            "threshold_sparsity": plots.threshold_sparsity_curves(run, out / f"{pre}threshold_sparsity.png"),
            "decorrelation": plots.decorrelation_vs_magnitude(run, out / f"{pre}decorrelation.png"),
        }
        figures[run.name] = {k: (p.name if p else None) for k, p in drawn.items()}
    flops_plot = plots.loss_vs_flops(runs, out / "loss_vs_flops.png")
    shared = {"loss_vs_flops": flops_plot.name if flops_plot else None}
    summaries = [run_summary(r) for r in runs]
    (out / REPORT_NAME).write_text(_markdown(summaries, figures, shared) + "\n", encoding="utf-8")
    result = {"runs": summaries, "figures": figures, "shared": shared}
    (out / SUMMARY_NAME).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote the report of %d run(s) to %s.", len(runs), out)
    return result
