"""Numba-compiled sparse x dense products for CPU inference (optional: needs ``pip install hf_sparse[cpu-kernels]``).

Both kernels compute ``Y = X @ W.T`` for a sparse ``W`` ``[out, in]`` and a dense activation ``X`` ``[tokens, in]``.
The activation is first *packed* into panels of ``P`` tokens, ``xp[c, k, :] = X[c * P : (c+1) * P, k]``: every
output row streams its non-zeros over one panel, and the innermost loop is a contiguous ``P``-wide multiply-add
that LLVM turns into AVX-512 / AVX2 FMAs. Wide panels pay: the sparse weight is re-read once per panel, so on the
2-core AMD EPYC dev box (768x3072 layers, 1024 tokens, 90% sparse, one thread) CSR went 3.0x -> 4-5.9x faster
than dense from P=64 to P=128 and BSR 16x16 5.0x -> 7-9x from P=64 to P=256 (P=16/32 lose to dense); `panel_width`
narrows the panel for short inputs so little work is wasted on padding. Non-zeros are consumed four at a time so
the output row is read and written once per four products (a loop over single non-zeros is bound by the store-to-load round trip of the accumulator, ~2x slower, measured).
Work is split over ``(panel, output row)`` pairs with ``prange``, so both cores stay busy at any token count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Widest token panel per kernel (measured best, see above); ``panel_width`` picks the width for an input.
CSR_PANEL = 128
BSR_PANEL = 256
# Reassociation lets LLVM keep the four products of one step in registers; results differ from a dense GEMM only
# by fp32 rounding order (the tests bound it).
_FASTMATH = {"contract", "nnan", "ninf", "nsz", "arcp", "reassoc"}


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def csr_panel_matmul(indptr, indices, data, xp, yp):  # pragma: no cover - compiled
    """``yp[c, o, :] = sum_p data[p] * xp[c, indices[p], :]`` over row ``o``'s non-zeros (CSR, fp32)."""
    nchunks, _, panel = xp.shape
    out = indptr.shape[0] - 1
    for t in prange(nchunks * out):
        c = t // out
        o = t - c * out
        acc = yp[c, o]
        xc = xp[c]
        for j in range(panel):
            acc[j] = 0.0
        p = indptr[o]
        end = indptr[o + 1]
        while p + 4 <= end:
            v0 = data[p]
            v1 = data[p + 1]
            v2 = data[p + 2]
            v3 = data[p + 3]
            x0 = xc[indices[p]]
            x1 = xc[indices[p + 1]]
            x2 = xc[indices[p + 2]]
            x3 = xc[indices[p + 3]]
            for j in range(panel):
                acc[j] += (v0 * x0[j] + v1 * x1[j]) + (v2 * x2[j] + v3 * x3[j])
            p += 4
        while p < end:
            v = data[p]
            xr = xc[indices[p]]
            for j in range(panel):
                acc[j] += v * xr[j]
            p += 1


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def bsr_panel_matmul(indptr, indices, blocks, xp, yp):  # pragma: no cover - compiled
    """Block-sparse version: ``blocks[b]`` is the ``B x B`` block at block row ``r`` (``indptr``) and block column
    ``indices[b]``; ``B`` must be a multiple of 4. Two output rows are accumulated together so every activation row
    loaded feeds two rows of multiply-adds (1.1-1.3x faster than one row at a time at 75-90% sparsity, measured;
    four rows at a time spill registers and lose)."""
    nchunks, _, panel = xp.shape
    bs = blocks.shape[1]
    nbr = indptr.shape[0] - 1
    for t in prange(nchunks * nbr):
        c = t // nbr
        r = t - c * nbr
        xc = xp[c]
        for i in range(0, bs, 2):
            acc0 = yp[c, r * bs + i]
            acc1 = yp[c, r * bs + i + 1]
            for j in range(panel):
                acc0[j] = 0.0
                acc1[j] = 0.0
            for b in range(indptr[r], indptr[r + 1]):
                k0 = indices[b] * bs
                w0 = blocks[b, i]
                w1 = blocks[b, i + 1]
                for kk in range(0, bs, 4):
                    x0 = xc[k0 + kk]
                    x1 = xc[k0 + kk + 1]
                    x2 = xc[k0 + kk + 2]
                    x3 = xc[k0 + kk + 3]
                    u0, u1, u2, u3 = w0[kk], w0[kk + 1], w0[kk + 2], w0[kk + 3]
                    v0, v1, v2, v3 = w1[kk], w1[kk + 1], w1[kk + 2], w1[kk + 3]
                    for j in range(panel):
                        acc0[j] += (u0 * x0[j] + u1 * x1[j]) + (u2 * x2[j] + u3 * x3[j])
                        acc1[j] += (v0 * x0[j] + v1 * x1[j]) + (v2 * x2[j] + v3 * x3[j])


def panel_width(tokens: int, widest: int) -> int:
    """Panel width for ``tokens`` rows: ``widest``, or the next multiple of 16 when the input is shorter."""
    return min(widest, max(16, -(-tokens // 16) * 16))
