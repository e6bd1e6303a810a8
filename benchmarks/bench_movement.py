"""Fine-pruning a dense tiny BERT on SQuAD to 10% density: dense vs GMP vs movement vs soft movement.

A small-scale version of the comparison of Sanh, Wolf & Rush (2020, arXiv:2005.07683, SQuAD v1.1, BERT-base with
distillation). There are no pre-trained weights here, so the benchmark first trains its own dense model:

1. **Dense teacher / starting checkpoint.** A tiny BERT (built from a config, bert-base-uncased vocabulary) is
   trained on the question answering task from scratch for ``--dense-steps`` steps (seed 0). This stands in for
   the fine-tuned dense checkpoint of the paper: it is both where fine-pruning starts and the distillation teacher.
2. **Fine-pruning, same budget for every method.** From that checkpoint, ``--prune-steps`` more steps of
   training (AdamW, linear decay) with knowledge distillation from the dense model (``T=2``, ``alpha=0.5``):
   ``dense`` (no pruning), ``gmp``, ``movement`` and ``soft_movement`` to ``--density`` (10%) of the encoder's
   linear weights, all on the same cubic schedule (dense until 10% of the run, the target at 70%, an update every
   10 steps, fixed masks afterwards). Each method runs with every seed of ``--seeds`` (the seed sets the data order).

Data: the shared SQuAD v1.1 dev articles 00-23 (``../shared/data/squad``). Every fifth question of each paragraph
is held out for evaluation; the others train. Held-out questions share their contexts with training questions,
which keeps the task learnable for a model trained from scratch on a few thousand questions; the numbers are far
below the paper's and only compare the methods with each other.

One thread (``torch.set_num_threads(1)``). The default settings take about 15 CPU-minutes (estimated from the step
costs measured on the 2-core development machine: 0.18 s per dense step, 0.24 s with the teacher, 6 s per evaluation,
30 s of tokenisation).

Usage:
    PYTHONPATH=. python benchmarks/bench_movement.py [--seeds 0 1 2] [--dense-steps 600] [--prune-steps 250]
        [--json benchmarks/results/movement.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Dict, List

import datasets
import numpy as np
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast, get_linear_schedule_with_warmup

from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import SparsityController
from hf_sparse.data.squad import (
    load_squad_json, postprocess_predictions, prepare_eval_features, prepare_train_features, to_metric_format,
)
from hf_sparse.data.squad_metric import compute_squad
from hf_sparse.trainer.distill import DistillationConfig, Distiller

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ("dense", "gmp", "movement", "soft_movement")
FEATURE_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def split_questions(path: Path):
    """Train / eval examples: every fifth question of each paragraph is held out."""
    full = load_squad_json(path)
    by_context: Dict[str, int] = {}
    held = []
    for context in full["context"]:
        k = by_context.get(context, 0)
        by_context[context] = k + 1
        held.append(k % 5 == 4)
    held = np.array(held)
    return full.select(np.nonzero(~held)[0]), full.select(np.nonzero(held)[0])


def build_data(args, tokenizer):
    train_ex, eval_ex = split_questions(Path(args.squad))
    if args.eval_questions is not None:
        eval_ex = eval_ex.select(range(min(args.eval_questions, len(eval_ex))))
    train = train_ex.map(lambda b: prepare_train_features(b, tokenizer, args.max_length, args.stride),
                         batched=True, remove_columns=train_ex.column_names)
    evalf = eval_ex.map(lambda b: prepare_eval_features(b, tokenizer, args.max_length, args.stride),
                        batched=True, remove_columns=eval_ex.column_names)
    tensors = {k: torch.tensor(train[k]) for k in (*FEATURE_COLUMNS, "start_positions", "end_positions")}
    eval_tensors = {k: torch.tensor(evalf[k]) for k in FEATURE_COLUMNS}
    # Only the token ids these articles use get an embedding row: a 30522-row table would make the dense embedding
    # update most of a tiny model's step time. [PAD] (id 0) stays 0.
    used = torch.unique(torch.cat([tensors["input_ids"].reshape(-1), eval_tensors["input_ids"].reshape(-1)]))
    remap = torch.zeros(int(used.max()) + 1, dtype=torch.long)
    remap[used] = torch.arange(used.numel())
    tensors["input_ids"], eval_tensors["input_ids"] = remap[tensors["input_ids"]], remap[eval_tensors["input_ids"]]
    return tensors, eval_ex, evalf, eval_tensors, used.numel()


def tiny_bert(args, vocab_size: int) -> BertForQuestionAnswering:
    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(
        vocab_size=vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
        intermediate_size=4 * args.hidden, max_position_embeddings=args.max_length,
    ))


def batches(tensors, batch: int, steps: int, seed: int):
    n = tensors["input_ids"].shape[0]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        yield {k: v[idx] for k, v in tensors.items()}


def train(model, tensors, steps: int, lr: float, batch: int, seed: int, controller_args=None, distiller=None):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * steps), steps)
    ctrl = SparsityController(model, opt, *controller_args, total_steps=steps) if controller_args else None
    model.train()
    for step, b in enumerate(batches(tensors, batch, steps, seed), start=1):
        out = model(**b)
        loss = out.loss if distiller is None else distiller.loss(out.loss, out, distiller.teacher_outputs(b), b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if ctrl is not None:
            ctrl.step(step)
    if ctrl is not None:
        ctrl.close()
    return ctrl


@torch.no_grad()
def evaluate(model, eval_ex, evalf, eval_tensors) -> Dict[str, float]:
    model.eval()
    starts, ends = [], []
    for i in range(0, eval_tensors["input_ids"].shape[0], 64):
        out = model(**{k: v[i:i + 64] for k, v in eval_tensors.items()})
        starts.append(out.start_logits.numpy())
        ends.append(out.end_logits.numpy())
    answers = postprocess_predictions(eval_ex, evalf, np.concatenate(starts), np.concatenate(ends))
    return compute_squad(*to_metric_format(answers, eval_ex))


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--squad", default=str(SHARED / "squad" / "squad-v1.1-dev-articles-00-23.json"))
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "bert-base-uncased"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--dense-steps", type=int, default=600)
    p.add_argument("--prune-steps", type=int, default=250)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="dense training")
    p.add_argument("--prune-lr", type=float, default=5e-4, help="fine-pruning")
    p.add_argument("--eval-questions", type=int, default=None, help="evaluate on the first N held-out questions")
    p.add_argument("--no-distill", action="store_true")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()
    if not Path(args.squad).is_file():
        raise SystemExit(f"SQuAD articles not found at {args.squad}")
    cpu0 = time.process_time()
    tokenizer = BertTokenizerFast.from_pretrained(args.tokenizer)
    tensors, eval_ex, evalf, eval_tensors, vocab_size = build_data(args, tokenizer)
    print(f"{tensors['input_ids'].shape[0]} train windows, {len(eval_ex)} held-out questions, vocabulary {vocab_size}")

    teacher = tiny_bert(args, vocab_size)
    train(teacher, tensors, args.dense_steps, args.lr, args.batch, seed=0)
    dense_start = {k: v.clone() for k, v in teacher.state_dict().items()}
    results = {"teacher": evaluate(teacher, eval_ex, evalf, eval_tensors), "runs": {}}
    print(f"dense starting checkpoint: EM {results['teacher']['exact_match']:.2f} F1 {results['teacher']['f1']:.2f}")

    for method in args.methods:
        for seed in args.seeds:
            model = tiny_bert(args, vocab_size)
            model.load_state_dict(dense_start)
            ctrl_args = None
            if method != "dense":
                sparsity = SparsityConfig(sparsity=1.0 - args.density, seed=seed,
                                          target_modules=["query", "key", "value", "dense"])
                # Only the encoder: the QA head (qa_outputs) and the pooler stay dense.
                dyn = DynamicSparsityConfig(algorithm=method, update_interval=10, start_fraction=0.1,
                                            end_fraction=0.7, seed=seed)
                ctrl_args = (sparsity, dyn)
            distiller = None if args.no_distill else Distiller(teacher, DistillationConfig(temperature=2.0, alpha=0.5))
            ctrl = train(model, tensors, args.prune_steps, args.prune_lr, args.batch, seed=seed,
                         controller_args=ctrl_args, distiller=distiller)
            metrics = evaluate(model, eval_ex, evalf, eval_tensors)
            if ctrl is not None:
                metrics["density"] = ctrl.last_metrics["sparsity/density"]
            results["runs"].setdefault(method, []).append({"seed": seed, **metrics})
            print(f"{method:14s} seed {seed}: EM {metrics['exact_match']:.2f} F1 {metrics['f1']:.2f}"
                  + (f" density {metrics['density']:.4f}" if "density" in metrics else ""), flush=True)

    print(f"\n| method | EM (mean +- sd) | F1 (mean +- sd) | seeds |\n|---|---|---|---|")
    summary = {}
    for method, runs in results["runs"].items():
        em = [r["exact_match"] for r in runs]
        f1 = [r["f1"] for r in runs]
        sd = (lambda x: statistics.stdev(x) if len(x) > 1 else 0.0)
        summary[method] = {"em": statistics.mean(em), "em_sd": sd(em), "f1": statistics.mean(f1), "f1_sd": sd(f1)}
        print(f"| {method} | {summary[method]['em']:.2f} +- {summary[method]['em_sd']:.2f} "
              f"| {summary[method]['f1']:.2f} +- {summary[method]['f1_sd']:.2f} | {len(runs)} |")
    results["summary"] = summary
    results["settings"] = vars(args)
    results["cpu_minutes"] = (time.process_time() - cpu0) / 60
    print(f"CPU time: {results['cpu_minutes']:.1f} min")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
