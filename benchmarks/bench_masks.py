"""Mask-building time per structure for BERT-Base weight shapes.

Run: ``python benchmarks/bench_masks.py [--repeats 5] [--sparsity 0.9]``

For each structure it times building the masks of one BERT-Base encoder layer (Q, K, V, attention output:
768x768; intermediate 3072x768; output 768x3072) by magnitude and at random, and reports the time per 3072x768
weight and per layer, plus the ratio to the unstructured magnitude mask measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_sparse.structure import MaskStructure, _largest_indices, make_generator, random_mask, select_mask

SHAPES = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]  # nn.Linear [out, in] of one BERT-Base layer
STRUCTURES = [
    MaskStructure("unstructured"),
    MaskStructure("block", block_size=4),
    MaskStructure("block", block_size=16),
    MaskStructure("block", block_size=32, norm="l2"),
    MaskStructure("nm", n=2, m=4),
    MaskStructure("nm_transposable", n=2, m=4),
]


def _time(fn, repeats):
    fn()  # warm-up (pattern tables, allocator)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in SHAPES]
    big = torch.randn(3072, 768)
    density = 1 - args.sparsity
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sparsity {args.sparsity}, "
          f"median of {args.repeats}")
    print(f"{'structure':<24} {'3072x768 magnitude':>19} {'3072x768 random':>16} {'layer magnitude':>16} {'ratio':>6}")
    base = None
    for st in STRUCTURES:
        one = _time(lambda: select_mask(big, st, density, 1), args.repeats)
        rnd = _time(lambda: random_mask(big.shape, st, density, 1, make_generator(0, "b")), args.repeats)
        layer = _time(lambda: [select_mask(w, st, density, 1) for w in weights], args.repeats)
        base = base or one
        print(f"{st.describe():<24} {one * 1e3:16.1f} ms {rnd * 1e3:13.1f} ms {layer * 1e3:13.1f} ms {one / base:6.2f}")

    # The selection step itself: torch.topk vs the NumPy introselect hf_sparse uses on the CPU.
    flat = big.abs().flatten()
    k = round(density * flat.numel())
    t_topk = _time(lambda: torch.topk(flat, k, sorted=False), args.repeats)
    t_ours = _time(lambda: _largest_indices(flat, k), args.repeats)
    print(f"\nselect {k} of {flat.numel()}: torch.topk {t_topk * 1e3:.1f} ms, argpartition {t_ours * 1e3:.1f} ms "
          f"({t_topk / t_ours:.1f}x)")


if __name__ == "__main__":
    main()
