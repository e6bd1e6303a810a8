"""The shared base of all mask-update algorithms.

An algorithm decides *which* granules are active after an update of one layer; the controller applies the result
(copies the mask, zeroes weights and optimizer state, audits counts, keeps metrics). The base owns scoring,
exact-count top-k selection and the prune / re-allocate bookkeeping, so each algorithm overrides one small hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple

import torch

from ..config import DynamicSparsityConfig
from ..layers import SparseMixin
from ..structure import (
    MaskStructure,
    expand_granules,
    granule_scores,
    make_generator,
    reduce_to_granules,
    topk_granules,
)
from .schedules import UpdateSchedule

ALL_STRUCTURES = ("unstructured", "block", "nm", "nm_transposable")


@dataclass
class LayerUpdate:
    """The outcome of updating one layer.

    Attributes:
        mask: The new element mask (bool, weight layout).
        expected_removed: Granules the schedule says must be removed (``None`` when not prescribed).
        expected_added: Granules the schedule says must be added (``None`` when not prescribed).
        zero_new: Whether newly active weights (and their optimizer state) start from zero.
        target_density: The layer's new target density when the update changes it (GMP), else ``None``.
    """

    mask: torch.Tensor
    expected_removed: Optional[int] = None
    expected_added: Optional[int] = None
    zero_new: bool = True
    target_density: Optional[float] = None


class SparsityAlgorithm:
    """Base class: a static pattern (no updates). Subclasses set `name` and override the hooks they need.

    Args:
        config: The `DynamicSparsityConfig`.
        structure: The mask structure of the sparse layers.
        total_steps: Optimizer steps of the whole run.
        seed: Seed of the update randomness (already resolved against the `SparsityConfig`).
    """

    name: ClassVar[str] = ""
    #: Structures the algorithm supports; others fail at construction.
    structures: ClassVar[Tuple[str, ...]] = ALL_STRUCTURES
    #: Whether the update needs the dense gradient of the effective weight from the step before it.
    needs_dense_grad: ClassVar[bool] = False
    #: Whether the captured tensor is ``dL/dW' * W`` (gradient of the effective weight times the weight at backward
    #: time, the movement-pruning score increment) rather than the gradient itself.
    capture_grad_times_weight: ClassVar[bool] = False
    #: Whether the schedule forces an update at ``end_step`` (GMP reaches its final density there).
    include_end: ClassVar[bool] = False
    #: Whether the algorithm ever changes masks (``static`` does not: it needs no schedule and no total steps).
    updates_masks: ClassVar[bool] = True
    #: Literature defaults of `DynamicSparsityConfig` fields the user left ``None`` (``num_updates`` or
    #: ``update_interval``, ``prune_ratio``, ``end_fraction``), resolved when the config is built.
    defaults: ClassVar[Dict[str, Any]] = {"update_interval": 100, "prune_ratio": 0.0, "end_fraction": 1.0}

    # --- class-level hooks: the config and the set-up ask the algorithm, never test its name ---------------------
    @classmethod
    def check_config(cls, config: DynamicSparsityConfig) -> None:
        """Raises ``ValueError`` when ``config`` holds settings this algorithm cannot run (called on construction).

        Args:
            config: The (already defaulted and generically validated) config.
        """

    @classmethod
    def initial_sparsity_config(cls, sparsity_config, config: DynamicSparsityConfig):
        """The `SparsityConfig` a dense model is sparsified with before training (default: the target config).

        Args:
            sparsity_config: The run's target `SparsityConfig`.
            config: The dynamic config.

        Returns:
            A `SparsityConfig`.
        """
        return sparsity_config

    def extra_metrics(self, step: int) -> Dict[str, float]:
        """Algorithm-specific metrics logged after an update at ``step`` (e.g. the pruning ratio)."""
        return {}

    def __init__(self, config: DynamicSparsityConfig, structure: MaskStructure, total_steps: int, seed: int):
        if structure.kind not in self.structures:
            raise ValueError(
                f"algorithm={self.name!r} does not support structure={structure.kind!r} "
                f"({structure.describe()}); it supports {', '.join(self.structures)}."
            )
        self.config = config
        self.structure = structure
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.schedule = UpdateSchedule.from_config(config, self.total_steps, include_end=self.include_end)

    # --- hooks -----------------------------------------------------------------------------------------------
    def is_update_step(self, step: int) -> bool:
        """Whether the pattern changes right after optimizer step ``step``."""
        return False

    def setup_(self, modules: Dict[str, SparseMixin], final_densities: Dict[str, float]) -> None:
        """Called once by the controller with the sparse layers and their final target densities."""

    def update_layer(self, name: str, module: SparseMixin, step: int, grad: Optional[torch.Tensor]) -> LayerUpdate:
        """The new mask of one layer at update step ``step`` (``grad``: captured dense gradient, if requested)."""
        return LayerUpdate(module.weight_mask.clone(), 0, 0)

    def captures_dense_grad(self, step: int) -> bool:
        """Whether the controller records the dense gradient during optimizer step ``step``.

        The default asks for it only before an update of an algorithm that `needs_dense_grad` (RigL); a scoring
        algorithm (movement pruning) asks for it at every step it accumulates scores.
        """
        return self.needs_dense_grad and self.is_update_step(step)

    def observe_step_(self, modules: Dict[str, SparseMixin], step: int, grads: Dict[str, torch.Tensor]) -> None:
        """Per-step scoring hook, called after every optimizer step, before any update at ``step``.

        Args:
            modules: The sparse layers by name.
            step: Optimizer steps completed.
            grads: What was captured during that step (summed over micro-batches and processes), by layer; empty
                unless `captures_dense_grad` asked for it.
        """

    def straight_through(self, step: int) -> bool:
        """Whether inactive weights receive gradients during the steps after ``step``."""
        return False

    def ste_scale(self, step: int) -> float:
        """Scale of the gradient reaching inactive weights while `straight_through` is on."""
        return 1.0

    def inactive_values_live(self, step: int) -> bool:
        """Whether inactive weights legitimately hold non-zero values (top-k); otherwise they must stay zero."""
        return False

    @torch.no_grad()
    def after_optimizer_step_(self, modules: Dict[str, SparseMixin], step: int, zero_state) -> None:
        """Runs after every optimizer step (top-k exploitation). ``zero_state(module, where)`` zeroes moments."""

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serialisable algorithm state (the base has none: randomness is derived from seed and step)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores `state_dict`."""

    def tensor_state_dict(self) -> Dict[str, torch.Tensor]:
        """Tensor state (e.g. importance scores), saved bit-exactly next to the masks; the base has none."""
        return {}

    def load_tensor_state_dict(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Restores `tensor_state_dict` (called after `load_state_dict`)."""

    # --- shared helpers --------------------------------------------------------------------------------------
    def generator(self, step: int, name: str, device: torch.device) -> torch.Generator:
        """The update generator of one layer at one step: identical on every process and after a resume."""
        return make_generator(self.seed, "update", step, name, device=device)

    @staticmethod
    def active_granules(module: SparseMixin) -> torch.Tensor:
        """The layer's active granules (bool, granule shape)."""
        return reduce_to_granules(module.weight_mask, module.structure)

    @staticmethod
    def magnitude_scores(module: SparseMixin) -> torch.Tensor:
        """``|w|`` per weight, or the block norm per block (Dietrich et al. 2021, arXiv:2108.06277, Eq. 1)."""
        return granule_scores(module.weight.detach(), module.structure)

    @staticmethod
    def keep_largest(module: SparseMixin, active: torch.Tensor, count: int) -> torch.Tensor:
        """The ``count`` active granules of largest magnitude / block norm (exact count)."""
        return topk_granules(SparsityAlgorithm.magnitude_scores(module), count, allowed=active)

    @staticmethod
    def to_elements(granules: torch.Tensor, module: SparseMixin) -> torch.Tensor:
        return expand_granules(granules, module.structure)


class StaticAlgorithm(SparsityAlgorithm):
    """``static``: the initial pattern never changes (every structure)."""

    name = "static"
    updates_masks = False
    defaults = {"prune_ratio": 0.0, "end_fraction": 1.0}
