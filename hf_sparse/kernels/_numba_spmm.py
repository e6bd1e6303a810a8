"""Numba-compiled sparse x dense products for CPU inference (optional: needs ``pip install hf_sparse[cpu-kernels]``).

Both kernels compute ``Y = X @ W.T`` for a sparse ``W`` ``[out, in]`` and a dense activation ``X`` ``[tokens, in]``.
The activation is first *packed* into panels of ``P`` tokens, ``xp[c, k, :] = X[c * P : (c+1) * P, k]``: every
output row streams its non-zeros over one panel. The CSR kernel keeps a row's ``P`` running sums in registers for
the whole row (``P = 64``: eight 8-lane vectors, `hf_sparse.kernels._simd.panel_row_64`), so a non-zero costs one
broadcast and eight multiply-adds with the activation row from L1, and it splits the input into column chunks so the
128 x 64 slice of the panel it streams (32 KiB) stays in L1. Against the previous kernel, which added groups of
eight non-zeros into the output row in memory over 256-token panels (a load and store per eight products),
BERT-Base shapes at 1024 tokens on two threads ran 1.27-1.29x faster at 90% sparsity (4.2-5.3x dense MKL) and
1.43-1.55x at 75% (measured side by side, 2026-12-02). `csr_panel_matmul_rows` writes the row-major output
itself and `csr_matmul_unpacked` also packs each panel of a row-major input inside its task, so neither the packed
input nor the packed output has to make a round trip through memory. `panel_width` narrows the panel for short
inputs, so little work is wasted on padding. BSR 16x16 went 5.0x -> 7-9x from P=64 to P=256 (its loop is unchanged). The
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
from ._simd import panel_row_8, panel_row_16, panel_row_32, panel_row_64, panel_row_64_of_64, panel_row_64_of_128

__all__ = ["BSR_PANEL", "CSR_COLUMN_CHUNK", "CSR_PANEL", "FEW_ROWS", "ROW_GROUP", "bsr_panel_matmul", "chunked_csr",
           "csr_matmul_unpacked", "csr_panel_matmul", "csr_panel_matmul_rows", "panel_width", "sell_pack",
           "sell_rows_matmul", "sell_rows_matmul_serial", "transpose_panels"]

#: Widest token panel per kernel (measured best, see above); ``panel_width`` picks the width for an input.
#: The CSR kernel's register sums cover exactly 64 tokens.
CSR_PANEL = 64
BSR_PANEL = 256
#: Output rows per parallel task of the CSR kernel; they share the activation chunk it has in cache.
ROW_GROUP = 256
#: Input columns per chunk of the CSR kernel: 128 inputs of a 64-token panel are 32 KiB, which a row group streams
#: from L1 / L2 (64 columns were 5-15% slower, more passes over each row's sums; 256 about the same, measured).
CSR_COLUMN_CHUNK = 128
# Reassociation lets LLVM reorder the sums freely; results differ from a dense GEMM only by fp32 rounding order (the
# tests bound it).
_FASTMATH = {"contract", "nnan", "ninf", "nsz", "arcp", "reassoc"}
_TILE = 16  # a compile-time constant: the full-tile transpose loops unroll into vector shuffles


@njit(fastmath=_FASTMATH, boundscheck=False, cache=True)
def _csr_rows(ptr, indices, data, bias, xc, acc_rows, row0, g0, g1):  # pragma: no cover - compiled
    """Output rows ``g0 .. g1`` of one panel ``xc`` ``[in, panel]`` into ``acc_rows[o - row0]`` (see
    `csr_panel_matmul`): each row starts at its bias, then the column chunks are swept in order."""
    panel = xc.shape[1]
    out = bias.shape[0]
    n_col_chunks = (ptr.shape[0] - 1) // out
    for o in range(g0, g1):
        acc = acc_rows[o - row0]
        b = bias[o]
        for j in range(panel):
            acc[j] = b
    vec_end = panel - panel % 8
    for q in range(n_col_chunks):
        for o in range(g0, g1):
            p = ptr[q * out + o]
            end = ptr[q * out + o + 1]
            if p == end:
                continue
            acc = acc_rows[o - row0]
            if panel == 64:  # CSR_PANEL: the common case, with the row stride compiled in
                panel_row_64_of_64(data, indices, xc, p, end, 0, acc)
                continue
            if panel == 128:  # one 128-token sequence per panel (packed feed-forward activations)
                panel_row_64_of_128(data, indices, xc, p, end, 0, acc)
                panel_row_64_of_128(data, indices, xc, p, end, 64, acc)
                continue
            s = 0
            while s + 64 <= vec_end:
                panel_row_64(data, indices, xc, p, end, s, acc)
                s += 64
            if s + 32 <= vec_end:
                panel_row_32(data, indices, xc, p, end, s, acc)
                s += 32
            if s + 16 <= vec_end:
                panel_row_16(data, indices, xc, p, end, s, acc)
                s += 16
            if s + 8 <= vec_end:
                panel_row_8(data, indices, xc, p, end, s, acc)
                s += 8
            if s < panel:  # a packed output's panel is one sequence, of any length
                for k in range(p, end):
                    v = data[k]
                    xr = xc[indices[k]]
                    for j in range(s, panel):
                        acc[j] += v * xr[j]


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def csr_panel_matmul(ptr, indices, data, bias, xp, yp):  # pragma: no cover - compiled
    """``yp[c, o, :] = bias[o] + sum_p data[p] * xp[c, indices[p], :]`` over row ``o``'s non-zeros (fp32).

    The weight is CSR split into column chunks (`chunked_csr`): ``ptr[q * out + o]`` starts row ``o``'s non-zeros
    in chunk ``q``. A task owns ``ROW_GROUP`` output rows of one panel and sweeps the chunks in order, so the rows
    of the activation it streams (one chunk of the panel) stay in cache while every row of the group uses them.
    """
    out = bias.shape[0]
    groups = (out + ROW_GROUP - 1) // ROW_GROUP
    for t in prange(xp.shape[0] * groups):
        c = t // groups
        g0 = (t - c * groups) * ROW_GROUP
        _csr_rows(ptr, indices, data, bias, xp[c], yp[c], 0, g0, min(out, g0 + ROW_GROUP))


@njit(boundscheck=False, cache=True)
def _copy_transposed(src, s0, n0, n1, dst, d0, d1, tile):  # pragma: no cover - compiled
    """``dst[d0 + j, d1 + i] = src[s0 + i, j]`` for ``i < n0``, ``j < n1``, through the 16 x 16 scratch ``tile`` so
    both sides are read and written along their rows (as in `transpose_panels`); fixed-bound loops for full tiles,
    generic ones for the ragged edges."""
    for i0 in range(0, n0, _TILE):
        for j0 in range(0, n1, _TILE):
            if i0 + _TILE <= n0 and j0 + _TILE <= n1:
                for i in range(_TILE):
                    row = src[s0 + i0 + i]
                    for j in range(_TILE):
                        tile[j, i] = row[j0 + j]
                for j in range(_TILE):
                    out = dst[d0 + j0 + j]
                    for i in range(_TILE):
                        out[d1 + i0 + i] = tile[j, i]
            else:
                for i in range(i0, min(n0, i0 + _TILE)):
                    for j in range(j0, min(n1, j0 + _TILE)):
                        dst[d0 + j, d1 + i] = src[s0 + i, j]


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def csr_panel_matmul_rows(ptr, indices, data, bias, xp, y):  # pragma: no cover - compiled
    """`csr_panel_matmul` with a row-major output ``y`` ``[tokens, out]`` (``tokens <= panels * panel``).

    Each task's ``ROW_GROUP x panel`` sums are transposed into ``y`` while they are still in cache, which spares the
    separate un-packing pass over the whole output (`hf_sparse.kernels.panels.unpack`).
    """
    panels, _, panel = xp.shape
    tokens = y.shape[0]
    out = bias.shape[0]
    groups = (out + ROW_GROUP - 1) // ROW_GROUP
    for t in prange(panels * groups):
        c = t // groups
        g0 = (t - c * groups) * ROW_GROUP
        g1 = min(out, g0 + ROW_GROUP)
        block = np.empty((g1 - g0, panel), dtype=np.float32)
        tile = np.empty((_TILE, _TILE), dtype=np.float32)
        _csr_rows(ptr, indices, data, bias, xp[c], block, g0, g0, g1)
        _copy_transposed(block, 0, g1 - g0, min(panel, tokens - c * panel), y, c * panel, g0, tile)


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def csr_matmul_unpacked(ptr, indices, data, bias, x, y, yp):  # pragma: no cover - compiled
    """`csr_panel_matmul` straight from a row-major input ``x`` ``[tokens, in]``: each task packs its own panel of
    ``yp.shape[2]`` tokens into a buffer that stays in cache, instead of a separate packing pass writing the whole
    packed copy to memory and the kernel reading it back.

    The output goes to ``yp`` ``[panels, out, panel]`` (packed) when ``yp.shape[0]`` is the panel count, else to
    ``y`` ``[tokens, out]`` (row-major; pass ``yp`` with zero panels). Tasks are whole panels, so use it when there
    are several panels per thread.
    """
    tokens, inn = x.shape
    panel = yp.shape[2]
    out = bias.shape[0]
    panels = (tokens + panel - 1) // panel
    packed = yp.shape[0] == panels
    for c in prange(panels):
        t0 = c * panel
        nt = min(panel, tokens - t0)
        xc = np.empty((inn, panel), dtype=np.float32)
        if nt < panel:  # the last panel's padding tokens
            xc[:, nt:] = 0.0
        tile = np.empty((_TILE, _TILE), dtype=np.float32)
        _copy_transposed(x, t0, nt, inn, xc, 0, 0, tile)
        block = np.empty((min(ROW_GROUP, out), panel), dtype=np.float32)
        for g0 in range(0, out, ROW_GROUP):
            g1 = min(out, g0 + ROW_GROUP)
            if packed:
                _csr_rows(ptr, indices, data, bias, xc, yp[c], 0, g0, g1)
            else:
                _csr_rows(ptr, indices, data, bias, xc, block, g0, g0, g1)
                _copy_transposed(block, 0, g1 - g0, nt, y, t0, g0, tile)


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
