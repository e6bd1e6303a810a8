"""Training metrics: threshold sparsity, weight correlation, scaling-law advantages, and their Trainer callback.

- `threshold`: threshold sparsity ``s(eps)`` of the effective weights per module group (Singh et al. 2024).
- `groups`: which layers are measured and their module groups (the table in `hf_sparse.targets`).
- `weight_correlation`: decorrelation time of weights per magnitude bin (the NVIDIA sparse-training study, Sec. 2).
- `scaling_law`: pre-training and inference advantage against a compute-efficient scaling law (Singh et al. 2024,
  Eq. 3, 6-9).
- `callback`: `MetricsCallback`, which logs the above from a ``transformers.Trainer`` and saves them with each
  checkpoint.

Example:
    >>> tracker = ThresholdSparsityTracker(model, every=10)
"""

from .callback import THRESHOLD_SPARSITY_FILE, TRAJECTORIES_FILE, MetricsCallback
from .groups import MODULE_GROUPS, OTHER, measured_modules, module_group
from .scaling_law import PILE_SCALING_LAW, Advantage, ScalingLaw, inference_advantage, pretraining_advantage, sparse_flops
from .threshold import (
    DEFAULT_THRESHOLDS,
    ThresholdSparsity,
    ThresholdSparsityTracker,
    count_below,
    threshold_sparsity,
)
from .weight_correlation import (
    DecorrelationResult,
    WeightTrajectoryRecorder,
    decorrelation_by_magnitude,
    decorrelation_time,
    lagged_correlation,
)

__all__ = [
    "DEFAULT_THRESHOLDS", "MODULE_GROUPS", "OTHER", "PILE_SCALING_LAW", "THRESHOLD_SPARSITY_FILE", "TRAJECTORIES_FILE",
    "Advantage", "DecorrelationResult", "MetricsCallback", "ScalingLaw", "ThresholdSparsity", "ThresholdSparsityTracker",
    "WeightTrajectoryRecorder", "count_below", "decorrelation_by_magnitude", "decorrelation_time",
    "inference_advantage", "lagged_correlation", "measured_modules", "module_group", "pretraining_advantage",
    "sparse_flops", "threshold_sparsity",
]
