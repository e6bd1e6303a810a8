"""`reproduce`: run (or resume) a suite of the study and decide its claims.

Runs go in claim order, calibration first, every seed of an arm before the next arm, so an interrupted suite has
complete arms to show. ``jobs=2`` runs two arms side by side in two processes of one thread each (the 2-core
machines this suite is sized for). Stored runs are never repeated.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .arms import Arm, Suite, run_key, unique_arms
from .claims import SUITES, Claim, build_claims
from .regime import build_corpus
from .runner import load_result, run_or_load
from .verdicts import decide

logger = logging.getLogger(__name__)


def cache_dir(out_dir: os.PathLike) -> Path:
    """Where the corpus cache of ``out_dir`` lives (``cache/``, never committed: it is rebuilt in seconds)."""
    return Path(out_dir) / "cache"


def select_claims(suite: Suite, claim_ids: Optional[Sequence[str]] = None) -> List[Claim]:
    """The suite's claims, optionally only ``claim_ids`` (the calibration of their models is always kept)."""
    claims = build_claims(suite)
    if not claim_ids:
        return claims
    known = {c.id for c in claims}
    unknown = sorted(set(claim_ids) - known)
    if unknown:
        raise ValueError(f"Unknown claims {unknown}; known: {sorted(known)}.")
    models = {a.model for c in claims if c.id in claim_ids for a in c.arms}
    return [c for c in claims if c.id in claim_ids or (c.id.startswith("calibration") and c.arms[0].model in models)]


def _run_one(args) -> str:
    arm, suite, seed, data_dir, out_dir = args
    corpus = build_corpus(suite.corpus, data_dir, cache_dir(out_dir))
    run_or_load(arm, suite, corpus, seed, out_dir)
    return arm.label


def reproduce(suite: str = "cpu", claims: Optional[Sequence[str]] = None, seeds: Optional[int] = None,
              out_dir: os.PathLike = "reproduction/results", data_dir: os.PathLike = "../shared/data",
              jobs: int = 1, run: bool = True) -> Dict[str, Dict]:
    """Runs the missing runs of a suite (unless ``run=False``) and decides every claim from the stored runs.

    Args:
        suite: ``"smoke"`` or ``"cpu"`` (the ``gpu`` suite is printed by `gpu_commands`, not run here).
        claims: Claim ids to run (default all).
        seeds: Seeds per arm (default the suite's).
        out_dir: Where run results (``runs/*.json``) and the corpus cache live.
        data_dir: The shared data folder.
        jobs: Runs side by side (each in its own process with the suite's thread count).
        run: ``False`` only decides from what is stored.

    Returns:
        ``{claim id: decision}`` (see `verdicts.decide`), each with its ``claim`` and ``runs``.

    Example:
        >>> decisions = reproduce("smoke", out_dir="/tmp/repro")
        >>> decisions["dynsparse-vs-static"]["verdict"]
    """
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; choose from {sorted(SUITES)} (the gpu suite is printed by "
                         "`hf-sparse reproduce --suite gpu`).")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    settings = SUITES[suite] if seeds is None else replace(SUITES[suite], seeds=seeds)
    chosen = select_claims(settings, claims)
    corpus = build_corpus(settings.corpus, data_dir, cache_dir(out_dir))
    arms = unique_arms([a for c in chosen for a in c.arms])
    todo = [(a, s) for a in arms for s in range(settings.seeds)
            if load_result(out_dir, run_key(a, settings, s, corpus.key)) is None]
    if run and todo:
        logger.info("%d runs to do in suite %s (%d stored).", len(todo), suite,
                    len(arms) * settings.seeds - len(todo))
        work = [(a, settings, s, str(data_dir), str(out_dir)) for a, s in todo]
        if jobs == 1:
            for item in work:
                _run_one(item)
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for label in pool.map(_run_one, work):
                    logger.info("finished %s", label)
    return decide_all(settings, chosen, corpus.key, out_dir)


def stored_runs(arms: Sequence[Arm], suite: Suite, corpus_key: str, out_dir: os.PathLike) -> Dict[str, List[Dict]]:
    """``{arm label: [stored results over the suite's seeds]}``."""
    out: Dict[str, List[Dict]] = {}
    for arm in arms:
        found = [load_result(out_dir, run_key(arm, suite, s, corpus_key)) for s in range(suite.seeds)]
        out[arm.label] = [r for r in found if r is not None]
    return out


def decide_all(suite: Suite, claims: Sequence[Claim], corpus_key: str, out_dir: os.PathLike) -> Dict[str, Dict]:
    """Decides every claim from the stored runs; calibrations first, so claims know whether theirs passed."""
    decisions: Dict[str, Dict] = {}
    calibrated: Dict[str, Optional[bool]] = {}
    for claim in sorted(claims, key=lambda c: not c.id.startswith("calibration")):
        runs = stored_runs(claim.arms, suite, corpus_key, out_dir)
        model = claim.arms[0].model
        decision = decide(claim, runs, calibrated.get(model))
        if any(len(rs) < suite.seeds for rs in runs.values()):
            # A verdict from some of the seeds would be read as final; the suite resumes to complete it.
            decision["verdict"] = "missing"
        if claim.id.startswith("calibration"):
            calibrated[model] = None if decision["verdict"] == "missing" else decision["verdict"] == "reproduced"
        decisions[claim.id] = {**decision, "claim": claim, "runs": runs}
    return {c.id: decisions[c.id] for c in claims}


def gpu_commands() -> List[str]:
    """The commands that would run the claims at the papers' scale with the recipes (not run here)."""
    launch = "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml"
    return [
        f"{launch} recipes/pretrain_bert.py --config recipes/configs/bert-medium-dense.yaml",
        f"{launch} recipes/pretrain_bert.py --config recipes/configs/bert-medium-static-s0.9.yaml",
        f"{launch} recipes/pretrain_bert.py --config recipes/configs/bert-medium-dynsparse-s0.9.yaml",
        f"{launch} recipes/pretrain_bert.py --config recipes/configs/bert-medium-rigl-s0.9.yaml",
        f"{launch} recipes/pretrain_bert.py --config recipes/configs/bert-medium-dynsparse-block16-s0.9.yaml",
        *(f"{launch} recipes/pretrain_bert.py --config recipes/configs/bert-medium-dynsparse-s0.9.yaml "
          f"--sparsity.structure block --sparsity.block_size {b}" for b in (4, 8)),
        f"{launch} recipes/pretrain_bert.py --config recipes/configs/bert-medium-dynsparse-s0.9.yaml "
        "--dynamic.apply_sparse_lr false",
        *(f"{launch} recipes/pretrain_bert.py --config recipes/configs/bert-medium-topk-{e}-s0.9.yaml"
          for e in ("fix", "reset", "regularize")),
        f"{launch} recipes/pretrain_gpt2.py --config recipes/configs/gpt2-small-dense.yaml",
        f"{launch} recipes/pretrain_gpt2.py --config recipes/configs/gpt2-small-sparse-wide-s0.5.yaml",
        f"{launch} recipes/pretrain_gpt2.py --config recipes/configs/cerebras-gpt-111m-s0.5.yaml",
    ]
