"""hf_sparse: sparse pre-training and fine-tuning for Hugging Face Transformers and Accelerate.

Example:
    >>> import hf_sparse
    >>> hf_sparse.sparsify_(model, hf_sparse.SparsityConfig(sparsity=0.9, structure="unstructured"))
    >>> print(hf_sparse.sparsity_report(model))
    >>> hf_sparse.densify_(model)
"""

from .config import SparsityConfig
from .layers import SparseConv1D, SparseLinear, is_sparse_module
from .patching import (
    DEFAULT_TARGET_MODULES,
    densify_,
    find_target_modules,
    get_sparsity_config,
    set_straight_through_,
    sparse_modules,
    sparsify_,
)
from .report import LayerSparsity, SparsityReport, sparsity_report
from .structure import MaskStructure
from .version import __version__

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "LayerSparsity",
    "MaskStructure",
    "SparseConv1D",
    "SparseLinear",
    "SparsityConfig",
    "SparsityReport",
    "__version__",
    "densify_",
    "find_target_modules",
    "get_sparsity_config",
    "is_sparse_module",
    "set_straight_through_",
    "sparse_modules",
    "sparsify_",
    "sparsity_report",
]
