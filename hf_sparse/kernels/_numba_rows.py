"""Numba kernels for a few activation rows: the decode steps of generation (optional: ``hf_sparse[cpu-kernels]``).

A decode step multiplies one token per sequence by every weight, so the cost is reading the weight, and for a
sparse weight that means one gather from the activation per non-zero. The weight is stored as *SELL-8* (sliced
ELLPACK with slices of 8 rows; Kreutzer, Hager, Wellein, Fehske and Bishop 2014, "A unified sparse matrix data
format for efficient general sparse matrix-vector multiply on modern processors with wide SIMD units",
arXiv:1307.6209): the rows are sorted by their number of entries (σ = all rows) and taken 8 at a time; slice
``g`` stores ``L_g`` steps (the count of its longest row), each step holding one ``(value, column step)`` pair per
row of the slice, the shorter rows padded with zeros (sorting leaves almost no padding: 0.2% for a 90%-sparse
random mask). A step is 8 independent multiply-adds into 8 running sums, with no per-row loop set-up and no
horizontal sum; row-by-row CSR with four partial sums per row was 1.5x slower on one core (24 GPT-2-small-shaped
layers at 90% sparsity, one token, measured 2026-12-02).

Columns are stored as 8-bit steps from the row's previous column (the first from column 0), so a non-zero costs
5 bytes with its fp32 value instead of 6 with a 16-bit column: decoding streams every weight from memory once per
token, and on the 2-core machine here 24 such layers ran at the memory bandwidth. A gap over 255 columns is
bridged by filler entries of value 0 and step 255 (none in a 90%-sparse random 768-wide row in practice; a few
per row between 16x16 blocks). A step is one vector add of the 8 column steps, 8 activation loads and one vector
multiply-add, written as LLVM vector IR in `hf_sparse.kernels._simd.slice_sums`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from ._simd import slice_sums

#: Rows per slice: one running sum each (8 fp32 lanes are one AVX2 register).
SLICE = 8
#: Slices processed for every activation row before moving on, so with several rows the slices' weights are read
#: from memory once and then from cache (32 slices of a 768-wide layer at 90% sparsity are ~100 KiB).
SLICE_BLOCK = 32
#: Most activation rows the few-rows kernels take; above it the panel kernels' FMAs over a token panel win.
FEW_ROWS = 16
#: Largest column step one entry stores; longer gaps take filler entries.
MAX_STEP = 255
# As in `_numba_spmm`: reassociation lets LLVM schedule the sums freely (fp32 rounding order only).
_FASTMATH = {"contract", "nnan", "ninf", "nsz", "arcp", "reassoc"}
#: Codes of the element-wise activations the kernels can apply to their outputs: 0 for none, else one plus the
#: name's position in `hf_sparse.kernels.inference_linear.ACTIVATIONS` ("gelu", "gelu_tanh", "relu").
ACT_NONE, ACT_GELU, ACT_GELU_TANH, ACT_RELU = 0, 1, 2, 3


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def activate(v, act):  # pragma: no cover - compiled
    """``v`` through activation code ``act`` (`ACT_GELU`, ...), in fp32.

    The tanh GELU (Hendrycks and Gimpel 2016, arXiv:1606.08415; GPT-2's ``gelu_new``) is
    ``0.5 v (1 + tanh(u))`` with ``u = sqrt(2 / pi) (v + 0.044715 v^3)``, written as ``v / (1 + exp(-2u))`` (the
    same function): one ``expf`` call instead of a slower ``tanhf``. The exponent is capped at 80, where the result
    is already 0 to fp32 precision, so it never overflows to infinity.
    """
    if act == ACT_GELU_TANH:
        u = np.float32(0.7978845608028654) * (v + np.float32(0.044715) * v * v * v)
        return v / (np.float32(1.0) + np.exp(min(np.float32(-2.0) * u, np.float32(80.0))))
    if act == ACT_GELU:
        return np.float32(0.5) * v * (np.float32(1.0) + math.erf(v * np.float32(0.7071067811865476)))
    if act == ACT_RELU:
        return max(v, np.float32(0.0))
    return v


def sell_pack(weight: torch.Tensor) -> tuple:
    """The non-zeros of a ``[out, in]`` weight in SELL-8 layout with 8-bit column steps, for `sell_rows_matmul`.

    Args:
        weight: Dense fp32 weight (zeros are the inactive entries).

    Returns:
        ``(slice_ptr, perm, steps, data)`` NumPy arrays: ``slice_ptr`` int32 ``[slices + 1]`` (slice ``g``'s
        steps are ``slice_ptr[g] .. slice_ptr[g + 1]``, each 8 entries), ``perm`` int32 ``[out]`` (the original
        row of each sorted row), uint8 ``steps`` and fp32 ``data`` of ``8 * slice_ptr[-1]`` entries; entry
        ``8 * step + lane`` belongs to sorted row ``8 * g + lane``, whose column is the running sum of its steps.

    Example:
        >>> slice_ptr, perm, steps, data = sell_pack(torch.tensor([[0.0, 2.0], [3.0, 4.0]]))
        >>> perm.tolist(), slice_ptr.tolist(), data[:2].tolist(), steps[:2].tolist(), steps[8:10].tolist()
        ([1, 0], [0, 2], [3.0, 2.0], [0, 1], [1, 0])
    """
    out_f = weight.shape[0]
    rows, cols = weight.nonzero(as_tuple=True)  # row-major: a row's non-zeros in column order
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    gap = cols.clone()
    gap[~first] -= cols[:-1][~first[1:]]
    fillers = torch.div(gap - 1, MAX_STEP, rounding_mode="floor").clamp_(min=0)  # entries bridging before each
    per_row = torch.zeros(out_f, dtype=torch.int64)
    per_row.index_add_(0, rows, 1 + fillers)
    perm = torch.argsort(per_row, descending=True, stable=True)
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(out_f)
    slices = -(-out_f // SLICE)
    sorted_counts = torch.zeros(slices * SLICE, dtype=torch.int64)
    sorted_counts[:out_f] = per_row[perm]
    slice_ptr = torch.zeros(slices + 1, dtype=torch.int64)
    slice_ptr[1:] = torch.cumsum(sorted_counts[::SLICE], 0)  # rows sorted descending: a slice's first is longest
    # Entry number of each non-zero within its row: the entries (non-zeros and fillers) before it, plus its fillers.
    entry = torch.cumsum(1 + fillers, 0) - 1  # over all rows in order
    row_begin = torch.zeros(out_f, dtype=torch.int64)
    row_begin[rows[first]] = (entry - fillers)[first]
    within = entry - row_begin[rows]
    lane_row = rank[rows]
    step = slice_ptr[lane_row // SLICE] + within
    entries = int(slice_ptr[-1]) * SLICE
    steps = np.zeros(entries, dtype=np.uint8)
    data = np.zeros(entries, dtype=np.float32)
    position = (step * SLICE + lane_row % SLICE).numpy()
    steps[position] = (gap - MAX_STEP * fillers).numpy()
    data[position] = weight[rows, cols].numpy()
    if int(fillers.sum()):
        owner = torch.repeat_interleave(torch.arange(rows.numel()), fillers)  # the non-zero each filler precedes
        nth = torch.arange(owner.numel()) - torch.repeat_interleave(torch.cumsum(fillers, 0) - fillers, fillers)
        steps[((step[owner] - fillers[owner] + nth) * SLICE + lane_row[owner] % SLICE).numpy()] = MAX_STEP
    return slice_ptr.to(torch.int32).numpy(), perm.to(torch.int32).numpy(), steps, data


@njit(fastmath=_FASTMATH, boundscheck=False, cache=True)
def _sell_slices(slice_ptr, perm, steps, data, bias, x, y, g0, g1, act):  # pragma: no cover - compiled
    """Slices ``g0 .. g1`` of `sell_rows_matmul`, for every activation row, `SLICE_BLOCK` slices at a time."""
    out = bias.shape[0]
    sums = np.empty(8, dtype=np.float32)
    for b0 in range(g0, g1, SLICE_BLOCK):
        b1 = min(g1, b0 + SLICE_BLOCK)
        for t in range(x.shape[0]):
            xt = x[t]
            yt = y[t]
            for g in range(b0, b1):
                q0 = np.int64(slice_ptr[g]) * 8
                q1 = np.int64(slice_ptr[g + 1]) * 8
                slice_sums(data, steps, xt, q0, q1, sums)
                r = g * 8
                for lane in range(min(8, out - r)):  # the last slice may hold fewer than 8 real rows
                    o = perm[r + lane]
                    yt[o] = activate(bias[o] + sums[lane], act)


@njit(parallel=True, fastmath=_FASTMATH, boundscheck=False, cache=True)
def sell_rows_matmul(slice_ptr, perm, steps, data, bias, x, y, threads, act=ACT_NONE):  # pragma: no cover
    """``y[t, o] = act(bias[o] + sum_k W[o, k] x[t, k])`` for a few activation rows ``x`` ``[T, in]`` (``T <= 16``),
    ``act`` an activation code (`ACT_GELU`, ...) applied by each thread to the outputs it wrote, while they are in cache.

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
        _sell_slices(slice_ptr, perm, steps, data, bias, x, y, g0, g1, act)


@njit(fastmath=_FASTMATH, boundscheck=False, cache=True)
def sell_rows_matmul_serial(slice_ptr, perm, steps, data, bias, x, y, act=ACT_NONE):  # pragma: no cover
    """`sell_rows_matmul` on the calling thread, for one-thread runs: a decode step's layer takes well under a
    millisecond, and handing it to Numba's worker thread can cost more than that when other processes keep the
    cores busy (measured on a loaded 2-core machine: 20-50 ms per call)."""
    _sell_slices(slice_ptr, perm, steps, data, bias, x, y, 0, slice_ptr.shape[0] - 1, act)
