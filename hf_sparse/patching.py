"""Turning a model sparse in place (`sparsify_`) and back (`densify_`).

Both follow the same discipline: resolve and validate everything first (targets, structure fit, densities,
masks, new weights), and only then mutate the model. A bad config therefore raises before anything changes,
and the model is exactly as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .config import SparsityConfig
from .structure import pattern_densities
from .layers import SparseMixin, is_sparse_module, sparse_class_for
from .targets import DEFAULT_TARGET_MODULES, find_target_modules  # noqa: F401 - re-exported (old home)
from .structure import MaskStructure, check_fits, make_generator, random_mask, select_mask

logger = logging.getLogger(__name__)

def sparse_modules(model: nn.Module) -> Dict[str, SparseMixin]:
    """All hf_sparse sparse layers of ``model``, by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if is_sparse_module(m)}


def check_sparsity_pattern(names: Sequence[str], config: SparsityConfig) -> None:
    """Raises ``ValueError`` when an entry of ``config.sparsity_pattern`` matches none of the target ``names``.

    Args:
        names: The target module names.
        config: The sparsity config.
    """
    for regex in config.sparsity_pattern or {}:
        if not any(re.fullmatch(regex, name) for name in names):
            shown = ", ".join(list(names)[:4]) + (", ..." if len(names) > 4 else "")
            raise ValueError(f"sparsity_pattern entry {regex!r} matches none of the {len(names)} target modules "
                             f"({shown}); patterns are matched against the full module name.")


def layer_densities(shapes: Mapping[str, Sequence[int]], config: SparsityConfig) -> Dict[str, float]:
    r"""The target density of every layer under ``config``: its distribution and its ``sparsity_pattern``.

    Modules named by the pattern get ``1 - pinned sparsity``; the others follow `pattern_densities` (uniform:
    ``config.density``; ERK: what the pinned layers leave of the overall budget, shared by ERK). N:M structures
    give every layer ``n / m`` of its own (pinned) N.

    Args:
        shapes: Weight shape per target module name.
        config: The sparsity config.

    Returns:
        Density per module name.

    Example:
        >>> cfg = SparsityConfig(sparsity=0.9, sparsity_pattern={r".*\.query": 0.5})
        >>> layer_densities({"l0.query": (8, 8), "l0.key": (8, 8)}, cfg)["l0.query"]
        0.5
    """
    pinned = {}
    for name in shapes:
        s = config.pattern_sparsity(name)
        if s is not None:
            pinned[name] = 1.0 - s
    return pattern_densities(shapes, config.density, pinned, config.distribution)


def layer_structure(name: str, config: SparsityConfig) -> MaskStructure:
    """The mask structure of module ``name``: the config's, with N set by ``sparsity_pattern`` for N:M structures.

    Example:
        >>> cfg = SparsityConfig(structure="nm", sparsity=None, sparsity_pattern={r".*query": 0.25})
        >>> layer_structure("l0.query", cfg).describe()
        '3:4'
    """
    structure = MaskStructure.from_config(config)
    pinned = config.pattern_sparsity(name)
    if structure.fixed_density is None or pinned is None:
        return structure
    return dataclasses.replace(structure, n=int(round((1.0 - pinned) * structure.m)))


def _new_weight(module: nn.Module, config: SparsityConfig, name: str) -> torch.Tensor:
    """The weight values the sparse layer will hold (before masking), without touching ``module``."""
    w = module.weight.detach()
    if config.init == "keep":
        return w
    gen = make_generator(config.seed, "init", name, device=w.device)
    fresh = torch.empty(w.shape, dtype=torch.float32, device=w.device)
    std = config.init_std
    nn.init.trunc_normal_(fresh, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=gen)
    return fresh.to(w.dtype)


