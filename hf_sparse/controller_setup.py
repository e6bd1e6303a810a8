"""Setting a model up for `SparsityController` and reading / writing the controller's state files.

Split from ``controller.py`` to keep that module to the update loop itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from .config import DynamicSparsityConfig, SparsityConfig
from .controller_utils import unwrap_optimizer
from .layers import SparseMixin
from .patching import _new_weight, find_target_modules, sparse_modules, sparsify_

STATE_TENSORS_NAME = "sparsity_controller.safetensors"
STATE_META_NAME = "sparsity_controller.json"


def sparsify_for_training_(
    model: nn.Module,
    sparsity_config: SparsityConfig,
    dynamic_config: DynamicSparsityConfig,
    optimizer: Optional[torch.optim.Optimizer] = None,
) -> Dict[str, SparseMixin]:
    """Sparsifies ``model`` in place at the density the algorithm starts from (GMP: ``gmp_initial_density``).

    Checks first that ``optimizer`` (when given) holds the target weights, so a failure leaves the model as it was.

    Returns:
        The sparse layers by name.
    """
    start_cfg = sparsity_config
    if dynamic_config.algorithm == "gmp":
        start_cfg = dataclasses.replace(sparsity_config, sparsity=1.0 - dynamic_config.gmp_initial_density)
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
    # Frozen inactive weights keep the values they start with (seed paper 000, Fig. 1a "untrained"), so the
    # values sparsify_ zeroes are put back; with a fresh init they are that init, drawn again from its seed.
    kept = (
        {n: m.weight.detach().clone() for n, m in find_target_modules(model, start_cfg).items()}
        if frozen and start_cfg.init == "keep" else {}
    )
    sparsify_(model, start_cfg)
    model._hf_sparse_config = sparsity_config
    modules = sparse_modules(model)
    if frozen:
        with torch.no_grad():
            for name, module in modules.items():
                values = kept[name] if name in kept else _new_weight(module, start_cfg, name)
                module.weight.copy_(torch.where(module.weight_mask, module.weight, values))
                module.set_inactive_mode_("frozen")
    return modules


def write_state(state: Dict[str, Any], directory: Union[str, os.PathLike]) -> None:
    """Writes a controller ``state_dict`` to ``directory``: masks as safetensors, everything else as JSON."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state["tensors"].items()}, os.path.join(directory, STATE_TENSORS_NAME))
    with open(os.path.join(directory, STATE_META_NAME), "w", encoding="utf-8") as f:
        json.dump(state["meta"], f, indent=2, sort_keys=True)


def read_state(directory: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Reads what `write_state` wrote (safetensors and JSON only; nothing is unpickled)."""
    from safetensors.torch import load_file

    tensor_path = os.path.join(directory, STATE_TENSORS_NAME)
    meta_path = os.path.join(directory, STATE_META_NAME)
    for path in (tensor_path, meta_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No sparsity controller state at {path!r}.")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    return {"tensors": load_file(tensor_path, device="cpu"), "meta": meta}
