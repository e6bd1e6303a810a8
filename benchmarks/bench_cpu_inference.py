"""CPU inference of a sparse BERT-Base encoder: dense vs `to_cpu_inference_`, sparse/dense time ratios in one run.

Run: ``python benchmarks/bench_cpu_inference.py [--layers 12] [--batch 8] [--seq 128] [--repeats 5]
[--sparsity 0.5 0.75 0.9 0.95] [--structures unstructured block16] [--methods ...] [--layer-only] [--rounds R]``

For every (structure, sparsity) it builds a BERT-Base encoder from its config (random weights, no download),
sparsifies it with magnitude masks, and times the dense model (same zeros, plain GEMMs) against the converted
one on the same ``batch x seq`` input, called in turn under ``torch.inference_mode()``. The table gives both times, dense/sparse speedup, the
chosen representation per layer kind and the largest output difference. ``--layer-only`` instead times one
768x3072 layer per candidate representation (to see what each kernel reaches on its own).
Timings are the best of ``--repeats``; on a shared machine they are noisy, so compare rows of one run.
``--rounds R`` measures the whole table ``R`` times (converting afresh each time) and ends with the median and range
of every cell's speedup.
"""

from __future__ import annotations

import argparse
import logging

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from hf_sparse.config import SparsityConfig
from hf_sparse.kernels import METHODS, SparseInferenceLinear, numba_available
from hf_sparse.kernels.benchmark import benchmark_inference
from hf_sparse.kernels.cpu import time_round_robin
from hf_sparse.patching import sparsify_
from hf_sparse.structure import MaskStructure, make_generator, random_mask

from _rounds import print_rounds  # benchmarks/_rounds.py, next to this script

STRUCTURES = {"unstructured": dict(structure="unstructured"), "block16": dict(structure="block", block_size=16)}


def model_rows(args) -> None:
    print(f"BERT-Base encoder, {args.layers} layers, batch {args.batch} x {args.seq} tokens, "
          f"{torch.get_num_threads()} threads, numba {'on' if numba_available() else 'off'}, inference_mode")
    print(f"{'structure':<13}{'sparsity':>9}{'dense ms':>10}{'sparse ms':>11}{'speedup':>9}{'max|diff|':>11}  methods")
    speedups = {}
    for _ in range(args.rounds):
        for name in args.structures:
            for sparsity in args.sparsity:
                speedups.setdefault((name, sparsity), []).append(model_row(args, name, sparsity))
    if args.rounds > 1:
        print_rounds(speedups)


def model_row(args, name: str, sparsity: float) -> float:
    """Builds, sparsifies and times one BERT encoder; prints its row and returns the speedup."""
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=args.layers)  # bert-base-uncased sizes
    model = BertModel(config, add_pooling_layer=False).eval()
    sparsify_(model, SparsityConfig(sparsity=sparsity, mask_init="magnitude", **STRUCTURES[name]))
    result = benchmark_inference(model, args.batch, args.seq, args.repeats, methods=args.methods,
                                  fuse_activations=not args.no_fuse_activations)
    methods = ", ".join(f"{key.split(' ')[0]}:{c.method}" for key, c in result.choices.items())
    print(f"{name:<13}{sparsity:>9.2f}{result.dense_seconds * 1e3:>10.1f}{result.sparse_seconds * 1e3:>11.1f}"
          f"{result.speedup:>8.2f}x{result.max_abs_diff:>11.1e}  {methods}", flush=True)
    return result.speedup


@torch.no_grad()
def layer_rows(args) -> None:
    out_f, in_f, tokens = 3072, 768, args.batch * args.seq
    print(f"One {out_f}x{in_f} layer, {tokens} tokens, {torch.get_num_threads()} threads: speedup vs dense")
    # The few-rows kernel is for decode steps (bench_generation.py), not for 1024-token inputs.
    default = [m for m in METHODS if m != "numba_sell"]
    methods = [m for m in (args.methods or default) if numba_available() or not m.startswith("numba")]
    print(f"{'structure':<13}{'sparsity':>9}" + "".join(f"{m:>12}" for m in methods))
    x = torch.randn(tokens, in_f)
    for name in args.structures:
        structure = MaskStructure("block", block_size=16) if name == "block16" else MaskStructure()
        for sparsity in args.sparsity:
            mask = random_mask((out_f, in_f), structure, 1 - sparsity, 1, make_generator(0, name, sparsity))
            weight = torch.randn(out_f, in_f) * mask
            calls = {"_ref": lambda: F.linear(x, weight)}
            for method in methods:
                if method.endswith("bsr") and name != "block16":
                    continue
                module = SparseInferenceLinear(weight, None, method, structure.block_size)
                calls[method] = lambda module=module: module(x)
            best = time_round_robin(calls, args.repeats)
            print(f"{name:<13}{sparsity:>9.2f}" + "".join(
                f"{best['_ref'] / best[m]:>11.2f}x" if m in best else f"{'-':>12}" for m in methods), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.9, 0.95])
    parser.add_argument("--structures", nargs="+", choices=sorted(STRUCTURES), default=["unstructured", "block16"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    parser.add_argument("--layer-only", action="store_true", help="time single-layer kernels instead of BERT")
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
    (layer_rows if args.layer_only else model_rows)(args)


if __name__ == "__main__":
    main()
