"""``topk``: top-d magnitude rewiring with straight-through gradients (the NVIDIA sparse-training study, anonymous ICLR 2022 submission, Algorithm 1).

Every ``update_interval`` (``r``) steps the ``d`` largest weights (largest blocks, or the best N:M / transposable
N:M pattern) of each layer participate in the forward pass. Non-participating weights keep receiving gradient
updates through the straight-through estimator (scaled by ``topk_ste_scale``), so they can come back; their
values are kept, not zeroed, when they re-enter. Exploitation (Algorithm 1, lines 9-11):

- ``FIX``: from ``topk_fix_fraction * T`` on, rewiring stops and non-participating weights are zero for good.
- ``RESET``: every ``topk_reset_interval`` steps non-participating weights are set to zero.
- ``REGULARIZE``: every step non-participating weights decay, ``n <- n - beta * n`` (SR-STE).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..layers import SparseMixin
from ..structure import select_mask
from .base import LayerUpdate, SparsityAlgorithm


class TopKAlgorithm(SparsityAlgorithm):
    """Top-d magnitude rewiring with FIX / RESET / REGULARIZE exploitation (or ``NONE``); every structure."""

    name = "topk"
    # Algorithm 1 of the NVIDIA paper selects the top-d weights at every iteration.
    defaults = {"update_interval": 1, "prune_ratio": 0.0, "end_fraction": 1.0}

    @classmethod
    def check_config(cls, config) -> None:
        if config.inactive != "zero":
            raise ValueError(
                f"inactive={config.inactive!r} cannot be used with algorithm='topk': its non-participating weights "
                "keep training through the straight-through estimator; use inactive='zero'."
            )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fix_step = int(round(self.config.topk_fix_fraction * self.total_steps))
        self.fixed = False

    def _rewiring(self, step: int) -> bool:
        return not (self.config.topk_exploitation == "FIX" and step >= self.fix_step)

    def is_update_step(self, step: int) -> bool:
        return self._rewiring(step) and self.schedule.is_update(step)

    def update_layer(self, name: str, module: SparseMixin, step: int, grad: Optional[torch.Tensor]) -> LayerUpdate:
        mask = select_mask(module.weight.detach(), module.structure, module.target_density, module.input_dim)
        # Returning weights keep the values they learned while non-participating (that is the point of top-k).
        return LayerUpdate(mask, zero_new=False)

    def straight_through(self, step: int) -> bool:
        return self._rewiring(step)

    def ste_scale(self, step: int) -> float:
        return float(self.config.topk_ste_scale)

    def inactive_values_live(self, step: int) -> bool:
        return self._rewiring(step)

    @torch.no_grad()
    def after_optimizer_step_(self, modules: Dict[str, SparseMixin], step: int, zero_state) -> None:
        mode = self.config.topk_exploitation
        if mode == "FIX":
            if not self._rewiring(step) and not self.fixed:
                for module in modules.values():
                    module.weight.masked_fill_(~module.weight_mask, 0)
                    zero_state(module, ~module.weight_mask)
                self.fixed = True
        elif mode == "RESET":
            if step % self.config.topk_reset_interval == 0:
                for module in modules.values():
                    module.weight.masked_fill_(~module.weight_mask, 0)
        elif mode == "REGULARIZE":
            beta = float(self.config.topk_regularize_beta)
            for module in modules.values():
                w = module.weight
                w.sub_(torch.where(module.weight_mask, torch.zeros_like(w), w) * beta)

    def state_dict(self) -> Dict[str, Any]:
        return {"fixed": self.fixed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.fixed = bool(state.get("fixed", False))
