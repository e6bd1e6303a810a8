"""``hf-sparse demo``: registered in `hf_sparse.cli.COMMANDS` (this top-layer module may print).

torch and transformers are imported inside `_run_demo`, so ``hf-sparse --help`` does not load them.
"""

from __future__ import annotations

import argparse
import time


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("bert", "gpt2"), default="bert", help="Tiny model family to build.")
    p.add_argument("--sparsity", type=float, default=0.9, help="Target sparsity (ignored for N:M).")
    p.add_argument(
        "--structure", default="unstructured", choices=("unstructured", "block", "nm", "nm_transposable"),
        help="Mask structure of the sparsified layers.",
    )
    p.add_argument("--block_size", type=int, default=16, help="Block edge for --structure block.")
    p.add_argument("--steps", type=int, default=20, help="Training steps on synthetic tokens.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the weights, masks and synthetic data.")


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
        # transformers picks the loss from the class name and does not recognise "GPT2LMHeadModel": it falls
        # back to the causal-LM loss with a warning the user cannot act on. Name the loss it falls back to.
        model.loss_type = "ForCausalLM"
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


#: Entries for `cli.COMMANDS`: ``name -> (help, add_arguments, run)``.
DEMO_COMMANDS = {
    "demo": ("Sparsify a tiny BERT / GPT-2, print the report, train a few steps.", _add_demo_args, _run_demo),
}
