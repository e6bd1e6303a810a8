"""2:4 semi-structured sparse tensor cores (NVIDIA, compute capability >= 8.0) for inference and training through
PyTorch's ``torch.sparse.to_sparse_semi_structured``, with a logged fall back to the masked path everywhere else.

A 2:4 `SparseLinear` / `SparseConv1D` keeps its masked weight compressed (values + metadata); the compressed copy is
rebuilt when the weight or the mask changes (their in-place version counters move after every optimizer step and
every mask update), so one compression serves all micro-batches of an optimizer step.

- Inference (no gradient needed): ``Y = X W^T + b`` through the compressed ``W``.
- Training (`SemiStructuredLinearFunction`): the same forward; ``dX = dY W`` through a compressed ``W^T`` when the
  mask is transposable 2:4 (every 4x4 tile holds 2 per row and per column, so ``W^T`` is 2:4 along its rows too),
  else with the dense masked ``W``; ``dW = (dY^T X) * mask`` (a dense product, masked: PyTorch has no
  sparse-output matmul for this format) so inactive weights get exactly zero gradient; ``db = sum(dY)``.

PyTorch's sparse tensor cores take float16 / bfloat16 only here (cuSPARSELt has no float32, and CUTLASS's float32
kernels use a 1:2 pattern that a 2:4 mask does not satisfy), so float32 weights are used under autocast to
float16 / bfloat16 and a float32 computation keeps the masked path. Layers with ``straight_through`` (dense
gradients wanted) or ``inactive_mode="frozen"`` (inactive weights take part in the forward) keep it too.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from ..layers import SparseConv1D, SparseMixin

logger = logging.getLogger(__name__)

#: Dtypes a layer's weight may have (float32 only runs under autocast to a half type).
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Dtypes the sparse tensor cores compute in.
COMPUTE_DTYPES = (torch.float16, torch.bfloat16)


def unsupported_reason(layer: Optional[SparseMixin] = None) -> Optional[str]:
    """Why 2:4 semi-structured execution cannot be used (here, or for ``layer``), or ``None`` when it can."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if layer is None:
        return None
    device = layer.weight.device
    if _device_type(layer) != "cuda":
        return f"the weight is on {device}, not CUDA"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"GPU compute capability {major}.{minor} < 8.0 has no sparse tensor cores"
    structure = layer.structure
    if structure.kind not in ("nm", "nm_transposable") or (structure.n, structure.m) != (2, 4):
        return f"structure {structure.describe()} is not 2:4"
    if layer.weight.dtype not in SEMI_STRUCTURED_DTYPES:
        return f"dtype {layer.weight.dtype} is not supported by semi-structured sparse tensors"
    return None


def _device_type(layer: SparseMixin) -> str:
    return layer.weight.device.type


def _compress(dense: torch.Tensor):
    """The 2:4 compressed form of a contiguous 2-D tensor (module level, so tests can substitute it on a CPU)."""
    return torch.sparse.to_sparse_semi_structured(dense)


def _dense_for_compression(layer: SparseMixin, dtype: torch.dtype, transposed: bool) -> torch.Tensor:
    """The masked weight in ``nn.Linear`` layout ``[out, in]`` (``[in, out]`` when ``transposed``), contiguous."""
    weight = torch.where(layer.weight_mask, layer.weight.detach(), 0)
    if isinstance(layer, SparseConv1D) != transposed:  # Conv1D stores [in, out]
        weight = weight.t()
    return weight.to(dtype).contiguous()


def compressed_weight(layer: SparseMixin, dtype: Optional[torch.dtype] = None, transposed: bool = False):
    """The layer's 2:4 compressed masked weight, rebuilt when the weight or mask changed since last time.

    Args:
        layer: A 2:4 sparse layer.
        dtype: Compute dtype (default: the weight's).
        transposed: Compress ``W^T`` (``[in, out]``) instead of ``W`` (``[out, in]``); needs a transposable mask.

    Returns:
        A ``SparseSemiStructuredTensor`` usable as ``F.linear(x, compressed)``.
    """
    dtype = layer.weight.dtype if dtype is None else dtype
    key = (layer.weight.data_ptr(), layer.weight._version, layer.weight_mask._version, dtype)
    caches = layer.__dict__.setdefault("_hf_sparse_semi_structured", {})
    cached = caches.get(transposed)
    if cached is None or cached[0] != key:
        cached = (key, _compress(_dense_for_compression(layer, dtype, transposed)))
        caches[transposed] = cached
    return cached[1]


