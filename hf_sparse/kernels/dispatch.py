"""Switching sparse layers' forward to a kernel backend and back (`enable_` / `disable_`); off by default.

The switch is an instance-level ``forward`` on each layer (the class, its parameters, buffers and state dict are
untouched), so `disable_` simply removes it and `densify_`, checkpoints and optimizers keep working. The backend
is named by hand (``enable_(model, "triton")``) or by ``SparsityConfig.kernel_backend`` (``enable_(model)``;
`enable_from_config_` is what `SparsityCallback` runs at train start).
"""

from __future__ import annotations

import logging
import types
from typing import Dict, List, Optional

from torch import nn

from ..config.sparsity import KERNEL_BACKENDS, SparsityConfig
from ..layers import SparseMixin
from ..patching import get_sparsity_config, sparse_modules

logger = logging.getLogger(__name__)

BACKENDS = KERNEL_BACKENDS


def _triton_forward(self: SparseMixin, x):
    from .triton_blocksparse import block_sparse_forward

    if self.straight_through:  # dense gradients are wanted: the masked path gives them, the kernel cannot
        return type(self).forward(self, x)
    if self.inactive_mode == "frozen":
        # Frozen inactive weights take part in the forward with their stored values; the kernel reads active
        # blocks only, so it would compute another function.
        if not getattr(self, "_hf_sparse_frozen_logged", False):
            logger.warning("Triton kernels skip a layer with inactive_mode='frozen' (its inactive weights take "
                           "part in the forward); keeping the masked path for it.")
            self._hf_sparse_frozen_logged = True
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


def _resolve_backend(model: nn.Module, backend: Optional[str]) -> str:
    if backend is not None:
        return backend
    cfg = get_sparsity_config(model)
    if cfg is None or getattr(cfg, "kernel_backend", None) is None:
        has = "has no SparsityConfig" if cfg is None else "has a SparsityConfig with kernel_backend=None"
        raise ValueError(f"enable_({type(model).__name__}) got backend=None and the model {has}; pass "
                         f"backend= one of {', '.join(map(repr, BACKENDS))} or sparsify with "
                         "SparsityConfig(kernel_backend=...).")
    return cfg.kernel_backend


def enable_(
    model: nn.Module,
    backend: Optional[str] = None,
    modules: Optional[List[str]] = None,
    allow_interpreter: bool = False,
) -> List[str]:
    """Routes the forward (and backward) of sparse layers through a kernel backend, in place.

    - ``"triton"``: block-sparse Triton kernels for training and inference (block sizes 16 / 32 / 64, CUDA);
      raises if Triton or CUDA is missing or a layer does not fit.
    - ``"semi_structured"``: 2:4 sparse tensor cores (CUDA, compute capability >= 8.0) for inference and
      training in float16 / bfloat16 (or float32 weights under autocast); layers or machines that cannot use
      them keep the masked path, with the reason logged.

    Args:
        model: A sparsified model.
        backend: One of `BACKENDS`, or ``None`` for the ``kernel_backend`` of the model's `SparsityConfig`
            (`get_sparsity_config`); an error when that is ``None`` too.
        modules: Names of the sparse layers to switch (default: all).
        allow_interpreter: Accept Triton's CPU interpreter (``TRITON_INTERPRET=1``), for tests.

    Returns:
        The names of the layers now using the backend.

    Example:
        >>> sparsify_(model, SparsityConfig(sparsity=0.9, structure="block", block_size=32))
        >>> enable_(model.cuda(), backend="triton")
        >>> sparsify_(other, SparsityConfig(structure="nm", sparsity=None, kernel_backend="semi_structured"))
        >>> enable_(other.cuda().half())  # the backend named in the config
    """
    backend = _resolve_backend(model, backend)
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
        from .semi_structured import prepare_layer

        # Compresses now, so a shape or dtype the sparse kernels reject falls back here, not mid-run.
        reasons = {n: prepare_layer(m, n) for n, m in layers.items()}
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


def _interpreter_requested() -> bool:
    try:
        from .triton_blocksparse import interpreter_active
    except ImportError:  # enable_ then raises its own "needs Triton" error
        return False
    return interpreter_active()


def enable_from_config_(
    model: nn.Module, config: Optional[SparsityConfig] = None, strict: bool = True
) -> List[str]:
    """Enables ``config.kernel_backend`` (default: the model's `SparsityConfig`) on ``model``; what
    `SparsityCallback` runs at train start, once the Trainer has put the model on its device.

    Nothing happens when the backend is ``None``, or when layers already use a backend (an explicit `enable_`
    wins). ``TRITON_INTERPRET=1`` in the environment is taken as the user's explicit choice of Triton's CPU
    interpreter (that is how tests run the kernels on a CPU): it is accepted, with a warning, because it is
    orders of magnitude slower than the GPU.

    Args:
        model: A sparse model (unwrapped from DDP).
        config: The run's `SparsityConfig`; ``None`` for the one the model carries.
        strict: Raise when the machine or model cannot run the backend (the user asked for it in this run);
            with ``False`` (a backend inherited from a checkpoint) log a warning and keep the masked path.

    Returns:
        The names of the layers using a backend.

    Example:
        >>> enable_from_config_(model.cuda(), SparsityConfig(structure="block", block_size=32, kernel_backend="triton"))
    """
    config = config if config is not None else get_sparsity_config(model)
    backend = getattr(config, "kernel_backend", None)
    if backend is None:
        return []
    active = active_backends(model)
    if active:
        logger.info("Sparse layers already use kernel backends %s; kernel_backend=%r left unapplied.",
                    sorted(set(active.values())), backend)
        return list(active)
    interpret = backend == "triton" and _interpreter_requested()
    if interpret:
        logger.warning("kernel_backend='triton' runs in Triton's CPU interpreter because TRITON_INTERPRET=1 is set: "
                       "correct but orders of magnitude slower than on a GPU (meant for tests). Unset "
                       "TRITON_INTERPRET for real training.")
    try:
        return enable_(model, backend, allow_interpreter=interpret)
    except (RuntimeError, ValueError) as err:
        message = (f"SparsityConfig.kernel_backend={backend!r} cannot be used here: {err} Set kernel_backend=None "
                   "to train on the masked PyTorch path.")
        if strict:
            raise type(err)(message) from err
        logger.warning("%s Keeping the masked PyTorch path (the backend came from the model's own config).",
                       message)
        return []
