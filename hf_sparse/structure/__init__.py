"""Mask structures as pure tensor functions: the bottom of hf_sparse, above the configs.

A mask is a boolean tensor in the weight's own layout, ``True`` = active. Every function takes ``input_dim``,
the index of the reduction (input) dimension of the weight (1 for ``nn.Linear``, 0 for GPT-2's ``Conv1D``), so
both share one code path. Counts are exact and everything is vectorised. Nothing here holds state or knows about
modules.

- `granules`: `MaskStructure`, granule scores (1x1, BxB blocks with L1/L2/Linf norm, N:M groups), exact counts,
  top-k of granules, granule <-> element masks.
- `selection`: whole masks by score (`select_mask`), at random (`random_mask`), N:M (`nm_mask`).
- `transposable`: transposable N:M masks, exact per tile (pattern enumeration up to m=5, min-cost flow for any m).
- `distributions`: how an overall density is shared between layers (uniform, ERK, pinned by a pattern).
- `generators`: seeded ``torch.Generator`` s, identical on every process and after a resume.

Example:
    >>> s = MaskStructure(kind="block", block_size=16)
    >>> mask = select_mask(weight, s, density=0.1, input_dim=1)
"""

from .distributions import erk_densities, pattern_densities, uniform_densities
from .generators import derive_seed, make_generator
from .granules import (
    KINDS,
    NORMS,
    MaskStructure,
    _largest_indices,
    block_scores,
    check_fits,
    expand_granules,
    granule_scores,
    granule_shape,
    granules_to_elements,
    num_active,
    reduce_to_granules,
    topk_granules,
)
from .selection import nm_mask, random_mask, select_mask
from .transposable import (
    MAX_TRANSPOSABLE_M,
    _from_tiles,
    _transposable_patterns_cpu,
    transposable_nm_mask,
    transposable_patterns,
)

__all__ = [
    "KINDS", "MAX_TRANSPOSABLE_M", "NORMS", "MaskStructure", "block_scores", "check_fits", "derive_seed",
    "erk_densities", "expand_granules", "granule_scores", "granule_shape", "granules_to_elements", "make_generator",
    "nm_mask", "num_active", "pattern_densities", "random_mask", "reduce_to_granules", "select_mask", "topk_granules",
    "transposable_nm_mask", "transposable_patterns", "uniform_densities",
]
