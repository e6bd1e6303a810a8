"""The ``hf-sparse`` command line.

Sub-commands are registered in `COMMANDS` as ``name -> (help, add_arguments, run)``; each ``run`` takes the
parsed ``argparse.Namespace`` and returns an exit code. This is the top layer: it may print.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from .checkpoint import CHECKPOINT_COMMANDS
from .quickstart import QUICKSTART_COMMANDS
from .report import add_report_args, run_report


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("bert", "gpt2"), default="bert", help="Tiny model family to build.")
    p.add_argument("--sparsity", type=float, default=0.9, help="Target sparsity (ignored for N:M).")
    p.add_argument(
        "--structure", default="unstructured", choices=("unstructured", "block", "nm", "nm_transposable")
    )
    p.add_argument("--block_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="Training steps on synthetic tokens.")
    p.add_argument("--seed", type=int, default=0)


def _run_demo(args: argparse.Namespace) -> int:
    """Sparsifies a small randomly initialised model, prints the report and trains a few steps."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    from .. import SparsityConfig, sparse_modules, sparsify_, sparsity_report

    torch.manual_seed(args.seed)
    vocab, seq, batch = 512, 32, 8
    if args.model == "bert":  # BERT-Mini-like width, fewer layers so the demo runs in seconds on a CPU
        model = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=256, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=1024))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=256, n_layer=2, n_head=4, n_positions=seq,
                                           bos_token_id=0, eos_token_id=0))
    nm = args.structure in ("nm", "nm_transposable")
    cfg = SparsityConfig(sparsity=None if nm else args.sparsity, structure=args.structure,
                         block_size=args.block_size, init="truncated_normal", seed=args.seed)
    sparsify_(model, cfg)
    print(sparsity_report(model))

    # A synthetic task the model can learn quickly: each sequence repeats a short random motif.
    gen = torch.Generator().manual_seed(args.seed)
    motif = torch.randint(5, vocab, (batch, 4), generator=gen)
    ids = motif.repeat(1, seq // 4)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    first = last = None
    start = time.perf_counter()
    for step in range(args.steps):
        if args.model == "bert":
            masked = torch.rand(ids.shape, generator=gen) < 0.15
            inputs = ids.masked_fill(masked, 3)
            labels = ids.masked_fill(~masked, -100)
            loss = model(input_ids=inputs, labels=labels).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        first = loss.item() if first is None else first
        last = loss.item()
    elapsed = time.perf_counter() - start
    leaked = sum(int(torch.count_nonzero(m.weight[~m.weight_mask])) for m in sparse_modules(model).values())
    print(f"\ntrained {args.steps} steps in {elapsed:.1f}s: loss {first:.3f} -> {last:.3f}; "
          f"non-zero inactive weights after training: {leaked}")
    return 0 if leaked == 0 else 1


def _add_flops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("gpt2", "bert"), default="gpt2", help="Architecture (LM / pre-training heads).")
    p.add_argument("--hidden_size", type=int, default=768, help="n_embd / hidden_size.")
    p.add_argument("--intermediate_size", type=int, default=None, help="n_inner / intermediate_size (4x hidden).")
    p.add_argument("--num_layers", type=int, default=12)
    p.add_argument("--num_heads", type=int, default=12)
    p.add_argument("--vocab_size", type=int, default=None, help="Default: 50257 (GPT-2) / 30522 (BERT).")
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--sparsity", type=float, default=0.0, help="Uniform sparsity of the default target layers.")
    p.add_argument("--wide", action="store_true", help="Sparse Wide: widen the model for --sparsity first.")
    p.add_argument("--per_module", action="store_true", help="List every module.")
    p.add_argument("--json", action="store_true", help="Print the count as JSON.")


def _run_flops(args: argparse.Namespace) -> int:
    """Counts FLOPs of a dense / uniformly sparse / Sparse Wide BERT or GPT-2 without allocating weights."""
    import json

    import torch
    from transformers import BertConfig, BertForPreTraining, GPT2Config, GPT2LMHeadModel

    from ..config import SparsityConfig
    from ..flops.count import count
    from ..ift import widen_config
    from ..patching import find_target_modules

    if args.model == "gpt2":
        cls, config = GPT2LMHeadModel, GPT2Config(
            n_embd=args.hidden_size, n_inner=args.intermediate_size, n_layer=args.num_layers, n_head=args.num_heads,
            n_positions=max(args.seq_len, 1024), vocab_size=args.vocab_size or 50257)
    else:
        cls, config = BertForPreTraining, BertConfig(
            hidden_size=args.hidden_size, intermediate_size=args.intermediate_size or 4 * args.hidden_size,
            num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
            max_position_embeddings=max(args.seq_len, 512), vocab_size=args.vocab_size or 30522)
    sparsity = SparsityConfig(sparsity=args.sparsity)  # validates the value
    if args.wide:
        config = widen_config(config, sparsity.sparsity)
    with torch.device("meta"):  # sizes only
        model = cls(config)
    targets = find_target_modules(model, sparsity)
    result = count(model, seq_len=args.seq_len, batch_size=args.batch_size)
    result = result.with_densities({name: sparsity.density for name in targets})
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.to_table(per_module=args.per_module))
    return 0


Command = Tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: Dict[str, Command] = {
    "demo": ("Sparsify a tiny BERT / GPT-2, print the report, train a few steps.", _add_demo_args, _run_demo),
    "flops": ("Count dense / sparse / Sparse Wide FLOPs of a BERT or GPT-2 shape.", _add_flops_args, _run_flops),
    **CHECKPOINT_COMMANDS,  # inspect, densify, card
    "report": ("Plot a training run (or several): densities, DOF, masks, threshold sparsity, loss vs FLOPs.",
               add_report_args, run_report),
    **QUICKSTART_COMMANDS,  # quickstart
}


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-sparse`` argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="hf-sparse", description="Sparse training for Hugging Face models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``hf-sparse`` console script."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"hf-sparse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