def prepare_layer(layer: SparseMixin, name: str = "") -> Optional[str]:
    """Checks and compresses a layer for `semi_structured_forward` (run by ``enable_``).

    Returns:
        Why the layer must keep the masked path, or ``None``. A transposable layer whose ``W^T`` cannot be
        compressed keeps the sparse forward and computes ``dX`` with the dense masked weight (logged).
    """
    reason = unsupported_reason(layer)
    if reason is not None:
        return reason
    layer._hf_sparse_name = name or type(layer).__name__
    # float32 weights compute in a half type under autocast; both share the shape constraints checked here.
    dtype = layer.weight.dtype if layer.weight.dtype in COMPUTE_DTYPES else torch.float16
    try:
        compressed_weight(layer, dtype)
    except (RuntimeError, ValueError, TypeError) as err:
        return f"conversion failed: {err}"
    layer._hf_sparse_sparse_dx = False
    if layer.structure.kind == "nm_transposable":
        try:
            compressed_weight(layer, dtype, transposed=True)
            layer._hf_sparse_sparse_dx = True
        except (RuntimeError, ValueError, TypeError) as err:
            logger.warning("%s: the transposed 2:4 weight cannot be compressed (%s); dX uses the dense masked "
                           "weight.", name or type(layer).__name__, err)
    return None


class SemiStructuredLinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` through the compressed 2:4 ``W``, with always-sparse gradients.

    ``x`` is 2-D ``[M, in]`` in the compute dtype; ``weight`` / ``mask`` are ``[out, in]`` views of the layer's
    parameter and mask (any strides: a Conv1D passes transposed views and autograd maps ``dW`` back);
    ``w_sparse`` is the compressed masked ``W`` and ``wt_sparse`` the compressed ``W^T`` or ``None``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mask, w_sparse, wt_sparse):
        with torch.autocast(x.device.type, enabled=False):  # operands are already in the compute dtype
            y = F.linear(x, w_sparse, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(x, weight, mask)
        ctx.wt_sparse = wt_sparse
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mask = ctx.saved_tensors
        dy = dy.to(x.dtype).contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if ctx.wt_sparse is not None:
                dx = F.linear(dy, ctx.wt_sparse)  # dY W = dY (W^T)^T on the sparse tensor cores
            else:
                dx = dy @ torch.where(mask, weight, 0).to(dy.dtype)
        if ctx.needs_input_grad[1]:
            dw = torch.where(mask, dy.t() @ x, 0).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            db = dy.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return dx, dw, db, None, None, None


def _compute_dtype(layer: SparseMixin, x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return layer.weight.dtype


_STRAIGHT_THROUGH = "straight_through=True wants dense gradients"


def _masked_path_reason(layer: SparseMixin, dtype: torch.dtype) -> Optional[str]:
    machine = unsupported_reason(layer)  # also catches a model moved off the GPU after enable_
    if machine is not None:
        return machine
    if layer.straight_through:
        return _STRAIGHT_THROUGH
    if layer.inactive_mode == "frozen":
        return "inactive_mode='frozen' uses the inactive weights in the forward"
    if dtype not in COMPUTE_DTYPES:
        return f"it computes in {dtype}; the sparse tensor cores need float16 / bfloat16 (use autocast)"
    return None


def semi_structured_forward(layer: SparseMixin, x: torch.Tensor) -> torch.Tensor:
    """The layer's forward through the compressed 2:4 weight (any leading shape, autocast-aware); the masked path,
    logged once per layer and reason, where the sparse tensor cores cannot be used."""
    dtype = _compute_dtype(layer, x)
    reason = _masked_path_reason(layer, dtype) if x.numel() else "the input is empty"
    if reason is not None:
        logged = layer.__dict__.setdefault("_hf_sparse_24_logged", set())
        if reason not in logged:
            # Straight-through phases (top-k rewiring, RigL's gradient capture) are planned, not a problem.
            level = logging.INFO if reason in (_STRAIGHT_THROUGH, "the input is empty") else logging.WARNING
            logger.log(level, "2:4 semi-structured kernels skipped for %s (%s); keeping the masked path.",
                       getattr(layer, "_hf_sparse_name", type(layer).__name__), reason)
            logged.add(reason)
        return type(layer).forward(layer, x)
    w_sparse = compressed_weight(layer, dtype)
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    bias = layer.bias
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or layer.weight.requires_grad or (bias is not None and bias.requires_grad))
    if not needs_grad:
        with torch.autocast(x.device.type, enabled=False):
            y = F.linear(flat, w_sparse, None if bias is None else bias.to(dtype))
    else:
        sparse_dx = layer.structure.kind == "nm_transposable" and getattr(layer, "_hf_sparse_sparse_dx", True)
        wt_sparse = compressed_weight(layer, dtype, transposed=True) if sparse_dx else None
        conv = isinstance(layer, SparseConv1D)
        weight = layer.weight.t() if conv else layer.weight
        mask = layer.weight_mask.t() if conv else layer.weight_mask
        y = SemiStructuredLinearFunction.apply(flat, weight, bias, mask, w_sparse, wt_sparse)
    return y.reshape(*x.shape[:-1], y.shape[-1])
