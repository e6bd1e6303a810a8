"""Gradient hooks of the controller: the dense-gradient capture RigL needs and the straight-through scaling
of top-k.

Gradients are always-sparse except where the algorithm asks. RigL gets the dense gradient of the effective weight
only during the optimizer step right before an update (summed over gradient-accumulation micro-batches and, under
DDP, over processes); top-k gets straight-through gradients, optionally scaled, while it rewires.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist

from ..layers import SparseMixin


class GradientHooks:
    """Owns the straight-through flags and gradient hooks of the sparse layers for the next optimizer step.

    Args:
        modules: The sparse layers by name.
    """

    def __init__(self, modules: Dict[str, SparseMixin]):
        self.modules = modules
        self._hooks: list = []
        self._captured: Dict[str, torch.Tensor] = {}
        self.capturing = False

    def configure(self, straight_through: bool, scale: float, capture: bool, times_weight: bool = False) -> None:
        """Sets up the next optimizer step.

        Args:
            straight_through: Inactive weights get gradients (the algorithm asks for it).
            scale: Scale of the gradient reaching inactive weights while ``straight_through``.
            capture: Record the dense gradient of every layer (the next step precedes an update that needs it);
                without ``straight_through`` the optimizer still sees an always-sparse gradient.
            times_weight: Record ``grad * weight`` (the weight at backward time) instead: the movement-pruning
                score increment (Sanh et al. 2020, arXiv:2005.07683).
        """
        self.remove()
        self.capturing = capture
        self._captured = {}
        for name, module in self.modules.items():
            module.straight_through = straight_through or capture
            if capture:
                self._captured[name] = torch.zeros_like(module.weight, dtype=torch.float32)
            if capture or (straight_through and scale != 1.0):
                self._hooks.append(
                    module.weight.register_hook(self._make_hook(name, module, straight_through, scale, times_weight))
                )

    def _make_hook(self, name: str, module: SparseMixin, straight_through: bool, scale: float, times_weight: bool):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if self.capturing and name in self._captured:
                g = grad.detach().float()
                # The hook fires during backward, before the optimizer moves the weight: this is W_t of the step.
                self._captured[name].add_(g * module.weight.detach().float() if times_weight else g)
            if not straight_through:  # capture only: the optimizer still sees an always-sparse gradient
                return torch.where(module.weight_mask, grad, torch.zeros_like(grad))
            if scale != 1.0:
                return torch.where(module.weight_mask, grad, grad * scale)
            return grad

        return hook

    def take_captured(self) -> Dict[str, torch.Tensor]:
        """The captured dense gradients (summed over processes under DDP), and stops capturing."""
        grads = self._captured if self.capturing else {}
        if grads and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for g in grads.values():  # each process saw only its shard of the batch
                dist.all_reduce(g)
        self._captured, self.capturing = {}, False
        return grads

    def remove(self) -> None:
        """Removes every hook (flags stay as they are)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def close(self) -> None:
        """Removes hooks and straight-through flags (end of training)."""
        self.remove()
        self._captured, self.capturing = {}, False
        for module in self.modules.values():
            module.straight_through = False
