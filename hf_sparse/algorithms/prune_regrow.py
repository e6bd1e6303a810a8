"""Prune-and-re-allocate algorithms: DynSparse, SET and RigL.

At each scheduled update every layer drops ``k = round(pr(t) * active)`` active granules of smallest magnitude
(block norm for blocks) and activates exactly ``k`` granules that were inactive before the update, so the count
never drifts. They differ only in the re-allocation score: random (DynSparse, SET) or dense-gradient magnitude
(RigL). Re-allocated weights and their optimizer state start at zero (the controller does it).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..layers import SparseMixin
from ..structure import granule_scores, topk_granules
from .base import LayerUpdate, SparsityAlgorithm


class DynSparseAlgorithm(SparsityAlgorithm):
    """``dynsparse`` (Dietrich et al. 2021, arXiv:2108.06277, Algorithm 1): magnitude / block-norm pruning, random re-allocation."""

    name = "dynsparse"
    structures = ("unstructured", "block")
    #: Dietrich et al. 2021 (arXiv:2108.06277), App. A.1: n=160 updates, pruning ratio 0.5, cosine decay over
    #: the whole run.
    defaults = {"num_updates": 160, "prune_ratio": 0.5, "end_fraction": 1.0}

    @classmethod
    def check_config(cls, config) -> None:
        if config.prune_ratio == 0.0:
            raise ValueError(
                f"prune_ratio={config.prune_ratio!r} makes algorithm={config.algorithm!r} static; "
                "use algorithm='static' or a positive prune_ratio."
            )

    def extra_metrics(self, step: int):
        return {"sparsity/prune_ratio": self.schedule.ratio(step)}

    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update(step)

    def prune_count(self, active_count: int, inactive_count: int, step: int) -> int:
        """Granules to prune and re-allocate: ``round(pr(t) * active)``, at most the inactive count."""
        k = int(round(self.schedule.ratio(step) * active_count))
        return max(0, min(k, inactive_count))

    def grow_scores(
        self, name: str, module: SparseMixin, step: int, grad: Optional[torch.Tensor], shape
    ) -> torch.Tensor:
        """Scores of the re-allocation candidates (granule shape); the largest win. Random here."""
        device = module.weight.device
        return torch.rand(shape, generator=self.generator(step, name, device), device=device)

    def update_layer(self, name: str, module: SparseMixin, step: int, grad: Optional[torch.Tensor]) -> LayerUpdate:
        active = self.active_granules(module)
        n_active = int(torch.count_nonzero(active))
        k = self.prune_count(n_active, active.numel() - n_active, step)
        keep = self.keep_largest(module, active, n_active - k)
        # Candidates are the granules inactive *before* the update, so exactly k leave and k new ones arrive.
        grow = self.grow_scores(name, module, step, grad, active.shape)
        new = keep | topk_granules(grow, k, allowed=~active)
        return LayerUpdate(self.to_elements(new, module), expected_removed=k, expected_added=k)


class SETAlgorithm(DynSparseAlgorithm):
    """``set`` (Mocanu et al., 2018): the same prune / random-regrow step with SET's defaults."""

    name = "set"
    #: Drop fraction 0.3 every 100 steps, cosine decay ending at 75% of training (Sparse-IFT, Saxena et al. 2023,
    #: arXiv:2303.11525, App. B.2, which follows RigL).
    defaults = {"update_interval": 100, "prune_ratio": 0.3, "end_fraction": 0.75}


class RigLAlgorithm(DynSparseAlgorithm):
    """``rigl`` (Evci et al., 2020): re-allocate where the dense gradient of the effective weight is largest.

    The gradient is pooled over blocks with the structure's norm; the controller captures it (summed over
    gradient-accumulation micro-batches and processes) only for the optimizer step right before an update.
    """

    name = "rigl"
    needs_dense_grad = True
    #: As SET (Sparse-IFT App. B.2, following Evci et al. 2020).
    defaults = {"update_interval": 100, "prune_ratio": 0.3, "end_fraction": 0.75}

    def grow_scores(self, name, module, step, grad, shape) -> torch.Tensor:
        if grad is None:
            raise RuntimeError(
                f"rigl needs the dense gradient of {name!r} at update step {step}, but none was captured; call "
                "controller.step() after every optimizer step so the capture is armed before update steps."
            )
        return granule_scores(grad, module.structure)
