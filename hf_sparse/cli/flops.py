"""``hf-sparse flops``: registered in `hf_sparse.cli.COMMANDS` (this top-layer module may print).

torch and transformers are imported inside `_run_flops`, so ``hf-sparse --help`` does not load them.
"""

from __future__ import annotations

import argparse


def _add_flops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("gpt2", "bert"), default="gpt2", help="Architecture (LM / pre-training heads).")
    p.add_argument("--hidden_size", type=int, default=768, help="n_embd / hidden_size.")
    p.add_argument("--intermediate_size", type=int, default=None,
                   help="n_inner / intermediate_size (omitted: 4x --hidden_size).")
    p.add_argument("--num_layers", type=int, default=12, help="Number of transformer layers.")
    p.add_argument("--num_heads", type=int, default=12, help="Attention heads per layer.")
    p.add_argument("--vocab_size", type=int, default=None,
                   help="Vocabulary size (omitted: 50257 for GPT-2, 30522 for BERT).")
    p.add_argument("--seq_len", type=int, default=1024, help="Tokens per sequence.")
    p.add_argument("--batch_size", type=int, default=1, help="Sequences per batch.")
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


#: Entries for `cli.COMMANDS`: ``name -> (help, add_arguments, run)``.
FLOPS_COMMANDS = {
    "flops": ("Count dense / sparse / Sparse Wide FLOPs of a BERT or GPT-2 shape.", _add_flops_args, _run_flops),
}
