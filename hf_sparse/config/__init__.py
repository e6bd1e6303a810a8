"""User-facing configuration dataclasses.

Every config is a dataclass whose fields carry their help text in ``metadata["help"]`` (so
``HfArgumentParser`` can turn them into command-line options), is validated in ``__post_init__`` with errors
that repeat the bad value, and round-trips through JSON with the library version stamped in (`ConfigMixin`).

This package imports nothing from the rest of hf_sparse (it is the bottom layer).
"""

from .base import ConfigMixin
from .dynamic import (
    ALGORITHM_DEFAULTS,
    ALGORITHMS,
    INACTIVE_MODES,
    PRUNE_SCHEDULES,
    TOPK_EXPLOITATIONS,
    DynamicSparsityConfig,
)
from .ift import IFT_KINDS, IFT_NONLINEARITIES, SparseIFTConfig, parallel_branches
from .regularizer import REGULARIZERS, RegularizerConfig
from .sparsity import BLOCK_NORMS, DISTRIBUTIONS, INITS, MASK_INITS, STRUCTURES, SparsityConfig

__all__ = [
    "ALGORITHM_DEFAULTS", "ALGORITHMS", "BLOCK_NORMS", "DISTRIBUTIONS", "INACTIVE_MODES", "INITS", "IFT_KINDS",
    "IFT_NONLINEARITIES", "MASK_INITS", "PRUNE_SCHEDULES", "REGULARIZERS", "STRUCTURES", "TOPK_EXPLOITATIONS",
    "ConfigMixin", "DynamicSparsityConfig", "RegularizerConfig", "SparseIFTConfig", "SparsityConfig",
    "parallel_branches",
]
