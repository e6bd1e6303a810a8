"""Cost of the training metrics against the obvious alternatives, measured side by side.

Run: ``python benchmarks/bench_metrics.py [--repeats 5] [--layers 2] [--steps 200] [--samples 4096]``

1. Threshold sparsity of BERT-Base-shaped layers (per layer: 4 x 768x768, 3072x768, 768x3072) at the six
   thresholds 2^-13 ... 2^-8: one bucketize + bincount pass (`count_below`) vs one comparison-and-sum pass per
   threshold; plus the Group Lasso update (16x16 blocks) and pWD for the same weights, as a cost reference.
2. Lagged window correlation of ``samples`` weight trajectories of ``steps`` snapshots at every lag: one FFT +
   prefix sums (`lagged_correlation`) vs a loop over lags computing each lag's Pearson coefficient vectorised
   over weights. The printed max difference comes from the last few lags, whose windows hold only a few
   snapshots (one-pass variance of a nearly constant short window); below lag T - 20 they agree to ~1e-13.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_sparse.metrics import DEFAULT_THRESHOLDS, count_below
from hf_sparse.regularizers import GroupLasso, PNormWeightDecay
from hf_sparse.metrics import lagged_correlation

SHAPES = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]


def _time(fn, repeats):
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _per_threshold(weights, thresholds):
    return [torch.stack([(w.abs() < t).sum() for t in thresholds]) for w in weights]


def _loop_over_lags(x):
    t = x.shape[0]
    rows = []
    for tau in range(t - 1):
        a, b = x[: t - tau], x[tau:]
        a = a - a.mean(0)
        b = b - b.mean(0)
        rows.append((a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp(min=1e-300))
    return torch.stack(rows)


class _Holder(torch.nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for w in weights:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            self.layers.append(lin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2, help="BERT-Base encoder layers")
    parser.add_argument("--steps", type=int, default=200, help="snapshots per trajectory")
    parser.add_argument("--samples", type=int, default=4096, help="sampled weights")
    args = parser.parse_args()
    torch.manual_seed(0)

    weights = [torch.randn(s) * 0.02 for _ in range(args.layers) for s in SHAPES]
    numel = sum(w.numel() for w in weights)
    thr = torch.tensor(DEFAULT_THRESHOLDS, dtype=torch.float64)
    fused = _time(lambda: [count_below(w, thr) for w in weights], args.repeats)
    naive = _time(lambda: _per_threshold(weights, DEFAULT_THRESHOLDS), args.repeats)
    assert all(torch.equal(a, b) for a, b in zip([count_below(w, thr) for w in weights],
                                                 _per_threshold(weights, DEFAULT_THRESHOLDS)))
    print(f"threshold sparsity, {numel / 1e6:.1f}M weights, {len(DEFAULT_THRESHOLDS)} thresholds "
          f"(torch threads: {torch.get_num_threads()})")
    print(f"  bucketize+bincount  {fused * 1e3:8.2f} ms")
    print(f"  per-threshold sums  {naive * 1e3:8.2f} ms   ratio naive/fused = {naive / fused:.2f}")

    model = _Holder(weights)
    gl = GroupLasso(strength=1e-3, block_size=16, target_modules="all-linear")
    pwd = PNormWeightDecay(strength=1e-3, p=0.5, target_modules="all-linear")
    t_gl = _time(lambda: gl.apply_(model, lr=1e-4), args.repeats)
    t_pwd = _time(lambda: pwd.apply_(model, lr=1e-4), args.repeats)
    print(f"  (reference) group lasso 16x16 apply_ {t_gl * 1e3:.2f} ms, pWD p=0.5 apply_ {t_pwd * 1e3:.2f} ms")

    series = torch.randn(args.steps, args.samples, dtype=torch.float64).cumsum(0)
    fft = _time(lambda: lagged_correlation(series), args.repeats)
    loop = _time(lambda: _loop_over_lags(series), args.repeats)
    diff = (lagged_correlation(series) - _loop_over_lags(series)).abs().max().item()
    print(f"lagged correlation, {args.samples} trajectories x {args.steps} snapshots, all {args.steps - 1} lags")
    print(f"  FFT + prefix sums   {fft * 1e3:8.2f} ms")
    print(f"  loop over lags      {loop * 1e3:8.2f} ms   ratio loop/fft = {loop / fft:.2f}   max |diff| = {diff:.1e}")


if __name__ == "__main__":
    main()
