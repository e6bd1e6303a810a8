"""``gmp``: gradual magnitude pruning (Zhu & Gupta, 2017), a standard baseline.

The density of every layer falls from its initial value (dense by default) to its final target along the cubic
schedule, with an update every ``update_interval`` steps between ``start_fraction`` and ``end_fraction`` of
training (the last update lands exactly on ``end_fraction``). Each update keeps the largest-magnitude active
granules; nothing is re-allocated. N:M structures fix the density, so they cannot be reached gradually.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch

from ..layers import SparseMixin
from ..structure import num_active
from .base import LayerUpdate, SparsityAlgorithm
from .schedules import cubic_density


class GMPAlgorithm(SparsityAlgorithm):
    """Gradual magnitude pruning with the cubic schedule; prunes only, never grows."""

    name = "gmp"
    structures = ("unstructured", "block")
    include_end = True
    #: Zhu & Gupta's cubic schedule, here ending at 75% of training with an update every 100 steps.
    defaults = {"update_interval": 100, "prune_ratio": 0.0, "end_fraction": 0.75}

    @classmethod
    def initial_sparsity_config(cls, sparsity_config, config):
        # GMP starts denser than its target (dense by default) and prunes down along the cubic schedule. Every layer
        # starts at the initial density, pinned ones too (the pattern sets where they end, via the final densities).
        return dataclasses.replace(sparsity_config, sparsity=1.0 - config.gmp_initial_density, sparsity_pattern=None)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial_densities: Dict[str, float] = {}
        self.final_densities: Dict[str, float] = {}

    def setup_(self, modules: Dict[str, SparseMixin], final_densities: Dict[str, float]) -> None:
        for name, module in modules.items():
            final = float(final_densities[name])
            initial = self.initial_densities.get(name, module.density)
            if initial + 1e-9 < final:
                raise ValueError(
                    f"gmp: layer {name!r} starts at density {initial:.4f}, below its final density {final:.4f}; "
                    "gmp only prunes (set gmp_initial_density >= the target density)."
                )
            self.initial_densities[name] = float(initial)
            self.final_densities[name] = final

    def density_at(self, name: str, step: int) -> float:
        """The scheduled density of layer ``name`` after the update at ``step``."""
        return cubic_density(
            step, self.initial_densities[name], self.final_densities[name],
            self.schedule.start_step, min(self.schedule.end_step, self.total_steps - 1),
        )

    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update(step)

    def update_layer(self, name: str, module: SparseMixin, step: int, grad: Optional[torch.Tensor]) -> LayerUpdate:
        density = self.density_at(name, step)
        active = self.active_granules(module)
        n_active = int(torch.count_nonzero(active))
        n_keep = min(num_active(module.structure, module.weight.shape, density), n_active)
        keep = self.keep_largest(module, active, n_keep)
        return LayerUpdate(
            self.to_elements(keep, module), expected_removed=n_active - n_keep, expected_added=0,
            target_density=density,
        )

    def state_dict(self) -> Dict[str, Any]:
        return {"initial_densities": dict(self.initial_densities), "final_densities": dict(self.final_densities)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.initial_densities = {k: float(v) for k, v in state.get("initial_densities", {}).items()}
        self.final_densities.update({k: float(v) for k, v in state.get("final_densities", {}).items()})
