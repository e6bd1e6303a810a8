"""Setting a model up for `SparsityController`: sparsify at the density the algorithm starts from, and the
final per-layer densities the schedule aims at."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from ..algorithms import ALGORITHM_REGISTRY
from ..config import DynamicSparsityConfig, SparsityConfig
from .optim_state import unwrap_optimizer
from ..layers import SparseMixin
from ..patching import (
    _new_weight, check_sparsity_pattern, layer_densities, set_sparsity_config, sparse_modules, sparsify_,
)
from ..targets import find_target_modules

def sparsify_for_training_(
    model: nn.Module,
    sparsity_config: SparsityConfig,
    dynamic_config: DynamicSparsityConfig,
    optimizer: Optional[torch.optim.Optimizer] = None,
) -> Dict[str, SparseMixin]:
    """Sparsifies ``model`` in place at the density the algorithm starts from (its ``initial_sparsity_config``).

    Checks first that ``optimizer`` (when given) holds the target weights, so a failure leaves the model as it was.

    Returns:
        The sparse layers by name.
    """
    # The algorithm says where it starts (GMP: denser than its target, pruning down along its schedule).
    start_cfg = ALGORITHM_REGISTRY.get(dynamic_config.algorithm).initial_sparsity_config(sparsity_config, dynamic_config)
    # The target config's pattern is checked (and its ERK budget solved) here too, before anything changes: the
    # start config may differ from it (GMP starts without the pattern).
    targets = find_target_modules(model, sparsity_config)
    check_sparsity_pattern(list(targets), sparsity_config)
    layer_densities({n: tuple(m.weight.shape) for n, m in targets.items()}, sparsity_config)
    inner = unwrap_optimizer(optimizer)
    if inner is not None:
        held = {id(p) for group in inner.param_groups for p in group["params"]}
        missing = [n for n, m in find_target_modules(model, start_cfg).items() if id(m.weight) not in held]
        if missing:
            raise ValueError(
                f"The optimizer does not hold the weights of target layers {missing[:3]}"
                f"{'...' if len(missing) > 3 else ''}; build it from model.parameters()."
            )
    frozen = dynamic_config.inactive == "frozen"
    # Frozen inactive weights keep the values they start with (Dietrich et al. 2021, arXiv:2108.06277, Fig. 1a "untrained"), so the
    # values sparsify_ zeroes are put back; with a fresh init they are that init, drawn again from its seed.
    kept = (
        {n: m.weight.detach().clone() for n, m in find_target_modules(model, start_cfg).items()}
        if frozen and start_cfg.init == "keep" else {}
    )
    sparsify_(model, start_cfg)
    set_sparsity_config(model, sparsity_config)
    modules = sparse_modules(model)
    if frozen:
        with torch.no_grad():
            for name, module in modules.items():
                values = kept[name] if name in kept else _new_weight(module, start_cfg, name)
                module.weight.copy_(torch.where(module.weight_mask, module.weight, values))
                module.set_inactive_mode_("frozen")
    return modules


def final_layer_densities(modules: Dict[str, SparseMixin], sparsity_config) -> Dict[str, float]:
    """Target density of every layer at the end of training: the config's distribution and ``sparsity_pattern``
    (`hf_sparse.patching.layer_densities`); N:M layers keep the ``n / m`` of their own structure."""
    if sparsity_config is None:
        return {n: float(m.target_density) for n, m in modules.items()}
    shapes = {n: tuple(m.weight.shape) for n, m in modules.items()}
    densities = layer_densities(shapes, sparsity_config)
    for n, m in modules.items():
        if m.structure.fixed_density is not None:
            densities[n] = m.structure.fixed_density
    return densities
