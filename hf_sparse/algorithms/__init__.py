"""Mask-update algorithms, registered by name, and their schedules.

Example:
    >>> algo = build_algorithm(DynamicSparsityConfig(algorithm="rigl"), MaskStructure(), total_steps=1000, seed=0)
    >>> algo.schedule.steps[:3]
    (100, 200, 300)
"""

from __future__ import annotations

from typing import Dict, Type

from ..config import ALGORITHMS as _CONFIG_ALGORITHMS
from ..config import DynamicSparsityConfig
from ..structure import MaskStructure
from .base import LayerUpdate, SparsityAlgorithm, StaticAlgorithm
from .gmp import GMPAlgorithm
from .prune_regrow import DynSparseAlgorithm, RigLAlgorithm, SETAlgorithm
from .schedules import UpdateSchedule, cubic_density, prune_ratio_at
from .topk import TopKAlgorithm

ALGORITHM_REGISTRY: Dict[str, Type[SparsityAlgorithm]] = {}


def register_algorithm(cls: Type[SparsityAlgorithm]) -> Type[SparsityAlgorithm]:
    """Registers an algorithm class under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name to register under.")
    ALGORITHM_REGISTRY[cls.name] = cls
    return cls


for _cls in (StaticAlgorithm, DynSparseAlgorithm, SETAlgorithm, RigLAlgorithm, GMPAlgorithm, TopKAlgorithm):
    register_algorithm(_cls)
assert set(ALGORITHM_REGISTRY) == set(_CONFIG_ALGORITHMS), "config.ALGORITHMS and the registry disagree"


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
    try:
        cls = ALGORITHM_REGISTRY[config.algorithm]
    except KeyError:
        raise ValueError(
            f"Unknown algorithm {config.algorithm!r}; registered: {', '.join(sorted(ALGORITHM_REGISTRY))}."
        ) from None
    return cls(config, structure, total_steps, seed)


__all__ = [
    "ALGORITHM_REGISTRY",
    "DynSparseAlgorithm",
    "GMPAlgorithm",
    "LayerUpdate",
    "RigLAlgorithm",
    "SETAlgorithm",
    "SparsityAlgorithm",
    "StaticAlgorithm",
    "TopKAlgorithm",
    "UpdateSchedule",
    "build_algorithm",
    "cubic_density",
    "prune_ratio_at",
    "register_algorithm",
]
