"""Batch-1 greedy generation on the CPU: dense vs `to_cpu_inference_`, tokens/s ratios from interleaved runs.

Run: ``python benchmarks/bench_generation.py [--layers 6] [--embd 768] [--vocab 4096] [--prompt 32] [--new 48]
[--batch 1] [--repeats 5] [--sparsity 0.75 0.9 0.95] [--structures unstructured block16] [--threads N]
[--rounds R]``

For every (structure, sparsity) it builds a GPT-2-small-shaped causal LM from its config (random weights, no
download; the tied LM head stays dense), sparsifies its linear layers with magnitude masks, converts a copy with
`to_cpu_inference_` (calibrated on the prompt and on one decode row per sequence) and runs
``generate(do_sample=False)`` under ``torch.inference_mode()`` on the dense model (same zeros, plain GEMMs) and the
converted one in turn, ``--repeats`` times each (`hf_sparse.kernels.benchmark_generation`). It prints median tokens/s of both, their ratio, whether the greedy tokens are identical,
and the representation chosen per layer kind (prefill / decode). On a shared machine compare rows of one run.
``--rounds R`` measures the whole table ``R`` times (each round converts afresh, so the measured races run again) and
ends with the median and range of every cell's speedup: on this noisy 2-core machine single runs of one cell spread
by ±15%.
"""

from __future__ import annotations

import argparse
import logging

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_sparse.config import SparsityConfig
from hf_sparse.kernels import benchmark_generation, numba_available
from hf_sparse.patching import sparsify_

from _rounds import print_rounds  # benchmarks/_rounds.py, next to this script

STRUCTURES = {"unstructured": dict(structure="unstructured"), "block16": dict(structure="block", block_size=16)}
SHORT = {"dense": "dense", "torch_csr": "tcsr", "torch_bsr": "tbsr", "numba_csr": "csr", "numba_bsr": "bsr",
         "numba_sell": "sell"}


def build(args, structure: str, sparsity: float) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.embd, n_head=args.embd // 64, vocab_size=args.vocab,
                        n_positions=max(128, args.prompt + args.new), bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    return sparsify_(model, SparsityConfig(sparsity=sparsity, mask_init="magnitude", **STRUCTURES[structure]))


def run(args, structure: str, sparsity: float):
    model = build(args, structure, sparsity)
    result = benchmark_generation(model, batch_size=args.batch, prompt_len=args.prompt, new_tokens=args.new,
                                  repeats=args.repeats, fuse_activations=not args.no_fuse_activations)
    d, s = result.new_tokens / result.dense_seconds, result.new_tokens / result.sparse_seconds
    methods = " ".join(f"{key.split(' ')[0]}:{SHORT[c.method]}/{SHORT.get(c.decode_method, '-')}"
                       for key, c in result.choices.items())
    return result, (f"{structure:<13}{sparsity:>9.2f}{d:>10.1f}{s:>11.1f}{result.speedup:>8.2f}x"
                    f"{'yes' if result.same_tokens else 'NO':>6}  {methods}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    parser.add_argument("--new", type=int, default=48, help="generated tokens per sequence")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.75, 0.9, 0.95])
    parser.add_argument("--structures", nargs="+", choices=sorted(STRUCTURES), default=["unstructured", "block16"])
    parser.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=1, help="measure the whole table this many times")
    parser.add_argument("--no-fuse-activations", action="store_true",
                        help="keep the activation modules (to_cpu_inference_(fuse_activations=False))")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    print(f"GPT-2 {args.layers} x {args.embd}, vocab {args.vocab}, batch {args.batch}, prompt {args.prompt} + "
          f"{args.new} new tokens, greedy, {torch.get_num_threads()} threads, numba "
          f"{'on' if numba_available() else 'off'}, median of {args.repeats} interleaved runs, inference_mode")
    print(f"{'structure':<13}{'sparsity':>9}{'dense t/s':>10}{'sparse t/s':>11}{'speedup':>9}{'same':>6}"
          "  prefill/decode method per layer kind")
    speedups, all_same = {}, True
    for _ in range(args.rounds):
        for structure in args.structures:
            for sparsity in args.sparsity:
                result, line = run(args, structure, sparsity)
                speedups.setdefault((structure, sparsity), []).append(result.speedup)
                all_same &= result.same_tokens
                print(line, flush=True)
    if args.rounds > 1:
        print_rounds(speedups, f"; greedy tokens identical in every run: {'yes' if all_same else 'NO'}")


if __name__ == "__main__":
    main()
