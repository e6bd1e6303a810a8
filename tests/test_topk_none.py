"""top-k with ``topk_exploitation="NONE"``: rewiring every step with no exploitation, the baseline of the NVIDIA
paper's Fig. 3 (FIX / RESET / REGULARIZE are measured against it)."""

import torch
from torch import nn

from hf_sparse import DynamicSparsityConfig
from hf_sparse.algorithms.topk import TopKAlgorithm
from hf_sparse.layers import SparseLinear
from hf_sparse.structure import MaskStructure


def test_none_is_accepted_case_insensitively():
    assert DynamicSparsityConfig(algorithm="topk", topk_exploitation="none").topk_exploitation == "NONE"


def test_none_leaves_non_participating_weights_and_optimizer_state_alone():
    mask = torch.tensor([[True, False], [False, True]])
    layer = SparseLinear.from_dense(nn.Linear(2, 2), mask, MaskStructure(), 0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [-4.0, 3.0]]))
    zeroed = []
    cfg = DynamicSparsityConfig(algorithm="topk", topk_exploitation="NONE", topk_reset_interval=1)
    algo = TopKAlgorithm(cfg, MaskStructure(), 10, 0)
    for step in range(1, 11):
        algo.after_optimizer_step_({"l": layer}, step, lambda m, w: zeroed.append(step))
        # Never fixed: it keeps rewiring through the straight-through estimator to the last step.
        assert algo.straight_through(step) and algo.inactive_values_live(step)
    assert layer.weight.tolist() == [[1.0, 2.0], [-4.0, 3.0]]
    assert zeroed == [] and not algo.fixed
