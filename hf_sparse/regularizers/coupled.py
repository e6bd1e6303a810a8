"""Coupled regularizers: loss penalties whose gradient goes through the optimizer (Singh et al. 2024, Eq. 5)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import Regularizer, effective_weight, register_regularizer


@register_regularizer
class L1(Regularizer):
    """L1 penalty ``lambda * sum |W_eff|`` over the target layers' effective weights.

    Its gradient ``lambda * sign(W)`` is added to the task gradient and therefore passes through Adam's
    moments: the *coupled* L1 of Singh et al. 2024 (Eq. 5, Table 1 "PreReg"). Masked weights of sparse layers
    contribute nothing (their effective value is exactly zero).

    Example:
        >>> reg = L1(strength=1e-5)
        >>> loss = model(**batch).loss + reg.penalty(model)
    """

    name = "l1"
    coupled = True

    def penalty(self, model: nn.Module, step: Optional[int] = None) -> torch.Tensor:
        strength = self.strength_at(step)
        targets = self.targets(model)
        if strength == 0.0:
            return next(iter(targets.values())).weight.new_zeros((), dtype=torch.float32)
        total = torch.stack([effective_weight(m).float().abs().sum() for m in targets.values()]).sum()
        return strength * total
