"""Transposable N:M for M = 8 (Sparse-IFT's 4:8, 2:8, 1:8): optimality and speed of the min-cost-flow solver.

Run: ``python benchmarks/bench_transposable.py [--tiles 30] [--repeats 3] [--threads 1]``

1. Optimality: on random 8x8 tiles (|N(0, 1)| scores) it compares the magnitude the solver keeps with the exact
   optimum from an independent depth-first search over rows (column budgets, optimistic row bound), and prints
   the ratio kept / optimum (1 means optimal), next to the row-wise N:M upper bound (rows only, ignores columns).
2. Speed: the time to build the masks of one BERT-Base encoder layer (Q, K, V, attention output 768x768;
   intermediate 3072x768; output 768x3072), median of ``--repeats``, with transposable 2:4 (pattern enumeration)
   as the reference.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from hf_sparse.structure import MaskStructure, select_mask
from hf_sparse.structure.transposable import transposable_flow_tiles

SHAPES = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]  # nn.Linear [out, in] of one BERT-Base layer


def exact_optimum(tile, n: int) -> float:
    """Largest kept sum of an ``m x m`` tile with ``n`` per row and column, by branch and bound over rows.

    Bounds: the remaining rows' best ``n`` entries ignoring columns, and the remaining columns' best entries within
    their budgets ignoring rows; both only prune branches that cannot beat the incumbent, so the result is exact.
    """
    vals = tile.tolist()
    m = len(vals)
    choices = list(itertools.combinations(range(m), n))
    row_best = [sum(sorted(r, reverse=True)[:n]) for r in vals]
    tail = [sum(row_best[i:]) for i in range(m + 1)]
    best = [-1.0]

    def col_bound(i, left):  # each column can still take its left[j] largest entries among rows i..m-1
        return sum(sum(sorted((vals[r][j] for r in range(i, m)), reverse=True)[: left[j]]) for j in range(m))

    def go(i, left, acc):
        if acc + tail[i] <= best[0] + 1e-12 or acc + col_bound(i, left) <= best[0] + 1e-12:
            return
        if i == m:
            best[0] = acc
            return
        # Try the row's best combinations first so a good incumbent prunes early.
        for c in sorted(choices, key=lambda c: -sum(vals[i][j] for j in c)):
            if all(left[j] for j in c):
                for j in c:
                    left[j] -= 1
                go(i + 1, left, acc + sum(vals[i][j] for j in c))
                for j in c:
                    left[j] += 1

    go(0, [n] * m, 0.0)
    return best[0]


def optimality(n_tiles: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    tiles = torch.randn(n_tiles, 8, 8, generator=g, dtype=torch.float64).abs()
    print(f"Optimality on {n_tiles} random 8x8 tiles (kept |w| / exact optimum):")
    for n in (1, 2, 4, 6):
        sel = transposable_flow_tiles(tiles, n)
        kept = (tiles * sel).sum(dim=(1, 2))
        start = time.perf_counter()
        opt = torch.tensor([exact_optimum(t, n) for t in tiles], dtype=torch.float64)
        search_s = time.perf_counter() - start
        rowwise = tiles.topk(n, dim=2).values.sum(dim=(1, 2))
        ratio = kept / opt
        print(f"  {n}:8  min {ratio.min():.6f}  mean {ratio.mean():.6f}  tiles below optimum: "
              f"{int((ratio < 1 - 1e-9).sum())}  (row-wise N:M bound / optimum: {(rowwise / opt).mean():.4f}; "
              f"search {search_s:.1f} s)")


def _time(fn, repeats):
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def speed(repeats: int) -> None:
    weights = [torch.randn(s) for s in SHAPES]
    print(f"BERT-Base layer (6 weights, {sum(w.numel() for w in weights):,} parameters), "
          f"{torch.get_num_threads()} thread(s), median of {repeats}:")
    for n, m in ((2, 4), (1, 8), (2, 8), (4, 8)):
        s = MaskStructure("nm_transposable", n=n, m=m)
        secs = _time(lambda: [select_mask(w, s, 0.0, 1) for w in weights], repeats)
        how = "patterns" if m <= 5 else "min-cost flow"
        print(f"  transposable {n}:{m} ({how}): {secs:.2f} s per layer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=30, help="random 8x8 tiles for the optimality check")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per structure")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    parser.add_argument("--skip_speed", action="store_true", help="only the optimality check")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optimality(args.tiles)
    if not args.skip_speed:
        speed(args.repeats)


if __name__ == "__main__":
    main()
