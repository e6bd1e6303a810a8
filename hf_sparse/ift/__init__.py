"""Sparse Iso-FLOP Transformations (Sparse-IFT paper) for BERT and GPT-2.

Example:
    >>> import hf_sparse
    >>> cfg = hf_sparse.SparseIFTConfig(kind="parallel", sparsity=0.5)
    >>> model = hf_sparse.ift.apply_sparse_ift(GPT2LMHeadModel, GPT2Config(), cfg)
    >>> hf_sparse.ift.widen_config(GPT2Config(n_embd=768, n_inner=3072, n_head=12), sparsity=0.5).n_embd
    1092
"""

from .loading import from_pretrained_sparse_ift
from .modules import SparseDoped, SparseFactorized, SparseParallel, make_activation, make_matrix
from .sizing import (
    active_macs,
    doped_rank,
    factorized_rank,
    parallel_branches,
    round_to_multiple,
    search_space_cardinality,
    wide_factor,
)
from .transform import (
    CONFIG_KEY,
    apply_sparse_ift,
    get_sparse_ift_config,
    rebuild_sparse_ift_,
    resolve_nonlinearity,
    sparse_ift_,
    widen_config,
)

__all__ = [
    "CONFIG_KEY",
    "active_macs",
    "SparseDoped",
    "SparseFactorized",
    "SparseParallel",
    "apply_sparse_ift",
    "doped_rank",
    "factorized_rank",
    "from_pretrained_sparse_ift",
    "get_sparse_ift_config",
    "make_activation",
    "make_matrix",
    "parallel_branches",
    "rebuild_sparse_ift_",
    "resolve_nonlinearity",
    "round_to_multiple",
    "search_space_cardinality",
    "sparse_ift_",
    "wide_factor",
    "widen_config",
]
