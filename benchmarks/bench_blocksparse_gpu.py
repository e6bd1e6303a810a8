"""Forward+backward time of Triton block-sparse BERT-Base layers vs cuBLAS dense, as ratios measured in one run.

Run (CUDA machine): ``python benchmarks/bench_blocksparse_gpu.py [--dtype float16] [--tokens 4096 8192 16384]
[--densities 0.5 0.25 0.1 0.05] [--blocks 16 32 64] [--repeats 20]``

For every layer shape (768x3072 and 3072x768, ``nn.Linear`` ``[out, in]``), token count, block size and density it
times ``y = layer(x); y.backward(g)`` through `hf_sparse.kernels.triton_blocksparse` (forward, dX and dW over
active blocks) and through ``F.linear`` on the dense weight (cuBLAS), with CUDA events, and prints
``dense / sparse`` (> 1 means the block-sparse layer is faster), followed by the launch config the autotuner
picked for each kernel (forward, dX, dW) at that shape. Autotuning happens in the warm-up calls and is not timed
(``HF_SPARSE_TRITON_AUTOTUNE=0`` times one fixed config per kernel instead). Without CUDA it prints why and
exits 0.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

SHAPES = [(3072, 768), (768, 3072)]  # BERT-Base intermediate (up) and output (down) projections, [out, in]


def _time_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()  # warm-up: Triton compiles, cuBLAS picks its algorithm
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05])
    parser.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_blocksparse_gpu: skipped, CUDA is not available (the Triton kernels need a GPU).")
        return 0
    try:
        from hf_sparse.kernels import triton_blocksparse as tb
    except ImportError as err:
        print(f"bench_blocksparse_gpu: skipped, Triton is not importable ({err}).")
        return 0
    from hf_sparse.layers import SparseLinear
    from hf_sparse.structure import MaskStructure, make_generator, random_mask

    dtype = getattr(torch, args.dtype)
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, fwd+bwd ms; speedup = dense / block-sparse")
    print(f"{'out x in':>10}{'tokens':>8}{'block':>6}{'density':>8}{'dense ms':>10}{'sparse ms':>10}{'speedup':>9}"
          "  autotuned configs (fwd | dx | dw)")
    for out_f, in_f in SHAPES:
        for tokens in args.tokens:
            x = torch.randn(tokens, in_f, device="cuda", dtype=dtype, requires_grad=True)
            grad = torch.randn(tokens, out_f, device="cuda", dtype=dtype)
            dense = nn.Linear(in_f, out_f, device="cuda", dtype=dtype)
            dense_ms = _time_ms(lambda: F.linear(x, dense.weight, dense.bias).backward(grad), args.repeats)
            for block in args.blocks:
                structure = MaskStructure("block", block_size=block)
                for density in args.densities:
                    mask = random_mask((out_f, in_f), structure, density, 1, make_generator(0, block, density),
                                       device="cuda")
                    layer = SparseLinear.from_dense(nn.Linear(in_f, out_f, device="cuda", dtype=dtype), mask,
                                                    structure)
                    sparse_ms = _time_ms(lambda: tb.block_sparse_forward(layer, x).backward(grad), args.repeats)
                    chosen = tb.chosen_configs()  # what the timed calls ran with (set on every launch)
                    configs = " | ".join(chosen.get(k, "-") for k in ("fwd", "dx", "dw"))
                    print(f"{out_f:>5}x{in_f:<4}{tokens:>8}{block:>6}{density:>8.2f}{dense_ms:>10.3f}"
                          f"{sparse_ms:>10.3f}{dense_ms / sparse_ms:>8.2f}x  {configs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
