"""User-facing configuration dataclasses.

Every config is a dataclass whose fields carry their help text in ``metadata["help"]`` (so
``HfArgumentParser`` can turn them into command-line options), is validated in ``__post_init__`` with errors
that repeat the bad value, and round-trips through JSON with the library version stamped in (`ConfigMixin`).

This package imports nothing from the rest of hf_sparse (it is the bottom layer); algorithm and regularizer
names are checked against the open registries in `registry`.
"""

from .base import ConfigMixin
from . import dynamic as _dynamic
from . import regularizer as _regularizer
from .dynamic import INACTIVE_MODES, PRUNE_SCHEDULES, TOPK_EXPLOITATIONS, DynamicSparsityConfig
from .ift import IFT_KINDS, IFT_NONLINEARITIES, SparseIFTConfig, parallel_branches
from .registry import ALGORITHM_REGISTRY, REGULARIZER_REGISTRY, Registry
from .regularizer import RegularizerConfig
from .sparsity import BLOCK_NORMS, DISTRIBUTIONS, INITS, MASK_INITS, STRUCTURES, SparsityConfig



def __getattr__(name: str):
    # ALGORITHMS / ALGORITHM_DEFAULTS / REGULARIZERS are views of the registries, computed when read.
    if name in ("ALGORITHMS", "ALGORITHM_DEFAULTS"):
        return getattr(_dynamic, name)
    if name == "REGULARIZERS":
        return _regularizer.REGULARIZERS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALGORITHM_REGISTRY", "REGULARIZER_REGISTRY", "Registry", "BLOCK_NORMS", "DISTRIBUTIONS", "INACTIVE_MODES", "INITS", "IFT_KINDS",
    "IFT_NONLINEARITIES", "MASK_INITS", "PRUNE_SCHEDULES", "STRUCTURES", "TOPK_EXPLOITATIONS",
    "ConfigMixin", "DynamicSparsityConfig", "RegularizerConfig", "SparseIFTConfig", "SparsityConfig",
    "parallel_branches",
]