def sparsify_(model: nn.Module, config: SparsityConfig) -> nn.Module:
    """Replaces the target layers of ``model`` with sparse layers, in place.

    The new layers reuse the same ``Parameter`` objects (an optimizer built before keeps working); inactive
    weights are set to zero. Everything is validated before the model is touched: on error the model is
    unchanged.

    Args:
        model: A transformers model (BERT / GPT-2 defaults built in) or any module with explicit
            ``config.target_modules``.
        config: What and how to sparsify.

    Returns:
        The same ``model``, now sparse.

    Example:
        >>> model = BertForPreTraining(BertConfig(hidden_size=64, num_hidden_layers=2,
        ...                                       num_attention_heads=2, intermediate_size=128))
        >>> sparsify_(model, SparsityConfig(sparsity=0.9, seed=0))
    """
    if not isinstance(config, SparsityConfig):
        raise TypeError(f"config must be a SparsityConfig, got {type(config).__name__}.")
    already = sparse_modules(model)
    if already:
        raise ValueError(
            f"{type(model).__name__} is already sparsified ({len(already)} sparse modules, e.g. "
            f"{next(iter(already))!r}); call densify_(model) first."
        )
    targets = find_target_modules(model, config)
    check_sparsity_pattern(list(targets), config)
    structures = {name: layer_structure(name, config) for name in targets}
    for name, module in targets.items():
        check_fits(structures[name], module.weight.shape, sparse_class_for(module).input_dim, name)
    densities = layer_densities({name: tuple(m.weight.shape) for name, m in targets.items()}, config)
    mask_init = config.resolved_mask_init

    plan = []  # (name, module, new weight values, mask); built completely before any mutation
    for name, module in targets.items():
        cls = sparse_class_for(module)
        values = _new_weight(module, config, name)
        structure = structures[name]
        density = densities[name] if structure.fixed_density is None else structure.fixed_density
        if mask_init == "random":
            gen = make_generator(config.seed, "mask", name, device=values.device)
            mask = random_mask(values.shape, structure, density, cls.input_dim, gen, device=values.device)
        else:
            mask = select_mask(values, structure, density, cls.input_dim)
        plan.append((name, module, values, mask, density))

    with torch.no_grad():
        for name, module, values, mask, density in plan:
            if config.init != "keep":
                module.weight.copy_(values)
            sparse = sparse_class_for(module).from_dense(module, mask, structures[name], density)
            sparse.weight.masked_fill_(~mask, 0)
            _set_submodule(model, name, sparse)
    set_sparsity_config(model, config)
    logger.info(
        "Sparsified %d modules of %s: %s, sparsity %.4f (%s%s).",
        len(plan), type(model).__name__, MaskStructure.from_config(config).describe(), config.sparsity,
        config.distribution, f", pattern {config.sparsity_pattern}" if config.sparsity_pattern else "",
    )
    return model


def densify_(model: nn.Module) -> nn.Module:
    """Replaces every sparse layer with its plain dense class, in place, keeping the weights (zeros stay zero).

    Args:
        model: A model patched by `sparsify_` (or loaded sparse).

    Returns:
        The same ``model``, with plain ``nn.Linear`` / ``Conv1D`` layers.

    Example:
        >>> densify_(model)
    """
    found = sparse_modules(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no sparse modules to densify.")
    for name, module in found.items():
        _set_submodule(model, name, module.to_dense())
    set_sparsity_config(model, None)
    logger.info("Densified %d modules of %s.", len(found), type(model).__name__)
    return model


def set_straight_through_(model: nn.Module, enabled: bool = True, modules: Optional[List[str]] = None) -> List[str]:
    """Switches the straight-through gradient on or off for sparse layers, without re-patching.

    Args:
        model: A sparsified model.
        enabled: ``True`` sends a dense gradient to every weight; ``False`` restores always-sparse gradients.
        modules: Names of the layers to switch (default: all sparse layers).

    Returns:
        The names of the layers that were switched.
    """
    found = sparse_modules(model)
    names = list(found) if modules is None else list(modules)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"Not sparse modules of {type(model).__name__}: {missing}.")
    for n in names:
        found[n].straight_through = bool(enabled)
    return names


# The one place that reads or writes the sparsity state recorded on a model: everything else (Sparse-IFT,
# checkpoints, the controller, exports) goes through these two functions.
_STATE_ATTR = "_hf_sparse_config"


def get_sparsity_config(model: nn.Module) -> Optional[SparsityConfig]:
    """The `SparsityConfig` recorded on ``model`` (set by `sparsify_`, a sparse load or `set_sparsity_config`).

    Args:
        model: Any ``nn.Module``.

    Returns:
        The config, or ``None`` when the model was never sparsified (or was densified).

    Example:
        >>> sparsify_(model, SparsityConfig(sparsity=0.9))
        >>> get_sparsity_config(model).sparsity
        0.9
    """
    return getattr(model, _STATE_ATTR, None)


def set_sparsity_config(model: nn.Module, config: Optional[SparsityConfig]) -> None:
    """Records ``config`` as the `SparsityConfig` of ``model`` (``None`` removes the record).

    Used when the sparse modules were built by something other than `sparsify_` (a checkpoint load, Sparse-IFT,
    a controller that starts GMP denser than its target) so that checkpoints and reports describe the run.

    Args:
        model: The model.
        config: The config to record, or ``None``.

    Example:
        >>> set_sparsity_config(model, SparsityConfig(sparsity=0.9))
    """
    if config is None:
        if hasattr(model, _STATE_ATTR):
            delattr(model, _STATE_ATTR)
        return
    if not isinstance(config, SparsityConfig):
        raise TypeError(f"config must be a SparsityConfig or None, got {type(config).__name__}.")
    setattr(model, _STATE_ATTR, config)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
