"""Trainer integration: `SparsityCallback` (any ``transformers.Trainer``) and the thin `SparseTrainer`.

- `callback`: `SparsityCallback` decides *when* (sparsify, build the controller, step it, checkpoint and resume it).
- `sparse_trainer`: `SparseTrainer(Trainer)`: wires the callback in, applies regularizers, logs the metrics and
  saves hf_sparse checkpoints.
- `helpers`: the callback's extra jobs as small named helpers (training-FLOPs hook, kernel enabling, checkpoint
  rewriting for a vanilla Trainer, refusing unsupported distributed back-ends).
- `distill`: knowledge distillation from a dense teacher (`DistillationConfig`, `Distiller`), used by
  `SparseTrainer(teacher=...)`.
"""

from .callback import FLOPS_STATE_KEY, SparsityCallback
from .distill import DistillationConfig, Distiller, soft_target_loss
from .sparse_trainer import TRAINING_ARGS_NAME, SparseTrainer

__all__ = [
    "DistillationConfig", "Distiller", "FLOPS_STATE_KEY", "TRAINING_ARGS_NAME", "SparseTrainer", "SparsityCallback",
    "soft_target_loss",
]
