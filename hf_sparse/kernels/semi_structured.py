"""2:4 semi-structured inference on NVIDIA GPUs (compute capability >= 8.0) through PyTorch's
``torch.sparse.to_sparse_semi_structured``, with a logged fall back to the masked path everywhere else.

A 2:4 `SparseLinear` / `SparseConv1D` keeps its masked weight compressed (values + metadata) for the sparse tensor
cores; the compressed copy is rebuilt when the weight or the mask changes (their in-place version counters).
Only inference uses it: in training mode, or when gradients are needed, the layer runs its usual masked forward
(PyTorch's semi-structured training support needs a weight re-compression every step and is not used here).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from ..layers import SparseConv1D, SparseMixin

logger = logging.getLogger(__name__)

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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


def _linear_weight(layer: SparseMixin) -> torch.Tensor:
    weight = layer.masked_weight().detach()
    return (weight.t() if isinstance(layer, SparseConv1D) else weight).contiguous()


def compressed_weight(layer: SparseMixin):
    """The layer's 2:4 compressed ``[out, in]`` weight, rebuilt when the weight or mask changed since last time."""
    key = (layer.weight.data_ptr(), layer.weight._version, layer.weight_mask._version)
    cached = getattr(layer, "_hf_sparse_semi_structured", None)
    if cached is None or cached[0] != key:
        cached = (key, torch.sparse.to_sparse_semi_structured(_linear_weight(layer)))
        layer._hf_sparse_semi_structured = cached
    return cached[1]


def semi_structured_forward(layer: SparseMixin, x: torch.Tensor) -> torch.Tensor:
    """Inference forward through the compressed 2:4 weight; the masked path when training or gradients flow."""
    if layer.training or (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)):
        return type(layer).forward(layer, x)
    weight = compressed_weight(layer)
    flat = x.reshape(-1, x.shape[-1]).to(weight.dtype)
    y = F.linear(flat, weight, None if layer.bias is None else layer.bias.to(weight.dtype))
    return y.reshape(*x.shape[:-1], y.shape[-1])
