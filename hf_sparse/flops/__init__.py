"""FLOP accounting: per module and per group (dense / sparse, forward and forward+backward), closed forms, and
training FLOPs accumulated while densities change.

- `count`: `count(model, seq_len, batch_size)` -> `FlopCount`; `transformer_flops` (the Cerebras paper's
  Algorithm 2); `training_flops` / `TrainingFlopsMeter`; `mask_search_space`.
- `training`: `StepFlopsAccumulator`, the training-FLOPs meter the Trainer integration feeds with real batch shapes.

Example:
    >>> print(hf_sparse.flops.count(model, seq_len=1024, batch_size=8))
"""

from ..ift.sizing import search_space_cardinality
from .count import (
    GROUPS,
    TRAIN_FACTOR,
    FlopCount,
    GroupFlops,
    ModuleFlops,
    TrainingFlopsMeter,
    count,
    mask_search_space,
    training_flops,
    transformer_flops,
)
from .training import StepFlopsAccumulator

__all__ = [
    "GROUPS", "TRAIN_FACTOR", "FlopCount", "GroupFlops", "ModuleFlops", "StepFlopsAccumulator", "TrainingFlopsMeter",
    "count", "mask_search_space", "search_space_cardinality", "training_flops", "transformer_flops",
]
