"""Switching sparse layers' forward to a kernel backend and back (`enable_` / `disable_`); off by default.

The switch is an instance-level ``forward`` on each layer (the class, its parameters, buffers and state dict are
untouched), so `disable_` simply removes it and `densify_`, checkpoints and optimizers keep working.
"""

from __future__ import annotations

import logging
import types
from typing import Dict, List, Optional

from torch import nn

from ..layers import SparseMixin
from ..patching import sparse_modules

logger = logging.getLogger(__name__)

BACKENDS = ("triton", "semi_structured")


def _triton_forward(self: SparseMixin, x):
    from .triton_blocksparse import block_sparse_forward

    if self.straight_through:  # dense gradients are wanted: the masked path gives them, the kernel cannot
        return type(self).forward(self, x)
    return block_sparse_forward(self, x)


def _semi_structured_forward(self: SparseMixin, x):
    from .semi_structured import semi_structured_forward

    return semi_structured_forward(self, x)


def _check_triton(layers: Dict[str, SparseMixin], allow_interpreter: bool) -> None:
    try:
        from . import triton_blocksparse as tb
    except ImportError as err:
        raise RuntimeError(f"backend='triton' needs Triton (pip install 'hf_sparse[triton]'): {err}") from err
    if tb.interpreter_active():
        if not allow_interpreter:
            raise RuntimeError("TRITON_INTERPRET=1 runs the kernels in Triton's slow CPU interpreter; pass "
                               "allow_interpreter=True if that is intended (tests only).")
    else:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("backend='triton' needs a CUDA GPU, and torch.cuda.is_available() is False.")
        on_cpu = [n for n, m in layers.items() if m.weight.device.type != "cuda"]
        if on_cpu:
            raise RuntimeError(f"backend='triton' needs the model on CUDA; {on_cpu[0]!r} is on "
                               f"{layers[on_cpu[0]].weight.device} (call model.cuda() first).")
    bad = {n: m.structure.describe() for n, m in layers.items()
           if m.structure.kind != "block" or m.structure.block_size not in tb.SUPPORTED_BLOCK_SIZES}
    if bad:
        name, desc = next(iter(bad.items()))
        raise ValueError(f"backend='triton' needs block structure with block size in {tb.SUPPORTED_BLOCK_SIZES}; "
                         f"{len(bad)} layers do not match, e.g. {name!r} ({desc}).")
    for name, layer in layers.items():  # builds (and validates) every layout before any layer is switched
        try:
            tb.layout_for(layer)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err


def enable_(
    model: nn.Module,
    backend: str = "triton",
    modules: Optional[List[str]] = None,
    allow_interpreter: bool = False,
) -> List[str]:
    """Routes the forward (and backward) of sparse layers through a kernel backend, in place.

    - ``"triton"``: block-sparse Triton kernels for training and inference (block sizes 16 / 32 / 64, CUDA);
      raises if Triton or CUDA is missing or a layer does not fit.
    - ``"semi_structured"``: 2:4 sparse tensor cores for inference (CUDA, compute capability >= 8.0); layers or
      machines that cannot use it keep the masked path, with the reason logged.

    Args:
        model: A sparsified model.
        backend: One of `BACKENDS`.
        modules: Names of the sparse layers to switch (default: all).
        allow_interpreter: Accept Triton's CPU interpreter (``TRITON_INTERPRET=1``), for tests.

    Returns:
        The names of the layers now using the backend.

    Example:
        >>> sparsify_(model, SparsityConfig(sparsity=0.9, structure="block", block_size=32))
        >>> enable_(model.cuda(), backend="triton")
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    found = sparse_modules(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no sparse layers.")
    names = list(found) if modules is None else list(modules)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"Not sparse modules of {type(model).__name__}: {missing}.")
    layers = {n: found[n] for n in names}
    if backend == "triton":
        _check_triton(layers, allow_interpreter)
        forward = _triton_forward
    else:
        from .semi_structured import compressed_weight, unsupported_reason

        reasons = {n: unsupported_reason(m) for n, m in layers.items()}
        for name, layer in layers.items():
            if reasons[name] is None:
                try:  # compress now, so a shape or dtype the sparse kernels reject falls back here, not mid-run
                    compressed_weight(layer)
                except (RuntimeError, ValueError, TypeError) as err:
                    reasons[name] = f"conversion failed: {err}"
        for name, reason in reasons.items():
            if reason is not None:
                logger.warning("2:4 semi-structured kernels not used for %s (%s); keeping the masked path.",
                               name, reason)
        layers = {n: m for n, m in layers.items() if reasons[n] is None}
        forward = _semi_structured_forward
    for layer in layers.values():
        layer.forward = types.MethodType(forward, layer)
        layer._hf_sparse_backend = backend
    logger.info("Kernel backend %s enabled for %d sparse layers.", backend, len(layers))
    return list(layers)


def disable_(model: nn.Module) -> List[str]:
    """Restores the masked PyTorch forward on every sparse layer of ``model``.

    Returns:
        The names of the layers that had a backend enabled.
    """
    switched = []
    for name, layer in sparse_modules(model).items():
        if getattr(layer, "_hf_sparse_backend", None) is not None:
            del layer.forward
            del layer._hf_sparse_backend
            switched.append(name)
    return switched


def active_backends(model: nn.Module) -> Dict[str, str]:
    """``{layer name: backend}`` for the sparse layers that currently use a kernel backend."""
    return {n: m._hf_sparse_backend for n, m in sparse_modules(model).items()
            if getattr(m, "_hf_sparse_backend", None) is not None}
