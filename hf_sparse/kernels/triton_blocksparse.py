"""Block-sparse training matmuls in Triton for `SparseLinear` / `SparseConv1D` with ``B x B`` blocks (B = 16, 32, 64).

Three kernels, each touching only active blocks (``W`` in ``nn.Linear`` layout ``[out, in]``, ``X`` ``[M, in]``):

- forward ``Y = X W^T (+ b)``: one program per (token tile, output block row) walks that row's active block
  columns (CSR-like ``row_ptr`` / ``col_idx``); a row without active blocks just writes the bias;
- ``dX = dY W``: one program per (token tile, input block column) walks that column's active block rows (the
  transposed layout ``col_ptr`` / ``row_idx``);
- ``dW``: one program per (*active* block, token split) reduces ``dY_blk^T X_blk`` over its tokens; the fp32
  partial sums are added up and scattered into the gradient; inactive blocks are never computed (the returned
  gradient is zero there, as the always-sparse convention demands).

Weights are read straight from the dense ``Parameter`` through its strides (``Conv1D``'s ``[in, out]`` weight is
its transpose view), so nothing is packed and optimizer updates are seen immediately. Products accumulate in
fp32 for fp16 / bf16 / fp32 inputs. The `BlockLayout` is rebuilt from the mask whenever the mask buffer changes
(its in-place version counter moves, e.g. after ``set_mask_``), or on `refresh_layout_`.

On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported) — that
is how the tests check them against the dense masked reference; real speed needs CUDA. The kernels use only
``triton.language`` built-ins (``tl.full``, not ``tl.zeros``, which Triton itself defines with ``@triton.jit``): the
interpreter rejects such library functions when Triton was imported before the variable was set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..layers import SparseConv1D, SparseMixin

SUPPORTED_BLOCK_SIZES = (16, 32, 64)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreter_active() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1`` when Triton was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


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
    """

    block_size: int
    shape: Tuple[int, int]
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    row_of: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor

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

        def offsets(index: torch.Tensor, n: int) -> torch.Tensor:
            ptr = torch.zeros(n + 1, **i32)
            ptr[1:] = torch.cumsum(torch.bincount(index, minlength=n), 0)
            return ptr

        return cls(block_size, (out_f, in_f), offsets(r, rows), c.to(torch.int32), r.to(torch.int32),
                   offsets(ct, cols), rt.to(torch.int32))


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, row_ptr, col_idx, M,
                stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    r = tl.program_id(1)
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


@triton.jit
def _dx_kernel(dy_ptr, w_ptr, dx_ptr, col_ptr, row_idx, M,
               stride_dym, stride_dyn, stride_wn, stride_wk, stride_dxm, stride_dxk,
               BLOCK_M: tl.constexpr, BS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    c = tl.program_id(1)
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


@triton.jit
def _dw_kernel(dy_ptr, x_ptr, part_ptr, row_of, col_idx, M, NNZB, TILES_PER_SPLIT,
               stride_dym, stride_dyn, stride_xm, stride_xk,
               BLOCK_M: tl.constexpr, BS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(0)
    split = tl.program_id(1)
    r = tl.load(row_of + b)
    c = tl.load(col_idx + b)
    offs_b = tl.arange(0, BS)
    acc = tl.full((BS, BS), 0.0, tl.float32)
    m_begin = split * TILES_PER_SPLIT * BLOCK_M
    m_end = tl.minimum(M, m_begin + TILES_PER_SPLIT * BLOCK_M)
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


def _dw_splits(tiles: int, num_blocks: int, device: torch.device) -> int:
    # One program per active block leaves most of the GPU idle at high sparsity (e.g. 58 blocks of 64x64 at 90%),
    # so the token reduction is split until there are a few programs per SM.
    units = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return max(1, min(tiles, triton.cdiv(4 * units, max(num_blocks, 1))))


def _block_m(tokens: int) -> int:
    # tl.dot needs tiles of at least 16; 64 rows keep the GPU busy without spilling a 64x64 fp32 accumulator.
    return max(16, min(64, triton.next_power_of_2(max(tokens, 1))))


def _dot_options(dtype: torch.dtype) -> dict:
    # fp32 inputs follow PyTorch's own TF32 switch, so the kernel matches what F.linear would do on this machine.
    precision = "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    # Triton 3.9's interpreter computes tl.dot on bfloat16 operands wrongly (garbage of order 1e10); bf16 x bf16
    # products are exact in fp32, so upcasting there gives the same result the GPU's bf16 dot accumulates.
    upcast = dtype == torch.bfloat16 and interpreter_active()
    return dict(PRECISION=precision, UPCAST=upcast)


class BlockSparseLinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` over the active blocks of ``layout``; ``x`` is 2-D ``[M, in]``, ``weight`` ``[out, in]``
    (any strides). Gradients: ``dx`` over active blocks, ``dW`` only for active blocks (zero elsewhere; returned
    contiguous in ``[out, in]`` layout, which autograd maps back onto a transposed weight view)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], layout: BlockLayout):
        M = x.shape[0]
        out_f = weight.shape[0]
        bs = layout.block_size
        y = torch.empty(M, out_f, dtype=x.dtype, device=x.device)
        block_m = _block_m(M)
        grid = (triton.cdiv(M, block_m), out_f // bs)
        _fwd_kernel[grid](x, weight, bias if bias is not None else y, y, layout.row_ptr, layout.col_idx, M,
                          x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
                          HAS_BIAS=bias is not None, BLOCK_M=block_m, BS=bs, **_dot_options(x.dtype))
        ctx.save_for_backward(x, weight)
        ctx.layout = layout
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        layout: BlockLayout = ctx.layout
        dy = dy.contiguous()
        M = x.shape[0]
        bs = layout.block_size
        block_m = _block_m(M)
        options = _dot_options(x.dtype)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x, memory_format=torch.contiguous_format)
            grid = (triton.cdiv(M, block_m), weight.shape[1] // bs)
            _dx_kernel[grid](dy, weight, dx, layout.col_ptr, layout.row_idx, M,
                             dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1), dx.stride(0),
                             dx.stride(1), BLOCK_M=block_m, BS=bs, **options)
        if ctx.needs_input_grad[1]:
            out_f, in_f = weight.shape
            dw = torch.zeros(out_f, in_f, dtype=weight.dtype, device=weight.device)
            if layout.num_blocks:
                tiles = triton.cdiv(M, block_m)
                splits = _dw_splits(tiles, layout.num_blocks, x.device)
                per_split = triton.cdiv(tiles, splits)
                splits = triton.cdiv(tiles, per_split)
                part = torch.empty(splits, layout.num_blocks, bs, bs, dtype=torch.float32, device=x.device)
                _dw_kernel[(layout.num_blocks, splits)](dy, x, part, layout.row_of, layout.col_idx, M,
                                                        layout.num_blocks, per_split, dy.stride(0), dy.stride(1),
                                                        x.stride(0), x.stride(1), BLOCK_M=block_m, BS=bs, **options)
                blocks = dw.view(out_f // bs, bs, in_f // bs, bs).permute(0, 2, 1, 3)
                blocks[layout.row_of.long(), layout.col_idx.long()] = part.sum(0).to(dw.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0, dtype=torch.float32).to(dy.dtype)
        return dx, dw, db, None


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
