"""Prune-and-re-allocate algorithms: DynSparse, SET and RigL.

At each scheduled update every layer drops ``k = round(pr(t) * active)`` active granules of smallest magnitude
(block norm for blocks) and activates exactly ``k`` re-allocation candidates, so the count never drifts. They differ
in the re-allocation score: random (DynSparse, SET) or dense-gradient magnitude (RigL), and in the candidates
(`DynamicSparsityConfig.regrow_pruned`): the granules inactive before the update (DynSparse, SET), or every granule
outside the kept set, so a granule dropped at this update may be grown straight back (RigL). Newly active weights
and their optimizer state start at zero (the controller does it); a granule dropped and regrown at once never
leaves the mask and keeps its value and optimizer state.
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
        grow = self.grow_scores(name, module, step, grad, active.shape)
        # Without regrowth the candidates are the granules inactive *before* the update: exactly k leave and k new
        # ones arrive. With it they are all granules outside the kept set; a dropped granule that wins its place
        # back stays active (it neither leaves nor arrives), so both counts shrink by the number that came back.
        grown = topk_granules(grow, k, allowed=~keep if self.config.regrow_pruned else ~active)
        back = int(torch.count_nonzero(grown & active))
        return LayerUpdate(self.to_elements(keep | grown, module), expected_removed=k - back, expected_added=k - back)


class SETAlgorithm(DynSparseAlgorithm):
    """``set`` (Mocanu et al., 2018): the same prune / random-regrow step with SET's defaults."""

    name = "set"
    #: Drop fraction 0.3 every 100 steps, cosine decay ending at 75% of training (Sparse-IFT, Saxena et al. 2023,
    #: arXiv:2303.11525, App. B.2, which follows RigL).
    defaults = {"update_interval": 100, "prune_ratio": 0.3, "end_fraction": 0.75}


class RigLAlgorithm(DynSparseAlgorithm):
    """``rigl`` (Evci et al. 2020, arXiv:1911.11134): re-allocate where the dense gradient of the effective weight is largest.

    The gradient is pooled over blocks with the structure's norm; the controller captures it (summed over
    gradient-accumulation micro-batches and processes) only for the optimizer step right before an update.

    Regrowth of just-dropped weights (``regrow_pruned``) is on by default, as in the paper: its Algorithm 1 draws the
    drop set and the grow set from the same step's weights and gradients and grows among all connections outside
    ``theta \\ I_drop``, so a connection dropped at an update can be grown again at once; the official
    implementation (google-research/rigl, ``rigl/sparse_optimizers_base.py``, ``_get_update_op``) does the same and,
    with its default ``reinit_when_same=False``, leaves such a connection's value and optimizer state untouched, as
    here. ``DynamicSparsityConfig(algorithm="rigl", regrow_pruned=False)`` restricts the candidates to the weights
    inactive before the update (this package's behaviour before the option existed).
    """

    name = "rigl"
    needs_dense_grad = True
    #: Delta T = 100, alpha = 0.3, cosine decay for 75% of training (Sparse-IFT, Saxena et al. 2023, arXiv:2303.11525,
    #: App. B.2, "RigL in its default hyperparameter settings"); regrowth of dropped weights as in Evci et al. 2020.
    defaults = {"update_interval": 100, "prune_ratio": 0.3, "end_fraction": 0.75, "regrow_pruned": True}

    def grow_scores(self, name, module, step, grad, shape) -> torch.Tensor:
        if grad is None:
            raise RuntimeError(
                f"rigl needs the dense gradient of {name!r} at update step {step}, but none was captured; call "
                "controller.step() after every optimizer step so the capture is armed before update steps."
            )
        return granule_scores(grad, module.structure)
