"""REPRODUCTION.md: the study's regime, rules, results table and figures, rendered from the stored runs only."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

from .arms import Suite
from .claims import THRESHOLD
from . import verdicts
from .verdicts import MISSING, Stat
from .study import gpu_commands

_REGIME = """\
**Data.** Real text from the shared data folder: the WikiText-2 validation articles (split at their
` = Title = ` headings), 2.8 MB of Project Gutenberg books (runs of 40 paragraphs per document) and the 20 arXiv
papers of the Pile-format sample. Every 10th document is held out; the evaluation blocks and their MLM masks are
fixed once, so every arm is scored on the same {eval_tokens:,} tokens, never trained on. A byte-level BPE vocabulary
of {vocab_size:,} tokens is trained on the training documents only ({train_tokens:,} training tokens).

**Why.** The previous calibration on this machine (BERT-Mini, 30k WordPiece vocabulary) stayed in the unigram regime:
the embeddings held most parameters and a larger model did not help, so no sparse ordering could be read. A small
vocabulary moves the parameters into the transformer layers the claims are about, real text keeps the task
meaningful, and one pass over fresh text (no repeated data) keeps memorisation out. The calibration rows below show
whether capacity can be seen at all in this regime.

**Models and training.** BERT (masked LM, 15% masking 80/10/10) and GPT-2 (causal LM) with hidden size
{hidden}, {layers} layers, {heads} heads, sequence length {seq_len}; AdamW, peak learning rate {lr} with
{warmup:.0%} linear warm-up and linear decay, weight decay {weight_decay}, {steps} steps of {batch_size} sequences
({tokens:,} tokens per run), one thread per run. Sparse models start from a random mask and truncated-normal
weights (std 0.02). Every arm is trained by `hf_sparse.SparseTrainer` (the public API), with the package's
algorithm defaults except what the claim varies. Training FLOPs are counted by the package (`sparsity/train_flops`)
for sparse runs and by `hf_sparse.flops.count` for dense ones.
"""


def unigram_baselines(corpus) -> Dict[str, float]:
    """Cross-entropy of a context-free guess (the training unigram distribution) on the evaluation tokens: the loss
    a model that ignores the context would reach, for the causal (all tokens) and the MLM (masked positions) task."""
    import torch

    counts = torch.bincount(corpus.train.flatten(), minlength=corpus.vocab_size).double() + 1.0  # add-one
    logp = (counts / counts.sum()).log()
    scored = corpus.eval_mlm_labels[corpus.eval_mlm_labels != -100]
    return {"gpt2": float(-logp[corpus.eval[:, 1:].flatten()].mean()), "bert": float(-logp[scored].mean())}


def _fmt_flops(runs: List[Dict]) -> str:
    return f"{sum(r['train_flops'] for r in runs) / len(runs):.3g}" if runs else "-"


def _arm_rows(decision: Dict) -> List[str]:
    rows = ["| arm | seeds | eval loss | train FLOPs | density | final DOF | s(" + THRESHOLD + ") |",
            "|---|---|---|---|---|---|---|"]
    for label, runs in decision["runs"].items():
        if not runs:
            rows.append(f"| {label} | 0 | - | - | - | - | - |")
            continue
        loss = Stat.of([r["eval_loss"] for r in runs])
        dofs = [r["final_dof"] for r in runs if r.get("final_dof") is not None]
        dof = str(Stat.of(dofs)) if dofs else "-"
        thr = Stat.of([r["threshold_sparsity"].get(THRESHOLD, 0.0) for r in runs])
        rows.append(f"| {label} | {len(runs)} | {loss} | {_fmt_flops(runs)} | {runs[0]['density']:.3f} | {dof} | "
                    f"{thr.mean:.4f} |")
    return rows


def _measured(decision: Dict) -> str:
    return "; ".join(o.text for o in decision["outcomes"])


def render(decisions: Dict[str, Dict], suite: Suite, corpus_stats: Dict, figures: Dict[str, Path],
           doc_dir: Path, discussion: Optional[str] = None, baselines: Optional[Dict[str, float]] = None) -> str:
    """The markdown of REPRODUCTION.md.

    Args:
        decisions: `reproduce`'s output.
        suite: The suite the runs belong to.
        corpus_stats: The corpus statistics (`Corpus.stats`).
        figures: Figure paths by name (`plots.all_figures`).
        doc_dir: Folder of the markdown file (figure links are relative to it).
        discussion: Hand-written discussion appended verbatim (``reproduction/discussion.md``).
        baselines: Unigram cross-entropies per model kind (`unigram_baselines`), shown with the regime.

    Returns:
        The document.
    """
    runs = [r for d in decisions.values() for rs in d["runs"].values() for r in rs]
    unique = {r["key"]: r for r in runs}
    cpu_h = sum(r["cpu_s"] for r in unique.values()) / 3600
    dates = sorted({r["date"] for r in unique.values()})
    s = asdict(suite)
    lines = [
        "# Reproducing the papers' claims at small scale",
        "",
        "Generated from the stored runs by `hf-sparse reproduce --suite " + suite.name
        + " --out reproduction/results --write REPRODUCTION.md` (do not edit by hand; the discussion at the end "
        "comes from `reproduction/discussion.md`). Runs are cached by a hash of their full configuration in "
        "`reproduction/results/runs/`: the same command resumes an unfinished suite and regenerates this file.",
        "",
        f"Suite `{suite.name}`: {len(unique)} runs, {cpu_h:.2f} CPU-hours in all, run on "
        f"{', '.join(dates) or '-'} on {platform.machine()} ({os.cpu_count()} cores, torch threads per run: "
        f"{suite.threads}).",
        "",
        "## Results",
        "",
        "| claim | paper | where | verdict | measured (mean ± std over seeds) |",
        "|---|---|---|---|---|",
    ]
    for cid, d in decisions.items():
        c = d["claim"]
        lines.append(f"| {c.title} | {c.paper} | {c.where} | **{d['verdict']}** | {_measured(d)} |")
    lines += ["", "## Regime", "", _REGIME.format(
        eval_tokens=corpus_stats.get("eval_tokens", 0), vocab_size=corpus_stats.get("vocab_size", 0),
        train_tokens=corpus_stats.get("train_tokens", 0), hidden=s["hidden"], layers=s["layers"], heads=s["heads"],
        seq_len=s["corpus"]["seq_len"], lr=s["lr"], warmup=s["warmup_fraction"], weight_decay=s["weight_decay"],
        steps=s["steps"], batch_size=s["batch_size"], tokens=s["steps"] * s["batch_size"] * s["corpus"]["seq_len"]),
        ("**Context-free baseline.** A guess from the training unigram distribution scores "
         f"{baselines['bert']:.3f} (BERT, masked positions) and {baselines['gpt2']:.3f} (GPT-2, next tokens) on the "
         "evaluation tokens: an eval loss below these means the model uses the context.\n") if baselines else "",
        "## Verdict rules (declared before the runs)", "", (verdicts.__doc__ or "").split("Rules (REPRODUCTION.md states them too):")[-1].strip(), ""]
    lines += ["## Claims in detail", ""]
    for cid, d in decisions.items():
        c = d["claim"]
        lines += [f"### {c.title}", "", f"{c.paper}, {c.where}. Verdict: **{d['verdict']}**.", ""]
        if c.note:
            lines += [c.note, ""]
        lines += _arm_rows(d) + [""]
        lines += [f"- {o.comparison.better} vs {o.comparison.worse} ({o.comparison.metric}, {o.comparison.mode}): "
                  f"{o.verdict} — {o.text}" for o in d["outcomes"]]
        lines += ["", f"Regenerate: `hf-sparse reproduce --suite {suite.name} --claims {cid} --out "
                      "reproduction/results`", ""]
        if d["verdict"] == MISSING:
            lines += ["Not all runs (every arm x every seed) of this claim are stored yet, so it has no verdict; the "
                      "same command resumes the suite where it stopped.", ""]
    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            lines += [f"![{name}]({os.path.relpath(path, doc_dir)})", ""]
    lines += ["## At the papers' scale (GPU suite, not run here)", "",
              "`hf-sparse reproduce --suite gpu` prints these recipe commands (one per arm; add seeds with "
              "`--seed`):", "", "```bash", *gpu_commands(), "```", ""]
    if discussion:
        lines += ["## Discussion", "", discussion.strip(), ""]
    return "\n".join(lines)


def write_document(decisions: Dict[str, Dict], suite: str, out_dir: os.PathLike, data_dir: os.PathLike,
                   path: os.PathLike = "REPRODUCTION.md", figures_dir: os.PathLike = "reproduction") -> Path:
    """Draws the figures and writes the study document (atomically).

    Args:
        decisions: `reproduce`'s output for ``suite``.
        suite: The suite name.
        out_dir: The stored runs' folder.
        data_dir: The shared data folder (for the corpus statistics).
        path: The markdown file.
        figures_dir: Folder of the PNG figures.

    Returns:
        The written path.

    Example:
        >>> write_document(reproduce("cpu", run=False), "cpu", "reproduction/results", "../shared/data")
    """
    from .claims import SUITES
    from .regime import build_corpus
    from .study import cache_dir
    from .plots import all_figures

    settings = SUITES[suite]
    corpus = build_corpus(settings.corpus, data_dir, cache_dir(out_dir))
    path = Path(path)
    figures = all_figures(decisions, Path(figures_dir))
    discussion_file = Path(figures_dir) / "discussion.md"
    discussion = discussion_file.read_text(encoding="utf-8") if discussion_file.is_file() else None
    text = render(decisions, settings, corpus.stats, figures, path.resolve().parent, discussion,
                  unigram_baselines(corpus))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
