"""The study's reference checkpoint: its best small sparse BERT, re-trained once, saved with its model card.

`choose_reference` reads the stored runs only (no training); `train_reference` re-trains the chosen arm with seed 0
through `runner.train_arm`, the path every stored run took, saves it with `hf_sparse.save_pretrained` and copies the
rendered card to ``model_cards/``. The checkpoint stays out of git; the card, with its real numbers, is committed.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..checkpoint.save import MODEL_CARD_NAME
from .arms import Arm, Suite, run_key, unique_arms
from .claims import SUITES, build_claims
from .regime import EOS, MASK, PAD, build_corpus
from .runner import load_result, train_arm
from .study import cache_dir
from .verdicts import Stat

logger = logging.getLogger(__name__)

#: The reference is a masked LM: most claims of the study are about the BERT arms.
REFERENCE_MODEL = "bert"
#: Seed of the re-training: the study's first seed, so the stored seed-0 run is its twin.
REFERENCE_SEED = 0


def _suite(suite: Union[str, Suite]) -> Suite:
    if not isinstance(suite, Suite) and suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; the reference is trained for {sorted(SUITES)}.")
    return suite if isinstance(suite, Suite) else SUITES[suite]


def choose_reference(suite: Union[str, Suite], corpus_key: str, out_dir) -> Tuple[Arm, Dict[str, Any]]:
    """The sparse BERT arm with the lowest mean stored eval loss over the suite's seeds.

    Only arms whose seeds are all stored (and finite) compete, so the choice never rests on part of the seeds;
    ties go to the alphabetically first label, so the choice is deterministic.

    Args:
        suite: A `Suite` or the name of one in `claims.SUITES`.
        corpus_key: The study corpus's key (`regime.Corpus.key`); it is part of every run's hash.
        out_dir: The folder of the stored runs (``runs/<run_key>.json``).

    Returns:
        ``(arm, stats)``; ``stats``: ``mean``, ``std`` (sample), ``seeds``, ``eval_losses`` and ``keys`` per seed,
        ``compared`` (the labels of the arms that competed).

    Raises:
        ValueError: no sparse BERT arm has every seed stored (the message lists what is missing).

    Example:
        >>> arm, stats = choose_reference("cpu", corpus.key, "reproduction/results")
        >>> arm.label, stats["mean"]
    """
    settings = _suite(suite)
    arms = [a for a in unique_arms([a for c in build_claims(settings) for a in c.arms])
            if a.is_sparse and a.model == REFERENCE_MODEL]
    ranked, missing = [], []
    for arm in arms:
        keys = [run_key(arm, settings, s, corpus_key) for s in range(settings.seeds)]
        runs = [load_result(out_dir, k) for k in keys]
        absent = [s for s, r in enumerate(runs) if r is None]
        losses = [float(r["eval_loss"]) for r in runs if r is not None]
        if absent or not all(map(math.isfinite, losses)):
            missing.append(f"{arm.label} (seeds {absent} not stored)" if absent else f"{arm.label} (diverged)")
            continue
        stat = Stat.of(losses)
        ranked.append((stat.mean, arm.label, arm, {"mean": stat.mean, "std": stat.std, "seeds": stat.n,
                                                   "eval_losses": losses, "keys": keys}))
    if not ranked:
        raise ValueError(f"No sparse {REFERENCE_MODEL} arm of suite {settings.name!r} has all {settings.seeds} "
                         f"seeds stored in {out_dir} (corpus {corpus_key}): {'; '.join(missing) or 'no such arm'}. "
                         f"Run `hf-sparse reproduce --suite {settings.name}` first.")
    _, _, arm, stats = min(ranked, key=lambda r: (r[0], r[1]))
    return arm, {**stats, "compared": sorted(r[1] for r in ranked)}



def reference_command(suite: str, checkpoint_dir, seeds: Optional[int] = None, out_dir="reproduction/results",
                      data_dir="../shared/data", card_dir="model_cards") -> str:
    """The ``hf-sparse reproduce`` command that trains the reference (options only where they differ from the
    defaults, so the published card shows the plain command)."""
    given = (("--seeds", seeds, None), ("--out", out_dir, "reproduction/results"),
             ("--data_dir", data_dir, "../shared/data"), ("--card_dir", card_dir, "model_cards"))
    return " ".join([f"hf-sparse reproduce --suite {suite} --reference {checkpoint_dir}"] +
                    [f"{flag} {v}" for flag, v, default in given if v is not None and str(v) != str(default)])


def _tokenizer(out_dir, corpus_key: str):
    """The study's trained BPE as a transformers tokenizer (`regime.build_corpus` caches it beside the blocks),
    or ``None`` when the cache has no tokenizer file."""
    from transformers import PreTrainedTokenizerFast

    path = cache_dir(out_dir) / f"corpus-{corpus_key}" / "tokenizer.json"
    return PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token=PAD, eos_token=EOS, mask_token=MASK) \
        if path.is_file() else None


def train_reference(suite: str = "cpu", out_dir="reproduction/results", data_dir="../shared/data",
                    checkpoint_dir="reproduction/reference_checkpoint", card_dir="model_cards",
                    seeds: Optional[int] = None) -> Dict[str, Any]:
    """Re-trains the `choose_reference` arm with seed 0, saves it as a sparse checkpoint and publishes its card.

    Args:
        suite: ``"smoke"`` or ``"cpu"``.
        out_dir: The study's stored runs and corpus cache.
        data_dir: The shared data folder.
        checkpoint_dir: Where the checkpoint is saved (with the tokenizer when the corpus cache has one).
        card_dir: The rendered ``README.md`` is copied here as ``<model_name>.md``.
        seeds: Seeds per arm the choice requires (default the suite's).

    Returns:
        ``arm``, ``model_name``, ``checkpoint``, ``card``, ``eval_loss``, ``perplexity``, ``stored`` (the
        `choose_reference` stats), ``stored_seed0``, ``command``.

    Example:
        >>> train_reference("cpu")["card"]   # model_cards/bert-128x2-...-hf-sparse-reproduction.md
    """
    import hf_sparse

    settings = _suite(suite) if seeds is None else replace(_suite(suite), seeds=seeds)
    corpus = build_corpus(settings.corpus, data_dir, cache_dir(out_dir))
    arm, stats = choose_reference(settings, corpus.key, out_dir)
    logger.info("Reference arm of suite %s: %s (eval loss %.4f ± %.4f).", settings.name, arm.label, stats["mean"],
                stats["std"])
    kept = []
    with tempfile.TemporaryDirectory(prefix="hf-sparse-reference-") as work:
        measured = train_arm(arm, settings, corpus, REFERENCE_SEED, work, keep_model=kept)
    model, loss, stored0 = kept[0], measured["eval_loss"], stats["eval_losses"][REFERENCE_SEED]
    # Same code, seed and thread count should give the same bits; a difference says the environment changed.
    logger.info("Re-trained seed-%d eval loss %.6f %s the stored run's %.6f (difference %+.3g).", REFERENCE_SEED,
                loss, "equals" if loss == stored0 else "differs from", stored0, loss - stored0)
    same = "identical to it" if loss == stored0 else (
        f"a difference of {loss - stored0:+.3g} (library versions, threads or hardware differ from the stored run's)")
    slug = re.sub(r"[^a-z0-9]+", "-", arm.label.lower()).strip("-")
    model_name = f"bert-{model.config.hidden_size}x{settings.layers}-{slug}-hf-sparse-reproduction"
    command = reference_command(settings.name, checkpoint_dir, seeds, out_dir, data_dir, card_dir)
    c, st, tokenizer = settings.corpus, corpus.stats, _tokenizer(out_dir, corpus.key)
    over = f"{stats['seeds']} seed{'s' * (stats['seeds'] != 1)}"
    task = {"task_type": "fill-mask", "dataset_type": f"hf-sparse-reproduction-corpus-{corpus.key}",
            "dataset_name": "study corpus, held-out blocks"}
    results = [("loss", f"MLM eval loss (this checkpoint, seed {REFERENCE_SEED})", loss),
               ("perplexity", "MLM perplexity (this checkpoint)", math.exp(loss)),
               ("loss", f"MLM eval loss, study mean of {over} (std {stats['std']:.4f})", stats["mean"])]
    card_info = {
        "model_name": model_name, "training_command": command, "tags": ["hf-sparse-reproduction", "fill-mask"],
        "eval_results": [{**task, "metric_type": t, "metric_name": n, "metric_value": v} for t, n, v in results],
        "training_data": [
            f"The reproduction study's corpus `{corpus.key}` (`hf_sparse.reproduction.regime`): the shared "
            "WikiText-2 validation articles, Project Gutenberg sample books and the Pile-format arXiv sample"
            + (f" (first {c.max_chars:,} characters of each file)" if c.max_chars else "")
            + f"; {st['train_documents']} training documents, {st['train_tokens']:,} tokens in blocks of {c.seq_len}.",
            f"Byte-level BPE vocabulary of {corpus.vocab_size} tokens trained on the training documents only "
            + ("(saved with this checkpoint)." if tokenizer is not None else
               "(not saved here: `hf_sparse.reproduction.regime.build_corpus` rebuilds it from the same files)."),
            f"Masked-LM objective: {c.mlm_probability:.0%} of positions scored, BERT's 80/10/10 masking.",
        ],
        "eval_data": [f"Every {c.eval_every}th document held out ({st['eval_documents']} documents, never trained "
                      f"on): {c.eval_blocks} blocks of {c.seq_len} tokens with fixed masks, the same positions for "
                      "every arm of the study."],
        "intended_use": (f"It is the reference checkpoint of hf_sparse's reproduction study (REPRODUCTION.md), "
                         f"suite `{settings.name}`: the sparse BERT arm '{arm.label}' had the lowest mean eval loss "
                         f"({stats['mean']:.4f} ± {stats['std']:.4f} over {over}) of the sparse BERT "
                         f"arms with every seed stored ({', '.join(stats['compared'])})."),
        "limitations": (f"Re-trained with seed {REFERENCE_SEED}: eval loss {loss:.6f}; the study's stored seed-"
                        f"{REFERENCE_SEED} run of this arm measured {stored0:.6f}, {same}."),
    }
    # The dynamic config as train_arm builds it (static for Sparse-IFT without one), every default recorded.
    dynamic = arm.dynamic if arm.dynamic is not None else {"algorithm": "static"} if arm.ift is not None else None
    train_stats = {"step": settings.steps, "tokens": settings.steps * settings.batch_size * c.seq_len,
                   "dof": measured.get("final_dof"), "train_flops": measured["train_flops"],
                   "dense_train_flops": measured["dense_train_flops"]}
    path = hf_sparse.save_pretrained(model, checkpoint_dir, dynamic_config=dynamic and
                                     hf_sparse.DynamicSparsityConfig(**dynamic), ift_config=arm.ift,
                                     training_stats=train_stats, card_info=card_info, tokenizer=tokenizer)
    card = Path(card_dir) / f"{model_name}.md"
    card.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(path) / MODEL_CARD_NAME, card)
    logger.info("Saved the reference checkpoint to %s and its card to %s.", path, card)
    return {"arm": arm.label, "model_name": model_name, "checkpoint": Path(path), "card": card, "eval_loss": loss,
            "perplexity": math.exp(loss), "stored": stats, "stored_seed0": stored0, "command": command}
