"""Numba kernels for a few activation rows: the decode steps of generation (optional: ``hf_sparse[cpu-kernels]``).

A decode step multiplies one token per sequence by every weight, so the cost is reading the weight, and for a
sparse weight that means one gather from the activation per non-zero. The weight is stored as *SELL-8* (sliced
ELLPACK with slices of 8 rows; Kreutzer, Hager, Wellein, Fehske and Bishop 2014, "A unified sparse matrix data
format for efficient general sparse matrix-vector multiply on modern processors with wide SIMD units",
arXiv:1307.6209): the rows are sorted by their number of non-zeros (σ = all rows) and taken 8 at a time; slice
``g`` stores ``L_g`` steps (the count of its longest row), each step holding one ``(value, column)`` pair per row
of the slice, the shorter rows padded with zeros (sorting leaves almost no padding: 0.2% for a 90%-sparse random
mask). A step is 8 independent multiply-adds into 8 running sums that stay in registers, with no per-row loop
set-up and no horizontal sum; row-by-row CSR with four partial sums per row was 1.5x slower on one core (24
GPT-2-small-shaped layers at 90% sparsity, one token, measured 2026-12-02). Columns are uint16 when the input
width allows (6 bytes per non-zero with the fp32 value).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

#: Rows per slice: one running sum each (8 scalar accumulators fit the registers; the products stay in order).
SLICE = 8
#: Slices processed for every activation row before moving on, so with several rows the slices' weights are read
#: from memory once and then from cache (32 slices of a 768-wide layer at 90% sparsity are ~120 KiB).
SLICE_BLOCK = 32
#: Most activation rows the few-rows kernels take; above it the panel kernels' FMAs over a token panel win.
FEW_ROWS = 16
# As in `_numba_spmm`: reassociation lets LLVM schedule the sums freely (fp32 rounding order only).
_FASTMATH = {"contract", "nnan", "ninf", "nsz", "arcp", "reassoc"}


def sell_pack(weight: torch.Tensor) -> tuple:
    """The non-zeros of a ``[out, in]`` weight in SELL-8 layout, for `sell_rows_matmul`.

    Args:
        weight: Dense fp32 weight (zeros are the inactive entries).

    Returns:
        ``(slice_ptr, perm, indices, data)`` NumPy arrays: ``slice_ptr`` int32 ``[slices + 1]`` (slice ``g``'s
        steps are ``slice_ptr[g] .. slice_ptr[g + 1]``, each step 8 entries), ``perm`` int32 ``[out]`` (the
        original row of each sorted row), ``indices`` (uint16 when ``in <= 65536``, else int32) and fp32 ``data``
        of ``8 * slice_ptr[-1]`` entries; entry ``8 * step + lane`` belongs to sorted row ``8 * g + lane``.

    Example:
        >>> slice_ptr, perm, indices, data = sell_pack(torch.tensor([[0.0, 2.0], [3.0, 4.0]]))
        >>> perm.tolist(), slice_ptr.tolist(), data[:2].tolist(), data[8:10].tolist()
        ([1, 0], [0, 2], [3.0, 2.0], [4.0, 0.0])
    """
    out_f, in_f = weight.shape
    counts = (weight != 0).sum(1)
    perm = torch.argsort(counts, descending=True, stable=True)
    slices = -(-out_f // SLICE)
    sorted_counts = torch.zeros(slices * SLICE, dtype=torch.int64)
    sorted_counts[:out_f] = counts[perm]
    slice_ptr = torch.zeros(slices + 1, dtype=torch.int64)
    slice_ptr[1:] = torch.cumsum(sorted_counts[::SLICE], 0)  # rows sorted descending: a slice's first is longest
    sorted_weight = weight[perm]
    rows, cols = sorted_weight.nonzero(as_tuple=True)  # row-major: the k-th non-zero of a row comes k-th
    row_start = torch.cumsum(sorted_counts, 0) - sorted_counts
    step = slice_ptr[rows // SLICE] + torch.arange(rows.numel()) - row_start[rows]
    position = step * SLICE + rows % SLICE
    entries = int(slice_ptr[-1]) * SLICE
    # Unsigned: a signed index makes Numba add a negative-index wrap-around to every gather.
    indices = np.zeros(entries, dtype=np.uint16 if in_f <= 2 ** 16 else np.int32)
    data = np.zeros(entries, dtype=np.float32)
    indices[position.numpy()] = cols.numpy()
    data[position.numpy()] = sorted_weight[rows, cols].numpy()
    return slice_ptr.to(torch.int32).numpy(), perm.to(torch.int32).numpy(), indices, data


@njit(fastmath=_FASTMATH, boundscheck=False, cache=True)
def _sell_slices(slice_ptr, perm, indices, data, bias, x, y, g0, g1):  # pragma: no cover - compiled
    """Slices ``g0 .. g1`` of `sell_rows_matmul`, for every activation row, `SLICE_BLOCK` slices at a time."""
    out = bias.shape[0]
    for b0 in range(g0, g1, SLICE_BLOCK):
        b1 = min(g1, b0 + SLICE_BLOCK)
        for t in range(x.shape[0]):
            xt = x[t]
            yt = y[t]
            for g in range(b0, b1):
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                q = slice_ptr[g] * 8
                end = slice_ptr[g + 1] * 8
                while q < end:
                    a0 += data[q] * xt[indices[q]]
                    a1 += data[q + 1] * xt[indices[q + 1]]
                    a2 += data[q + 2] * xt[indices[q + 2]]
                    a3 += data[q + 3] * xt[indices[q + 3]]
                    a4 += data[q + 4] * xt[indices[q + 4]]
                    a5 += data[q + 5] * xt[indices[q + 5]]
                    a6 += data[q + 6] * xt[indices[q + 6]]
                    a7 += data[q + 7] * xt[indices[q + 7]]
                    q += 8
                sums = (a0, a1, a2, a3, a4, a5, a6, a7)
                r = g * 8
                for lane in range(min(8, out - r)):  # the last slice may hold fewer than 8 real rows
                    o = perm[r + lane]
                    yt[o] = bias[o] + sums[lane]


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def sell_rows_matmul(slice_ptr, perm, indices, data, bias, x, y, threads):  # pragma: no cover - compiled
    """``y[t, o] = bias[o] + sum_k W[o, k] x[t, k]`` for a few activation rows ``x`` ``[T, in]`` (``T <= 16``).

    Each of ``threads`` (Numba's thread count, passed in: a ``numba.get_num_threads()`` call in here would keep
    Numba from caching the compiled kernel) takes one contiguous range of slices holding an equal share of the
    entries: one long sequential stream per thread keeps the hardware prefetchers ahead (64-row tasks handed out
    in turn were 1.4x slower on 24 GPT-2-small-shaped layers, measured).
    """
    slices = slice_ptr.shape[0] - 1
    tasks = max(1, min(threads, slices))
    total = slice_ptr[slices]
    for k in prange(tasks):
        # Neighbouring tasks compute the same boundary: the first slice starting at or after k/tasks of the steps.
        g0 = 0 if k == 0 else np.searchsorted(slice_ptr[:slices], (k * total) // tasks)
        g1 = slices if k == tasks - 1 else np.searchsorted(slice_ptr[:slices], ((k + 1) * total) // tasks)
        _sell_slices(slice_ptr, perm, indices, data, bias, x, y, g0, g1)


@njit(fastmath=_FASTMATH, boundscheck=False, cache=True)
def sell_rows_matmul_serial(slice_ptr, perm, indices, data, bias, x, y):  # pragma: no cover - compiled
    """`sell_rows_matmul` on the calling thread, for one-thread runs: a decode step's layer takes well under a
    millisecond, and handing it to Numba's worker thread can cost more than that when other processes keep the
    cores busy (measured on a loaded 2-core machine: 20-50 ms per call)."""
    _sell_slices(slice_ptr, perm, indices, data, bias, x, y, 0, slice_ptr.shape[0] - 1)
