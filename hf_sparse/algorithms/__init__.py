"""Mask-update algorithms, registered by name, and their schedules.

One small class per algorithm over a shared base (`SparsityAlgorithm`); each owns its defaults and checks. A user
algorithm is one subclass and `register_algorithm`.

Example:
    >>> algo = build_algorithm(DynamicSparsityConfig(algorithm="rigl"), MaskStructure(), total_steps=1000, seed=0)
    >>> algo.schedule.steps[:3]
    (100, 200, 300)
"""

from __future__ import annotations

from typing import Type

from ..config import DynamicSparsityConfig
from ..config.registry import ALGORITHM_REGISTRY
from ..structure import MaskStructure
from .base import LayerUpdate, SparsityAlgorithm, StaticAlgorithm
from .gmp import GMPAlgorithm
from .movement import MovementAlgorithm, SoftMovementAlgorithm, movement_granule_scores
from .prune_regrow import DynSparseAlgorithm, RigLAlgorithm, SETAlgorithm
from .schedules import UpdateSchedule, cubic_density, prune_ratio_at
from .topk import TopKAlgorithm


def register_algorithm(cls: Type[SparsityAlgorithm]) -> Type[SparsityAlgorithm]:
    """Registers a `SparsityAlgorithm` subclass under ``cls.name`` (use as a class decorator).

    Once registered, the name is accepted everywhere a built-in is: `DynamicSparsityConfig(algorithm=...)`,
    `SparsityController`, `SparseTrainer` and the recipes' ``--dynamic.algorithm``.

    Args:
        cls: The class; it sets ``name`` and overrides the hooks it needs (``grow_scores`` for a new
            re-allocation rule on top of `DynSparseAlgorithm`, ``update_layer`` for a new update, ``defaults``
            and ``check_config`` for its settings).

    Returns:
        ``cls``.

    Example:
        >>> @hf_sparse.register_algorithm
        ... class MagnitudeRegrowth(hf_sparse.algorithms.DynSparseAlgorithm):
        ...     name = "magnitude_regrowth"
        ...     def grow_scores(self, name, module, step, grad, shape):
        ...         return torch.rand(shape)
    """
    if not (isinstance(cls, type) and issubclass(cls, SparsityAlgorithm)):
        raise TypeError(f"register_algorithm takes a SparsityAlgorithm subclass, got {cls!r}.")
    return ALGORITHM_REGISTRY.register(cls)


for _cls in (
    StaticAlgorithm, DynSparseAlgorithm, SETAlgorithm, RigLAlgorithm, GMPAlgorithm, TopKAlgorithm,
    MovementAlgorithm, SoftMovementAlgorithm,
):
    register_algorithm(_cls)


def build_algorithm(
    config: DynamicSparsityConfig, structure: MaskStructure, total_steps: int, seed: int
) -> SparsityAlgorithm:
    """Instantiates the algorithm ``config.algorithm`` names (fails early on an unsupported structure).

    Args:
        config: The dynamic sparsity config.
        structure: Mask structure of the sparse layers.
        total_steps: Optimizer steps of the whole run.
        seed: Seed of the update randomness.

    Returns:
        A `SparsityAlgorithm`.
    """
    return ALGORITHM_REGISTRY.get(config.algorithm)(config, structure, total_steps, seed)


__all__ = [
    "ALGORITHM_REGISTRY",
    "DynSparseAlgorithm",
    "GMPAlgorithm",
    "LayerUpdate",
    "MovementAlgorithm",
    "RigLAlgorithm",
    "SETAlgorithm",
    "SoftMovementAlgorithm",
    "SparsityAlgorithm",
    "StaticAlgorithm",
    "TopKAlgorithm",
    "UpdateSchedule",
    "build_algorithm",
    "cubic_density",
    "movement_granule_scores",
    "prune_ratio_at",
    "register_algorithm",
]
