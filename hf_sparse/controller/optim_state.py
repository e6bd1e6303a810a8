"""Optimizer-state surgery for the controller: zero the moments of pruned / re-allocated weights, check that the
optimizer holds the sparse weights, scale the learning rate by the sparse LR rule.

Always-sparse training keeps inactive weights' optimizer state at zero (Dietrich et al. 2021, arXiv:2108.06277,
zero the Adam moments of re-allocated weights), so a weight that comes back starts fresh.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch

from ..layers import SparseMixin
from ..lr_rule import sparse_lr

logger = logging.getLogger(__name__)


def unwrap_optimizer(optimizer) -> Optional[torch.optim.Optimizer]:
    """The innermost optimizer (accelerate's ``AcceleratedOptimizer`` keeps it in ``.optimizer``).

    Args:
        optimizer: An optimizer, a wrapper of one, or ``None``.

    Returns:
        The innermost ``torch.optim.Optimizer`` (or ``None``).
    """
    seen = set()
    while optimizer is not None and hasattr(optimizer, "optimizer") and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def zero_state_(optimizer: Optional[torch.optim.Optimizer], weight: torch.Tensor, where: torch.Tensor) -> None:
    """Zeroes every per-parameter state tensor of ``weight`` (Adam moments, momentum...) at ``where``.

    Args:
        optimizer: The inner optimizer (``None``: nothing to do).
        weight: The parameter.
        where: Boolean tensor shaped like ``weight``.
    """
    state = optimizer.state.get(weight) if optimizer is not None else None
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == weight.shape:
            value.masked_fill_(where.to(value.device), 0)


def check_optimizer_holds(optimizer: Optional[torch.optim.Optimizer], modules: Dict[str, SparseMixin]) -> None:
    """Raises ``ValueError`` when ``optimizer`` does not hold the weight of every sparse layer.

    Args:
        optimizer: The inner optimizer (``None``: nothing to check).
        modules: The sparse layers by name.
    """
    if optimizer is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, m in modules.items() if id(m.weight) not in held]
    if missing:
        raise ValueError(
            f"The optimizer does not hold the weights of sparse layers {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}; build it from model.parameters() of the sparse model."
        )


def scale_lr_(optimizer: Optional[torch.optim.Optimizer], sparsity: float) -> float:
    """Multiplies every param group's learning rate by the sparse LR rule's factor (`hf_sparse.sparse_lr`).

    Args:
        optimizer: The inner optimizer.
        sparsity: The model's sparsity.

    Returns:
        The factor applied.
    """
    if optimizer is None:
        raise ValueError("apply_sparse_lr=True needs the optimizer to scale its learning rate.")
    factor = sparse_lr(1.0, float(sparsity))
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    logger.info("Scaled the learning rate by %.4f (sparse LR rule, sparsity %.3f); build LR schedulers after "
                "the controller so they see it.", factor, sparsity)
    return factor
