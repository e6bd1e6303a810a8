"""Turning a model sparse in place (`sparsify_`) and back (`densify_`).

Both follow the same discipline: resolve and validate everything first (targets, structure fit, densities,
masks, new weights), and only then mutate the model. A bad config therefore raises before anything changes,
and the model is exactly as it was.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from .config import SparsityConfig
from .distributions import erk_densities, uniform_densities
from .layers import SparseMixin, is_sparse_module, sparse_class_for
from .structure import MaskStructure, check_fits, make_generator, random_mask, select_mask

logger = logging.getLogger(__name__)

# Default targets per `config.model_type`: every Linear of the encoder / decoder blocks. Embeddings, the tied
# MLM / LM heads, the pooler and task heads stay dense (DynSparse paper: "non-embedding weights").
_BERT_LIKE = r"(.*\.)?encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
DEFAULT_TARGET_MODULES: Dict[str, str] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "gpt2": r"(.*\.)?h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)",
}
ALL_LINEAR = "all-linear"


def sparse_modules(model: nn.Module) -> Dict[str, SparseMixin]:
    """All hf_sparse sparse layers of ``model``, by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if is_sparse_module(m)}


def _matches(name: str, spec: Union[str, List[str]]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == item or name.endswith("." + item) for item in spec)


def _compile_regex(spec, field_name: str) -> None:
    if isinstance(spec, str) and spec != ALL_LINEAR:
        try:
            re.compile(spec)
        except re.error as err:
            raise ValueError(f"{field_name}={spec!r} is not a valid regular expression: {err}.") from err


def _all_linear(model: nn.Module) -> Dict[str, nn.Module]:
    """Every Linear / Conv1D inside the base model (task heads live outside it) except the output embedding."""
    base = getattr(model, "base_model", model)
    prefix = next((n for n, m in model.named_modules() if m is base), "")
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: m
        for name, m in model.named_modules()
        if sparse_class_for(m) is not None
        and m is not out_emb
        and (not prefix or name.startswith(prefix + "."))
    }


def find_target_modules(model: nn.Module, config: SparsityConfig) -> Dict[str, nn.Module]:
    """Resolves ``config.target_modules`` / ``exclude_modules`` on ``model`` without changing it.

    Args:
        model: Any ``nn.Module``; a transformers model for the per-model-type defaults.
        config: The sparsity config.

    Returns:
        Target modules by qualified name, in module order.

    Raises:
        ValueError: when a pattern matches nothing, matches a module that is neither ``nn.Linear`` nor
            ``Conv1D``, or no defaults exist for the model type.

    Example:
        >>> names = list(find_target_modules(model, SparsityConfig(target_modules=["query", "value"])))
    """
    spec = config.target_modules
    _compile_regex(spec, "target_modules")
    _compile_regex(config.exclude_modules, "exclude_modules")
    if spec is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGET_MODULES:
            raise ValueError(
                f"No default target modules for model_type={model_type!r} (known: "
                f"{', '.join(sorted(DEFAULT_TARGET_MODULES))}); pass target_modules (a regex, a list of "
                f"names, or {ALL_LINEAR!r})."
            )
        spec = DEFAULT_TARGET_MODULES[model_type]
    if spec == ALL_LINEAR:
        targets = _all_linear(model)
    else:
        targets = {name: m for name, m in model.named_modules() if name and _matches(name, spec)}
        items = [spec] if isinstance(spec, str) else spec
        unmatched = [
            item for item in items
            if not any(_matches(name, item if isinstance(spec, str) else [item]) for name in targets)
        ]
        if unmatched:
            raise ValueError(f"target_modules entries {unmatched!r} matched no module of {type(model).__name__}.")
        wrong = {name: type(m).__name__ for name, m in targets.items() if sparse_class_for(m) is None}
        if wrong:
            raise ValueError(
                f"target_modules matched modules that are not nn.Linear or Conv1D: {wrong}; "
                "narrow the pattern (module names must match in full for a regex)."
            )
    if config.exclude_modules is not None:
        targets = {n: m for n, m in targets.items() if not _matches(n, config.exclude_modules)}
    if not targets:
        raise ValueError(f"No target modules left in {type(model).__name__} after exclude_modules.")
    return targets


def _layer_densities(targets: Dict[str, nn.Module], config: SparsityConfig) -> Dict[str, float]:
    shapes = {name: tuple(m.weight.shape) for name, m in targets.items()}
    if config.distribution == "erk":
        return erk_densities(shapes, config.density)
    return uniform_densities(shapes, config.density)


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
    structure = MaskStructure.from_config(config)
    for name, module in targets.items():
        check_fits(structure, module.weight.shape, sparse_class_for(module).input_dim, name)
    densities = _layer_densities(targets, config)
    mask_init = config.resolved_mask_init

    plan = []  # (name, module, new weight values, mask); built completely before any mutation
    for name, module in targets.items():
        cls = sparse_class_for(module)
        values = _new_weight(module, config, name)
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
            sparse = sparse_class_for(module).from_dense(module, mask, structure, density)
            sparse.weight.masked_fill_(~mask, 0)
            _set_submodule(model, name, sparse)
    model._hf_sparse_config = config
    logger.info(
        "Sparsified %d modules of %s: %s, sparsity %.4f (%s).",
        len(plan), type(model).__name__, structure.describe(), config.sparsity, config.distribution,
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
    if hasattr(model, "_hf_sparse_config"):
        del model._hf_sparse_config
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


def get_sparsity_config(model: nn.Module) -> Optional[SparsityConfig]:
    """The `SparsityConfig` the model was sparsified with, or ``None``."""
    return getattr(model, "_hf_sparse_config", None)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
