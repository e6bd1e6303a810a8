"""``hf-sparse inspect | densify | card | bench-inference``: the checkpoint sub-commands (registered in `cli.COMMANDS`).

They work from the files alone (JSON + safetensors), without building the model: ``inspect`` validates the
checkpoint (checksums, masks, structures, zero pattern of the stored weights) and prints the per-layer table;
``densify`` writes a plain transformers checkpoint; ``card`` (re)renders ``README.md``. This is the CLI layer:
it may print.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

# Heavy imports (torch, transformers) happen inside the run functions, so `hf-sparse --help` stays fast.


def check_stored_weights(directory: Path, record: Dict[str, Any], masks: Dict[str, Any]) -> int:
    """Checks that every stored sparse weight is zero where its mask is inactive (safetensors only).

    Returns:
        The number of weights checked.

    Raises:
        CheckpointError: naming the module and the weight file when an inactive weight is non-zero or missing.
    """
    import torch
    from safetensors import safe_open

    from ..checkpoint.masks import MASKS_NAME, CheckpointError, weight_files

    wanted = {rec["name"] + ".weight": rec["name"] for rec in record["modules"]}
    frozen = {rec["name"] for rec in record["modules"] if rec.get("inactive_mode") == "frozen"}
    found: Dict[str, str] = {}
    for fname in weight_files(directory):
        with safe_open(str(directory / fname), framework="pt") as f:
            for key in set(f.keys()) & set(wanted):
                weight, name = f.get_tensor(key), wanted[key]
                if tuple(weight.shape) != tuple(masks[name].shape):
                    raise CheckpointError(f"{fname}: {key} has shape {tuple(weight.shape)}, its mask "
                                          f"{tuple(masks[name].shape)}.")
                # Frozen inactive weights are part of the effective weight: non-zero values are expected there.
                leaked = 0 if name in frozen else int(torch.count_nonzero(weight[~masks[name]]))
                if leaked:
                    raise CheckpointError(f"{fname}: module {name!r} has {leaked} non-zero weights where "
                                          f"{MASKS_NAME} marks them inactive.")
                found[key] = fname
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise CheckpointError(f"{directory}: no stored weight for sparse modules {missing}.")
    return len(found)


def _add_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="A sparse checkpoint directory.")
    p.add_argument("--json", action="store_true", help="Print the per-module records as JSON.")


def _run_inspect(args: argparse.Namespace) -> int:
    from ..checkpoint import read_checkpoint
    from ..structure import MaskStructure

    directory = Path(args.directory)
    record, masks = read_checkpoint(directory)
    check_stored_weights(directory, record, masks)
    rows: List[Dict[str, Any]] = []
    for rec in record["modules"]:
        # Forward multiply-adds of a linear layer: 2 FLOPs per active weight and token (dense: per weight).
        rows.append({"name": rec["name"], "layout": rec["layout"], "shape": "x".join(map(str, rec["shape"])),
                     "structure": MaskStructure(**rec["structure"]).describe(), "target": rec["target_density"],
                     "density": rec["density"], "active": rec["active"], "numel": rec["numel"],
                     "flops": 2 * rec["active"], "dense_flops": 2 * rec["numel"]})
    if args.json:
        print(json.dumps({"modules": rows, "training_stats": record.get("training_stats"),
                          "sparsity_config": record.get("sparsity_config")}, indent=2))
        return 0
    width = max(len("module"), *(len(r["name"]) for r in rows))
    head = (f"{'module':<{width}}  {'layout':<6}  {'shape':>10}  {'structure':<18}  {'target':>7}  {'density':>7}  "
            f"{'active':>10}  {'fwd FLOPs/token':>15}")
    print(f"{directory}: {record.get('model_class')} ({record.get('model_type')}), hf_sparse "
          f"{record.get('hf_sparse_version')}, format {record['format_version']}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<{width}}  {r['layout']:<6}  {r['shape']:>10}  {r['structure']:<18}  {r['target']:7.4f}  "
              f"{r['density']:7.4f}  {r['active']:>10}  {r['flops']:>15,}")
    print("-" * len(head))
    active, numel = sum(r["active"] for r in rows), sum(r["numel"] for r in rows)
    flops, dense = sum(r["flops"] for r in rows), sum(r["dense_flops"] for r in rows)
    print(f"total: {len(rows)} sparse modules, {active} / {numel} weights active (density {active / numel:.4f}, "
          f"sparsity {1 - active / numel:.4f}); forward FLOPs/token of these modules {flops:,} vs dense "
          f"{dense:,} ({flops / dense:.4f})")
    for key, value in (record.get("training_stats") or {}).items():
        print(f"training {key}: {value:.4g}" if isinstance(value, float) else f"training {key}: {value}")
    return 0


def _add_densify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="A sparse checkpoint directory.")
    p.add_argument("output", help="Where to write the plain (dense) transformers checkpoint.")


def _run_densify(args: argparse.Namespace) -> int:
    from ..checkpoint.atomic import atomic_directory
    from ..checkpoint import MODEL_CARD_NAME, SPARSITY_CONFIG_NAME, read_checkpoint
    from ..checkpoint.save import _carry_over
    from ..checkpoint.masks import MASKS_NAME, weight_files

    src, out = Path(args.directory), Path(args.output)
    if out.resolve() == src.resolve():
        raise ValueError(f"output {out} must differ from the checkpoint directory.")
    record, masks = read_checkpoint(src)  # validated before anything is written
    check_stored_weights(src, record, masks)
    own = {SPARSITY_CONFIG_NAME, MASKS_NAME, MODEL_CARD_NAME}
    with atomic_directory(out.resolve(), _carry_over) as tmp:
        # The stored weights already hold zeros where masks are inactive: the plain checkpoint is the same
        # config and weight files (plus tokenizer and other files), without hf_sparse's own files.
        for entry in sorted(os.listdir(src)):
            if entry in own or not (src / entry).is_file():
                continue
            shutil.copy2(src / entry, tmp / entry)
    print(f"wrote dense checkpoint {out} ({len(weight_files(out))} weight file(s)); load it with "
          f"{record.get('model_class') or 'AutoModel'}.from_pretrained({str(out)!r})")
    return 0


def _add_card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="A sparse checkpoint directory.")
    p.add_argument("--base_model", help="Hub id of the base model (omitted: keep the stored value).")
    p.add_argument("--dataset", action="append", dest="datasets",
                   help="Training dataset id, repeatable (omitted: keep the stored ids).")
    p.add_argument("--license", help="License id, e.g. apache-2.0 (omitted: keep the stored value).")
    p.add_argument("--language", help="Language code, e.g. en (omitted: keep the stored value).")
    p.add_argument("--repo_id", help="Repo id shown in the loading examples (omitted: keep the stored value).")
    p.add_argument("--eval_results",
                   help="JSON list of huggingface_hub.EvalResult keyword dicts (omitted: keep the stored ones).")
    p.add_argument("--stdout", action="store_true", help="Print the card instead of writing README.md.")


def _run_card(args: argparse.Namespace) -> int:
    from ..checkpoint.atomic import replace_file
    from ..checkpoint import MODEL_CARD_NAME, SPARSITY_CONFIG_NAME, read_sparsity_config
    from ..checkpoint.card import prepare_card_info, render_model_card

    directory = Path(args.directory)
    record = read_sparsity_config(directory)
    updates = {k: getattr(args, k) for k in ("base_model", "datasets", "license", "language", "repo_id")
               if getattr(args, k)}
    if args.eval_results:
        updates["eval_results"] = json.loads(Path(args.eval_results).read_text(encoding="utf-8"))
    # Stamps new evaluation results with today's date (and validates the keys) like save_pretrained's card_info.
    record["card"] = prepare_card_info({**(record.get("card") or {}), **updates})
    card = render_model_card(record)  # renders (and validates) before anything is written
    if args.stdout:
        print(card.content)
        return 0
    if updates:  # keep the card inputs with the checkpoint so a later re-render keeps them
        clean = dict(record, modules=[{k: v for k, v in m.items() if k != "_structure"} for m in record["modules"]])
        replace_file(directory / SPARSITY_CONFIG_NAME, json.dumps(clean, indent=2) + "\n")
    replace_file(directory / MODEL_CARD_NAME, card.content)
    print(f"wrote {directory / MODEL_CARD_NAME}")
    return 0


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="Sparse checkpoint directory.")
    p.add_argument("--batch_size", type=int, default=8, help="Sequences per timed forward pass.")
    p.add_argument("--seq_len", type=int, default=128, help="Tokens per sequence.")
    p.add_argument("--repeats", type=int, default=5, help="Timed forward passes per model (best is kept).")
    p.add_argument("--prompt_len", type=int, default=32, help="Causal LMs: prompt tokens of the generation run.")
    p.add_argument("--new_tokens", type=int, default=48,
                   help="Causal LMs: greedy tokens generated per run, batch 1 (0 skips the generation run).")
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")


def bench_model_class(directory: Path):
    """The transformers class to load a checkpoint for benchmarking: its ``config.json`` ``architectures[0]``
    (so every stored weight, heads included, finds its module and no unexpected-key report is printed), else
    `AutoModel`."""
    import transformers

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    for name in config.get("architectures") or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _run_bench(args: argparse.Namespace) -> int:
    """Loads the checkpoint sparse in its own class and times it dense vs converted for CPU inference (and greedy
    generation for causal LMs)."""
    from transformers.utils import logging as hf_logging

    from ..checkpoint import from_pretrained
    from ..kernels import benchmark_generation, benchmark_inference

    if args.batch_size < 1 or args.seq_len < 1:
        raise ValueError(f"--batch_size={args.batch_size} and --seq_len={args.seq_len} must be positive.")
    if args.prompt_len < 1 or args.new_tokens < 0:
        raise ValueError(f"--prompt_len={args.prompt_len} must be positive and --new_tokens={args.new_tokens} "
                         ">= 0.")
    directory = Path(args.directory)
    cls = bench_model_class(directory)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # generation-config notes on a timing run are not the user's to act on
    try:
        model = from_pretrained(cls, str(directory)).eval()
        result = benchmark_inference(model, batch_size=args.batch_size, seq_len=args.seq_len, repeats=args.repeats)
        generation = None
        if args.new_tokens and callable(getattr(model, "can_generate", None)) and model.can_generate():
            generation = benchmark_generation(model, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                              repeats=args.repeats)
    finally:
        hf_logging.set_verbosity(verbosity)
    if args.json:
        out = {"model_class": type(model).__name__, **result.to_dict()}
        if generation is not None:
            out["generation"] = generation.to_dict()
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.directory}: {type(model).__name__}, batch {args.batch_size} x {args.seq_len} tokens, "
          f"best of {args.repeats}")
    print(f"dense {result.dense_seconds * 1e3:.1f} ms, sparse {result.sparse_seconds * 1e3:.1f} ms: "
          f"{result.speedup:.2f}x (max |difference| {result.max_abs_diff:.2e})")
    for kind, choice in result.choices.items():
        print(f"  {kind}: {choice.method}")
    if generation is not None:
        g = generation.to_dict()
        print(f"greedy generation, batch 1, {args.prompt_len} prompt + {args.new_tokens} new tokens, median of "
              f"{args.repeats}: dense {g['dense_tokens_per_second']:.1f} tokens/s, sparse "
              f"{g['sparse_tokens_per_second']:.1f} tokens/s: {generation.speedup:.2f}x (same tokens: "
              f"{'yes' if generation.same_tokens else 'NO'})")
        for kind, choice in generation.choices.items():
            print(f"  {kind}: prefill {choice.method}, decode {choice.decode_method}"
                  + (f" (up to {choice.few_rows} rows)" if choice.few_rows else ""))
    return 0


#: Entries for `cli.COMMANDS`: ``name -> (help, add_arguments, run)``.
CHECKPOINT_COMMANDS = {
    "bench-inference": ("Time CPU inference of a sparse checkpoint against its dense model.", _add_bench_args,
                        _run_bench),
    "inspect": ("Validate a sparse checkpoint and print its per-layer sparsity table.", _add_inspect_args,
                _run_inspect),
    "densify": ("Write a plain transformers checkpoint (for dense fine-tuning) from a sparse one.",
                _add_densify_args, _run_densify),
    "card": ("(Re)render the model card README.md of a sparse checkpoint.", _add_card_args, _run_card),
}
# `mask_io.CheckpointError` subclasses ValueError, so `cli.main` reports it as a clean error with exit code 2.
