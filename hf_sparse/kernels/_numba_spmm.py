"""Numba-compiled sparse x dense products for CPU inference (optional: needs ``pip install hf_sparse[cpu-kernels]``).

Both kernels compute ``Y = X @ W.T`` for a sparse ``W`` ``[out, in]`` and a dense activation ``X`` ``[tokens, in]``.
The activation is first *packed* into panels of ``P`` tokens, ``xp[c, k, :] = X[c * P : (c+1) * P, k]``: every
output row streams its non-zeros over one panel, and the innermost loop is a contiguous ``P``-wide multiply-add
that LLVM turns into AVX-512 / AVX2 FMAs. Wide panels pay because the sparse weight is re-read once per panel; the
CSR kernel also splits the input into column chunks so the slice of the panel it streams stays in L2 (one thread,
90% unstructured, BERT-Base shapes, 1024 tokens: P=128 unchunked 3.1-4.3x faster than dense, P=256 with 128-column
chunks 4.0-5.0x; in a 6-layer encoder 4.8x -> 5.4x on one thread, 1.7x -> 2.1x at 75% on two; P=16-64 lose).
BSR 16x16 went 5.0x -> 7-9x from P=64 to P=256. `panel_width` narrows the panel for short inputs so little work
is wasted on padding. Non-zeros are consumed eight (then four) at a time so the output row is read and written
once per eight products (a loop over single non-zeros is bound by the store-to-load round trip of the
accumulator, ~2x slower; eight instead of four was up to 1.3x faster on 768-wide layers, measured). The
accumulator starts at the bias, which costs nothing here and spares a pass over the output.
Work is split over ``(panel, group of output rows)`` pairs with ``prange``, so both cores stay busy at any token
count.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

# One handle for every kernel: `load_numba` imports this module only.
from ._numba_rows import FEW_ROWS, sell_pack, sell_rows_matmul, sell_rows_matmul_serial

__all__ = ["BSR_PANEL", "CSR_COLUMN_CHUNK", "CSR_PANEL", "FEW_ROWS", "ROW_GROUP", "bsr_panel_matmul", "chunked_csr",
           "csr_panel_matmul", "panel_width", "sell_pack", "sell_rows_matmul", "sell_rows_matmul_serial",
           "transpose_panels"]

#: Widest token panel per kernel (measured best, see above); ``panel_width`` picks the width for an input.
CSR_PANEL = 256
BSR_PANEL = 256
#: Output rows per parallel task of the CSR kernel; they share the activation chunk it has in cache.
ROW_GROUP = 256
#: Input columns per chunk of the CSR kernel: 128 inputs of a 256-token panel are 128 KiB, which stay in a core's
#: L2 while a row group streams them (64 is worse: more passes over the accumulators; see the module docstring).
CSR_COLUMN_CHUNK = 128
# Reassociation lets LLVM keep the four products of one step in registers; results differ from a dense GEMM only
# by fp32 rounding order (the tests bound it).
_FASTMATH = {"contract", "nnan", "ninf", "nsz", "arcp", "reassoc"}


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def csr_panel_matmul(ptr, indices, data, bias, xp, yp):  # pragma: no cover - compiled
    """``yp[c, o, :] = bias[o] + sum_p data[p] * xp[c, indices[p], :]`` over row ``o``'s non-zeros (fp32).

    The weight is CSR split into column chunks (`chunked_csr`): ``ptr[q * out + o]`` starts row ``o``'s non-zeros
    in chunk ``q``. A task owns ``ROW_GROUP`` output rows of one panel and sweeps the chunks in order, so the rows
    of the activation it streams (one chunk of the panel) stay in cache while every row of the group uses them.
    """
    nchunks, _, panel = xp.shape
    out = bias.shape[0]
    n_col_chunks = (ptr.shape[0] - 1) // out
    groups = (out + ROW_GROUP - 1) // ROW_GROUP
    for t in prange(nchunks * groups):
        c = t // groups
        g0 = (t - c * groups) * ROW_GROUP
        g1 = min(out, g0 + ROW_GROUP)
        xc = xp[c]
        for o in range(g0, g1):
            acc = yp[c, o]
            b = bias[o]
            for j in range(panel):
                acc[j] = b
        for q in range(n_col_chunks):
            for o in range(g0, g1):
                p = ptr[q * out + o]
                end = ptr[q * out + o + 1]
                acc = yp[c, o]
                while p + 8 <= end:
                    v0, v1, v2, v3 = data[p], data[p + 1], data[p + 2], data[p + 3]
                    v4, v5, v6, v7 = data[p + 4], data[p + 5], data[p + 6], data[p + 7]
                    x0, x1, x2, x3 = xc[indices[p]], xc[indices[p + 1]], xc[indices[p + 2]], xc[indices[p + 3]]
                    x4, x5, x6, x7 = xc[indices[p + 4]], xc[indices[p + 5]], xc[indices[p + 6]], xc[indices[p + 7]]
                    for j in range(panel):
                        acc[j] += ((v0 * x0[j] + v1 * x1[j]) + (v2 * x2[j] + v3 * x3[j])) + (
                            (v4 * x4[j] + v5 * x5[j]) + (v6 * x6[j] + v7 * x7[j]))
                    p += 8
                while p + 4 <= end:
                    v0, v1, v2, v3 = data[p], data[p + 1], data[p + 2], data[p + 3]
                    x0, x1, x2, x3 = xc[indices[p]], xc[indices[p + 1]], xc[indices[p + 2]], xc[indices[p + 3]]
                    for j in range(panel):
                        acc[j] += (v0 * x0[j] + v1 * x1[j]) + (v2 * x2[j] + v3 * x3[j])
                    p += 4
                while p < end:
                    v = data[p]
                    xr = xc[indices[p]]
                    for j in range(panel):
                        acc[j] += v * xr[j]
                    p += 1


def chunked_csr(weight: torch.Tensor, column_chunk: int) -> tuple:
    """The non-zeros of a ``[out, in]`` weight as CSR split into column chunks, for `csr_panel_matmul`.

    Args:
        weight: Dense fp32 weight (zeros are the inactive entries).
        column_chunk: Input columns per chunk (``>= in`` gives plain CSR).

    Returns:
        ``(ptr, indices, data)`` NumPy arrays: ``ptr`` is int32 ``[chunks * out + 1]``, ``indices`` the int32 input
        column of each non-zero (chunk-major, then row, then column), ``data`` its value.
    """
    out_f, in_f = weight.shape
    chunks = -(-in_f // column_chunk)
    rows, cols = weight.nonzero(as_tuple=True)  # row-major, so a stable sort by chunk keeps rows and columns ordered
    segment = (cols // column_chunk) * out_f + rows
    order = torch.sort(segment, stable=True).indices
    rows, cols, segment = rows[order], cols[order], segment[order]
    ptr = torch.zeros(chunks * out_f + 1, dtype=torch.int64)
    ptr[1:] = torch.cumsum(torch.bincount(segment, minlength=chunks * out_f), 0)
    return (ptr.to(torch.int32).numpy(), cols.to(torch.int32).numpy(),
            weight[rows, cols].contiguous().numpy())


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def bsr_panel_matmul(indptr, indices, blocks, bias, xp, yp):  # pragma: no cover - compiled
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
            b0 = bias[r * bs + i]
            b1 = bias[r * bs + i + 1]
            for j in range(panel):
                acc0[j] = b0
                acc1[j] = b1
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


_TILE = 16  # a compile-time constant: the full-tile loops below unroll into vector shuffles


@njit(parallel=True, boundscheck=False, cache=True)
def transpose_panels(src, dst):  # pragma: no cover - compiled
    """``dst[c, k, r] = src[c, r, k]``: packs ``[panels, P, in]`` into ``[panels, in, P]`` and un-packs the other way.

    Goes through 16 x 16 tiles held in a small local array, so both the reads and the writes stay on a few cache
    lines at a time: 2-3x faster than PyTorch's strided ``copy_`` for BERT-Base activations on one core (measured,
    768- and 3072-wide, 1024 tokens), which matters because a converted layer packs its input and un-packs its output.
    Full tiles run fixed-length loops (LLVM unrolls them; variable bounds were 3x slower, measured); the ragged edges
    of sizes that are not multiples of 16 take the generic loops.
    """
    nc, nr, nk = src.shape
    k_tiles = (nk + _TILE - 1) // _TILE
    for t in prange(nc * k_tiles):
        c = t // k_tiles
        k0 = (t - c * k_tiles) * _TILE
        kn = min(_TILE, nk - k0)
        tile = np.empty((_TILE, _TILE), dtype=src.dtype)
        for r0 in range(0, nr, _TILE):
            rn = min(_TILE, nr - r0)
            if kn == _TILE and rn == _TILE:
                for r in range(_TILE):
                    row = src[c, r0 + r]
                    for k in range(_TILE):
                        tile[k, r] = row[k0 + k]
                for k in range(_TILE):
                    out = dst[c, k0 + k]
                    for r in range(_TILE):
                        out[r0 + r] = tile[k, r]
            else:
                for r in range(rn):
                    for k in range(kn):
                        dst[c, k0 + k, r0 + r] = src[c, r0 + r, k0 + k]
