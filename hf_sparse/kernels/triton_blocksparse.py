"""Block-sparse training matmuls in Triton for `SparseLinear` / `SparseConv1D` with ``B x B`` blocks (B = 16, 32, 64).

Three kernels, each touching only active blocks (``W`` in ``nn.Linear`` layout ``[out, in]``, ``X`` ``[M, in]``):

- forward ``Y = X W^T (+ b)``: one program per (token tile, *non-empty* output block row) walks that row's active
  block columns (CSR-like ``row_ptr`` / ``col_idx``); the columns of empty block rows get the bias (or zeros) from
  one indexed torch write, issued only when there are such rows;
- ``dX = dY W``: one program per (token tile, *non-empty* input block column) walks that column's active block
  rows (the transposed layout ``col_ptr`` / ``row_idx``); empty block columns are zero-filled in one write;
- ``dW``: one program per (*active* block, token split) reduces ``dY_blk^T X_blk`` over its tokens; the fp32
  partial sums are added up and scattered into the gradient; inactive blocks are never computed (the returned
  gradient is zero there, as the always-sparse convention demands).

Launch configurations (token tile ``BLOCK_M``, warps, pipeline stages) are autotuned on a GPU over a pruned space
(`triton_configs`); under the interpreter a single fixed config is used. Weights are read straight from the dense
``Parameter`` through its strides (``Conv1D``'s ``[in, out]`` weight is its transpose view), so nothing is packed
and optimizer updates are seen immediately. Products accumulate in fp32 for fp16 / bf16 / fp32 inputs. The
`BlockLayout` is rebuilt from the mask whenever the mask buffer changes (its in-place version counter moves, e.g.
after ``set_mask_``), or on `refresh_layout_`.

On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported) — that
is how the tests check them against the dense masked reference; real speed needs CUDA. The kernels use only
``triton.language`` built-ins (``tl.full``, not ``tl.zeros``, which Triton itself defines with ``@triton.jit``): the
interpreter rejects such library functions when Triton was imported before the variable was set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from ..layers import SparseConv1D, SparseMixin
from . import triton_configs as tc

SUPPORTED_BLOCK_SIZES = (16, 32, 64)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreter_active() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1`` when Triton was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_CONFIGS = tc.candidate_configs(interpreter_active())
# The autotuner re-tunes when one of these kernel arguments changes (it adds the tensors' dtypes itself). The
# M_BUCKET, NNZB_BUCKET and LINES arguments exist only for it: the token count and the number of active blocks
# rounded up to powers of two, and the weight's block rows (fwd, dW) / block columns (dX). They are fixed for a
# layer under dynamic sparse training (exact counts), so mask updates never trigger re-tuning.
_TUNE_KEY = ["M_BUCKET", "NNZB_BUCKET", "LINES", "BS"]


@dataclass
class BlockLayout:
    """Active blocks of a ``[out, in]`` mask, as CSR (by output block row) and CSC (by input block column).

    Attributes:
        block_size: Block side ``B``.
        shape: Weight shape ``(out, in)`` in ``nn.Linear`` layout.
        row_ptr: ``[out/B + 1]`` int32 offsets into ``col_idx``.
        col_idx: ``[nnzb]`` int32 block columns, row-major order.
        row_of: ``[nnzb]`` int32 block row of each entry of ``col_idx`` (the dW kernel's work list).
        col_ptr: ``[in/B + 1]`` int32 offsets into ``row_idx``.
        row_idx: ``[nnzb]`` int32 block rows, column-major order.
        rows_nz: int32 block rows with at least one active block (the forward kernel's work list).
        rows_empty: int64 block rows without active blocks.
        cols_nz: int32 block columns with at least one active block (the dX kernel's work list).
        cols_empty: int64 block columns without active blocks.
    """

    block_size: int
    shape: Tuple[int, int]
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    row_of: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor
    rows_nz: torch.Tensor
    rows_empty: torch.Tensor
    cols_nz: torch.Tensor
    cols_empty: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return int(self.col_idx.numel())

    @classmethod
    def from_mask(cls, mask: torch.Tensor, block_size: int) -> "BlockLayout":
        """Builds the layout of a boolean ``[out, in]`` mask made of whole ``block_size`` blocks.

        Args:
            mask: Boolean mask in ``nn.Linear`` layout.
            block_size: Block side; must divide both dimensions.

        Returns:
            The layout, on the mask's device.
        """
        out_f, in_f = mask.shape
        if block_size not in SUPPORTED_BLOCK_SIZES or out_f % block_size or in_f % block_size:
            raise ValueError(f"block_size={block_size} must be one of {SUPPORTED_BLOCK_SIZES} and divide the "
                             f"weight shape {(out_f, in_f)}.")
        rows, cols = out_f // block_size, in_f // block_size
        blocks = mask.reshape(rows, block_size, cols, block_size).any(dim=3).any(dim=1)
        expanded = blocks.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
        if not torch.equal(expanded, mask):
            # A partly active block would get gradient on its inactive weights: refuse rather than break sparsity.
            raise ValueError(f"The mask is not made of whole {block_size}x{block_size} blocks; the block-sparse "
                             "kernel needs a block-structured mask.")
        r, c = blocks.nonzero(as_tuple=True)
        ct, rt = blocks.t().nonzero(as_tuple=True)
        i32 = dict(dtype=torch.int32, device=mask.device)
        row_counts = torch.bincount(r, minlength=rows)
        col_counts = torch.bincount(ct, minlength=cols)

        def offsets(counts: torch.Tensor) -> torch.Tensor:
            ptr = torch.zeros(counts.numel() + 1, **i32)
            ptr[1:] = torch.cumsum(counts, 0)
            return ptr

        return cls(block_size, (out_f, in_f), offsets(row_counts), c.to(torch.int32), r.to(torch.int32),
                   offsets(col_counts), rt.to(torch.int32),
                   rows_nz=(row_counts > 0).nonzero().flatten().to(torch.int32),
                   rows_empty=(row_counts == 0).nonzero().flatten(),
                   cols_nz=(col_counts > 0).nonzero().flatten().to(torch.int32),
                   cols_empty=(col_counts == 0).nonzero().flatten())


@triton.autotune(configs=_CONFIGS, key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": tc.make_prune("fwd", "x_ptr")})
@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, row_ptr, col_idx, rows_nz, M, M_BUCKET, NNZB_BUCKET, LINES,
                stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                HAS_BIAS: tl.constexpr, BS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    r = tl.load(rows_nz + tl.program_id(1))  # only block rows with active blocks get a program
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_b = tl.arange(0, BS)
    m_ok = offs_m[:, None] < M
    acc = tl.full((BLOCK_M, BS), 0.0, tl.float32)
    start = tl.load(row_ptr + r)
    end = tl.load(row_ptr + r + 1)
    for p in range(start, end):
        c = tl.load(col_idx + p)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (c * BS + offs_b)[None, :] * stride_xk, mask=m_ok, other=0.0)
        w = tl.load(w_ptr + (r * BS + offs_b)[:, None] * stride_wn + (c * BS + offs_b)[None, :] * stride_wk)
        if UPCAST:
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + r * BS + offs_b).to(tl.float32)[None, :]
    y = y_ptr + offs_m[:, None] * stride_ym + (r * BS + offs_b)[None, :] * stride_yn
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok)


@triton.autotune(configs=_CONFIGS, key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": tc.make_prune("dx", "dy_ptr")})
@triton.jit
def _dx_kernel(dy_ptr, w_ptr, dx_ptr, col_ptr, row_idx, cols_nz, M, M_BUCKET, NNZB_BUCKET, LINES,
               stride_dym, stride_dyn, stride_wn, stride_wk, stride_dxm, stride_dxk,
               BS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    c = tl.load(cols_nz + tl.program_id(1))  # only block columns with active blocks get a program
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_b = tl.arange(0, BS)
    m_ok = offs_m[:, None] < M
    acc = tl.full((BLOCK_M, BS), 0.0, tl.float32)
    start = tl.load(col_ptr + c)
    end = tl.load(col_ptr + c + 1)
    for p in range(start, end):
        r = tl.load(row_idx + p)
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + (r * BS + offs_b)[None, :] * stride_dyn,
                     mask=m_ok, other=0.0)
        w = tl.load(w_ptr + (r * BS + offs_b)[:, None] * stride_wn + (c * BS + offs_b)[None, :] * stride_wk)
        if UPCAST:
            dy, w = dy.to(tl.float32), w.to(tl.float32)
        acc += tl.dot(dy, w, input_precision=PRECISION)
    dx = dx_ptr + offs_m[:, None] * stride_dxm + (c * BS + offs_b)[None, :] * stride_dxk
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=m_ok)


@triton.autotune(configs=_CONFIGS, key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": tc.make_prune("dw", "x_ptr")})
@triton.jit
def _dw_kernel(dy_ptr, x_ptr, part_ptr, row_of, col_idx, M, M_BUCKET, NNZB_BUCKET, LINES, NNZB,
               TOKENS_PER_SPLIT,
               stride_dym, stride_dyn, stride_xm, stride_xk,
               BS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr):
    b = tl.program_id(0)
    split = tl.program_id(1)
    r = tl.load(row_of + b)
    c = tl.load(col_idx + b)
    offs_b = tl.arange(0, BS)
    acc = tl.full((BS, BS), 0.0, tl.float32)
    # TOKENS_PER_SPLIT is a multiple of every BLOCK_M candidate, so the split count (and the partial-sum buffer)
    # does not depend on the config the autotuner picks.
    m_begin = split * TOKENS_PER_SPLIT
    m_end = tl.minimum(M, m_begin + TOKENS_PER_SPLIT)
    for m0 in range(m_begin, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m[:, None] < m_end
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + (r * BS + offs_b)[None, :] * stride_dyn,
                     mask=m_ok, other=0.0)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (c * BS + offs_b)[None, :] * stride_xk, mask=m_ok, other=0.0)
        if UPCAST:
            dy, x = dy.to(tl.float32), x.to(tl.float32)
        acc += tl.dot(tl.trans(dy), x, input_precision=PRECISION)
    # Partial sums of this token split, [split, block, BS, BS] in fp32; summed (deterministically) by the caller.
    part = part_ptr + ((split * NNZB + b) * BS + offs_b[:, None]) * BS + offs_b[None, :]
    tl.store(part, acc)


def _dw_splits(tokens: int, num_blocks: int, device: torch.device) -> Tuple[int, int]:
    """``(splits, tokens_per_split)`` of the dW token reduction; ``tokens_per_split`` is a multiple of the
    largest ``BLOCK_M``."""
    # One program per active block leaves most of the GPU idle at high sparsity (e.g. 58 blocks of 64x64 at 90%),
    # so the token reduction is split until there are a few programs per SM.
    units = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    quantum = max(tc.BLOCK_MS)
    splits = max(1, min(triton.cdiv(tokens, quantum), triton.cdiv(4 * units, max(num_blocks, 1))))
    per_split = triton.cdiv(triton.cdiv(tokens, splits), quantum) * quantum
    return triton.cdiv(tokens, per_split), per_split


def _dot_options(dtype: torch.dtype) -> dict:
    # fp32 inputs follow PyTorch's own TF32 switch, so the kernel matches what F.linear would do on this machine.
    precision = "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    # Triton 3.9's interpreter computes tl.dot on bfloat16 operands wrongly (garbage of order 1e10); bf16 x bf16
    # products are exact in fp32, so upcasting there gives the same result the GPU's bf16 dot accumulates.
    upcast = dtype == torch.bfloat16 and interpreter_active()
    return dict(PRECISION=precision, UPCAST=upcast)


def _tune_key(tokens: int, layout: BlockLayout, dim: int) -> Tuple[int, int, int, int]:
    """``M, M_BUCKET, NNZB_BUCKET, LINES`` kernel arguments (see `_TUNE_KEY`)."""
    return (tokens, tc.bucket(tokens), tc.bucket(layout.num_blocks),
            layout.shape[dim] // layout.block_size)


def _fwd_launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], y: torch.Tensor,
                layout: BlockLayout) -> Tuple[tuple, dict]:
    """Positional arguments and constexprs of `_fwd_kernel` (shared by the launch and the compile check)."""
    args = (x, weight, bias if bias is not None else y, y, layout.row_ptr, layout.col_idx, layout.rows_nz,
            *_tune_key(x.shape[0], layout, 0), x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
            y.stride(0), y.stride(1))
    return args, dict(HAS_BIAS=bias is not None, BS=layout.block_size, **_dot_options(x.dtype))


def _dx_launch(dy: torch.Tensor, weight: torch.Tensor, dx: torch.Tensor, layout: BlockLayout) -> Tuple[tuple, dict]:
    """Positional arguments and constexprs of `_dx_kernel`."""
    args = (dy, weight, dx, layout.col_ptr, layout.row_idx, layout.cols_nz, *_tune_key(dy.shape[0], layout, 1),
            dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1), dx.stride(0), dx.stride(1))
    return args, dict(BS=layout.block_size, **_dot_options(dy.dtype))


def _dw_launch(dy: torch.Tensor, x: torch.Tensor, part: torch.Tensor, layout: BlockLayout,
               tokens_per_split: int) -> Tuple[tuple, dict]:
    """Positional arguments and constexprs of `_dw_kernel`."""
    args = (dy, x, part, layout.row_of, layout.col_idx, *_tune_key(x.shape[0], layout, 0), layout.num_blocks,
            tokens_per_split, dy.stride(0), dy.stride(1), x.stride(0), x.stride(1))
    return args, dict(BS=layout.block_size, **_dot_options(x.dtype))


class BlockSparseLinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` over the active blocks of ``layout``; ``x`` is 2-D ``[M, in]``, ``weight`` ``[out, in]``
    (any strides). Gradients: ``dx`` over active blocks, ``dW`` only for active blocks (zero elsewhere; returned
    contiguous in ``[out, in]`` layout, which autograd maps back onto a transposed weight view)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], layout: BlockLayout):
        M, out_f, bs = x.shape[0], weight.shape[0], layout.block_size
        y = torch.empty(M, out_f, dtype=x.dtype, device=x.device)
        if layout.rows_nz.numel():
            args, meta = _fwd_launch(x, weight, bias, y, layout)
            _fwd_kernel[lambda META: (triton.cdiv(M, META["BLOCK_M"]), layout.rows_nz.numel())](*args, **meta)
        if layout.rows_empty.numel():  # output columns no active block reaches: bias (or zero) only
            fill = 0.0 if bias is None else bias.reshape(-1, bs)[layout.rows_empty]
            y.view(M, -1, bs)[:, layout.rows_empty] = fill
        ctx.save_for_backward(x, weight)
        ctx.layout = layout
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        layout: BlockLayout = ctx.layout
        dy = dy.contiguous()
        M, bs = x.shape[0], layout.block_size
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x, memory_format=torch.contiguous_format)
            if layout.cols_nz.numel():
                args, meta = _dx_launch(dy, weight, dx, layout)
                _dx_kernel[lambda META: (triton.cdiv(M, META["BLOCK_M"]), layout.cols_nz.numel())](*args, **meta)
            if layout.cols_empty.numel():  # inputs that feed no active block get no gradient
                dx.view(M, -1, bs)[:, layout.cols_empty] = 0.0
        if ctx.needs_input_grad[1]:
            out_f, in_f = weight.shape
            dw = torch.zeros(out_f, in_f, dtype=weight.dtype, device=weight.device)
            if layout.num_blocks:
                splits, per_split = _dw_splits(M, layout.num_blocks, x.device)
                part = torch.empty(splits, layout.num_blocks, bs, bs, dtype=torch.float32, device=x.device)
                args, meta = _dw_launch(dy, x, part, layout, per_split)
                _dw_kernel[(layout.num_blocks, splits)](*args, **meta)
                blocks = dw.view(out_f // bs, bs, in_f // bs, bs).permute(0, 2, 1, 3)
                total = part[0] if splits == 1 else part.sum(0)
                blocks[layout.row_of.long(), layout.col_idx.long()] = total.to(dw.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0, dtype=torch.float32).to(dy.dtype)
        return dx, dw, db, None


def chosen_configs() -> Dict[str, str]:
    """The launch config each kernel used last (after autotuning on a GPU), e.g. for benchmark reports.

    Returns:
        ``{"fwd": "BLOCK_M=64 warps=4 stages=2", "dx": ..., "dw": ...}``; kernels not launched yet are absent.
    """
    kernels = {"fwd": _fwd_kernel, "dx": _dx_kernel, "dw": _dw_kernel}
    return {name: tc.describe(k.best_config) for name, k in kernels.items() if getattr(k, "best_config", None)}


def _linear_layout(layer: SparseMixin) -> Tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight and mask as ``[out, in]`` views (Conv1D stores ``[in, out]``)."""
    if isinstance(layer, SparseConv1D):
        return layer.weight.t(), layer.weight_mask.t()
    return layer.weight, layer.weight_mask


def layout_for(layer: SparseMixin) -> BlockLayout:
    """The layer's cached `BlockLayout`, rebuilt when its mask buffer was replaced or modified in place."""
    mask = layer.weight_mask
    key = (mask.data_ptr(), mask._version, mask.device, layer.structure.block_size)
    cached = getattr(layer, "_hf_sparse_block_layout", None)
    if cached is None or cached[0] != key:
        cached = (key, BlockLayout.from_mask(_linear_layout(layer)[1], layer.structure.block_size))
        layer._hf_sparse_block_layout = cached
    return cached[1]


def refresh_layout_(layer: SparseMixin) -> BlockLayout:
    """Rebuilds the layer's layout now (needed only if a mask was changed behind the version counter, e.g. via
    ``.data``)."""
    if hasattr(layer, "_hf_sparse_block_layout"):
        del layer._hf_sparse_block_layout
    return layout_for(layer)


def block_sparse_forward(layer: SparseMixin, x: torch.Tensor) -> torch.Tensor:
    """The layer's forward through the Triton kernels (any leading shape, autocast-aware)."""
    weight, _ = _linear_layout(layer)
    bias = layer.bias
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    if x.dtype not in SUPPORTED_DTYPES or x.dtype != weight.dtype:
        raise ValueError(f"Block-sparse kernel needs matching float32/float16/bfloat16 input and weight, got input "
                         f"{x.dtype} and weight {weight.dtype}.")
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    if x2d.shape[0] == 0:
        return x.new_zeros(*lead, weight.shape[0])
    y = BlockSparseLinearFunction.apply(x2d, weight, bias, layout_for(layer))
    return y.reshape(*lead, weight.shape[0])
