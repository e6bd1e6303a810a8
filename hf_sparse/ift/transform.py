"""Building Sparse-IFT models: widened configs, in-place layer replacement, and rebuilding from ``config.json``.

- `widen_config` / `apply_sparse_ift(kind="wide")`: a standard BERT / GPT-2 architecture whose hidden and
  intermediate sizes are widened by ``k = sqrt(1/(1-s))``, then made ``s``-sparse with `sparsify_` (same
  default targets). Vanilla transformers loads it.
- `sparse_ift_` / `apply_sparse_ift(kind="parallel" | "factorized" | "doped")`: every target layer is replaced
  by a `SparseParallel` / `SparseFactorized` / `SparseDoped` module.

Every transformed model records what was done in ``model.config.sparse_ift`` (so it lands in ``config.json``):
``{"config": SparseIFTConfig.to_dict(), "targets": [replaced module names], "nonlinearity": resolved name}``.
`rebuild_sparse_ift_` re-creates the structure from that record on a freshly constructed model before its
weights load; `from_pretrained_sparse_ift` does construct + rebuild + load in one call.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Dict, List, Optional, Type

from torch import nn
from transformers.activations import ACT2FN

from ..config import SparseIFTConfig, parallel_branches
from ..patching import _set_submodule, set_sparsity_config, sparse_modules, sparsify_
from ..targets import find_target_modules
from ..structure import MaskStructure
from .modules import (
    IFT_MODULES,
    SparseDoped,
    SparseFactorized,
    SparseParallel,
    check_matrix_fits,
    features_of,
    layout_of,
)
from .sizing import doped_rank, factorized_rank, round_to_multiple, wide_factor

logger = logging.getLogger(__name__)

CONFIG_KEY = "sparse_ift"
# (hidden size, intermediate size, number of heads) attribute names per `model_type`.
WIDTH_FIELDS: Dict[str, tuple] = {
    "gpt2": ("n_embd", "n_inner", "n_head"),
    "bert": ("hidden_size", "intermediate_size", "num_attention_heads"),
    "roberta": ("hidden_size", "intermediate_size", "num_attention_heads"),
}


def structure_multiple(structure: MaskStructure) -> int:
    """Granularity that every sparse dimension must be a multiple of for ``structure`` to tile it."""
    if structure.kind == "block":
        return structure.block_size
    if structure.kind in ("nm", "nm_transposable"):
        return structure.m
    return 1


def widen_config(config, sparsity: float, multiple_of: int = 1):
    """A copy of a GPT-2 / BERT config widened for Sparse Wide at ``sparsity`` (Sparse-IFT paper, Sec. 2.4).

    The hidden size becomes ``hidden * k`` rounded **up** to a multiple of the number of heads (and of
    ``multiple_of``), the intermediate size ``intermediate * k`` rounded to the **nearest** multiple of
    ``multiple_of``, with ``k = sqrt(1/(1-s))``. This reproduces the paper's Table 14: GPT-3 Small 768 / 3072
    becomes 1092 / 4344 at 50% (768 * 1.414 = 1086.1 -> 1092 = 91 * 12; 3072 * 1.414 = 4344.5 -> 4344) and
    1536 / 6144 at 75%. The head count is kept, so the head size grows (91 at 50%).

    Args:
        config: A ``GPT2Config`` or ``BertConfig`` (``RobertaConfig``); not modified.
        sparsity: The sparsity ``s`` in ``[0, 1)``; ``s = 0`` returns an unchanged copy.
        multiple_of: Extra granularity of both sizes (a block size or the ``m`` of N:M).

    Returns:
        A new config of the same class.

    Example:
        >>> widen_config(GPT2Config(n_embd=768, n_inner=3072, n_head=12), sparsity=0.5).n_embd
        1092
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in WIDTH_FIELDS:
        raise ValueError(
            f"widen_config supports model_type in {sorted(WIDTH_FIELDS)}, got {model_type!r} "
            f"({type(config).__name__})."
        )
    k = wide_factor(sparsity)
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of={multiple_of!r} must be a positive integer.")
    hidden_name, inner_name, heads_name = WIDTH_FIELDS[model_type]
    hidden, heads = getattr(config, hidden_name), getattr(config, heads_name)
    inner = getattr(config, inner_name, None) or 4 * hidden  # GPT-2's n_inner=None means 4 * n_embd
    out = copy.deepcopy(config)
    if sparsity == 0:
        return out
    step = heads * multiple_of // math.gcd(heads, multiple_of)
    setattr(out, hidden_name, round_to_multiple(hidden * k, step, mode="up"))
    setattr(out, inner_name, round_to_multiple(inner * k, multiple_of, mode="nearest"))
    return out


def resolve_nonlinearity(name: str, model_config: Any) -> str:
    """``"auto"`` -> the model's own feed-forward activation (``hidden_act`` / ``activation_function``),
    GELU when the config names none; any other name is returned as is."""
    if name != "auto":
        return name
    for attr in ("hidden_act", "activation_function"):
        act = getattr(model_config, attr, None)
        if isinstance(act, str) and act in ACT2FN:
            return act
    logger.warning("nonlinearity='auto': %s names no known activation; using 'gelu'.", type(model_config).__name__)
    return "gelu"


def _init_std(cfg: SparseIFTConfig, model_config: Any) -> float:
    return float(cfg.init_std if cfg.init_std is not None else getattr(model_config, "initializer_range", 0.02))


def _layer_norm_eps(model_config: Any) -> float:
    for attr in ("layer_norm_eps", "layer_norm_epsilon"):
        if isinstance(getattr(model_config, attr, None), float):
            return getattr(model_config, attr)
    return 1e-5


def _plan_module(name: str, module: nn.Module, cfg: SparseIFTConfig, structure: MaskStructure) -> Dict[str, Any]:
    """Sizes of the replacement of ``module``, checked against the structure (nothing is built)."""
    layout = layout_of(module)
    d_in, d_out = features_of(module)
    s = cfg.sparsity
    if cfg.kind == "parallel":
        size = {"branches": parallel_branches(s)}
        shapes = [(d_in, d_out)]
    elif cfg.kind == "factorized":
        rank = factorized_rank(d_in, d_out, s, structure_multiple(structure))
        size, shapes = {"rank": rank}, [(d_in, rank), (rank, d_out)]
    else:
        size, shapes = {"rank": doped_rank(d_in, d_out, s)}, [(d_in, d_out)]
    for i, (a, b) in enumerate(shapes):
        check_matrix_fits(structure, layout, a, b, f"{name} (Sparse-IFT {cfg.kind} matrix {i}: {a}x{b})")
    return dict(layout=layout, d_in=d_in, d_out=d_out, bias=module.bias is not None, **size)


def _transform_(model: nn.Module, cfg: SparseIFTConfig, targets: Dict[str, nn.Module], nonlinearity: str) -> None:
    structure = MaskStructure.from_config(cfg)
    plans = {name: _plan_module(name, m, cfg, structure) for name, m in targets.items()}
    model_config = getattr(model, "config", None)
    std, eps = _init_std(cfg, model_config), _layer_norm_eps(model_config)
    cls = IFT_MODULES[cfg.kind]
    built = {}
    for name, plan in plans.items():  # build everything first: an error leaves the model untouched
        w = targets[name].weight
        layout, d_in, d_out = plan.pop("layout"), plan.pop("d_in"), plan.pop("d_out")
        built[name] = cls(layout, d_in, d_out, sparsity=cfg.sparsity, nonlinearity=nonlinearity, structure=structure,
                          std=std, seed=cfg.seed, name=name, eps=eps, device=w.device, dtype=w.dtype, **plan)
    for name, new in built.items():
        _set_submodule(model, name, new)


def _record_(model: nn.Module, cfg: SparseIFTConfig, targets: List[str], nonlinearity: Optional[str]) -> None:
    setattr(model.config, CONFIG_KEY, {"config": cfg.to_dict(), "targets": list(targets), "nonlinearity": nonlinearity})
    model._hf_sparse_ift_config = cfg
    if cfg.kind != "wide":  # sparsify_ already set it for wide; here: the sparse sub-modules, for controllers
        set_sparsity_config(model, cfg.sparsity_config(target_modules=list(sparse_modules(model)), exclude_modules=None))


def _check_untransformed(model: nn.Module) -> None:
    found = sparse_modules(model)
    if found:
        raise ValueError(
            f"{type(model).__name__} already has {len(found)} sparse modules (e.g. {next(iter(found))!r}); "
            "apply a Sparse-IFT to a dense model (densify_ first)."
        )


def sparse_ift_(model: nn.Module, config: SparseIFTConfig) -> nn.Module:
    """Replaces every target layer of a dense model by its Sparse Parallel / Factorized / Doped form, in place.

    Targets are `sparsify_`'s (every Linear / Conv1D of the transformer blocks by default; embeddings, LM head,
    pooler and task heads stay dense). New matrices are initialised ``N(0, init_std)`` with random exact-count
    masks derived from ``config.seed`` and the module name. Everything is sized and checked before the model
    changes. The structure is recorded in ``model.config.sparse_ift``.

    Args:
        model: A dense transformers BERT / GPT-2 model (or any model with ``config.target_modules``).
        config: A `SparseIFTConfig` with ``kind`` in parallel / factorized / doped (Sparse Wide changes the
            architecture: use `apply_sparse_ift`).

    Returns:
        The same ``model``.

    Example:
        >>> sparse_ift_(model, SparseIFTConfig(kind="factorized", sparsity=0.75))
    """
    if not isinstance(config, SparseIFTConfig):
        raise TypeError(f"config must be a SparseIFTConfig, got {type(config).__name__}.")
    if config.kind == "wide":
        raise ValueError(
            "kind='wide' widens the architecture and cannot be applied in place; use "
            "apply_sparse_ift(model_class, base_config, config) or widen_config(...)."
        )
    _check_untransformed(model)
    targets = find_target_modules(model, config.sparsity_config())
    nonlinearity = resolve_nonlinearity(config.nonlinearity, model.config)
    _transform_(model, config, targets, nonlinearity)
    _record_(model, config, list(targets), nonlinearity)
    logger.info("Sparse-IFT %s (s=%g, %s) replaced %d modules of %s.", config.kind, config.sparsity,
                nonlinearity, len(targets), type(model).__name__)
    return model


def apply_sparse_ift(model_class: Type[nn.Module], base_config, config: SparseIFTConfig) -> nn.Module:
    """Builds a ready-to-train Sparse-IFT model of ``model_class`` from the dense ``base_config``.

    Wide: ``model_class(widen_config(base_config, s))`` made ``s``-sparse by `sparsify_` with random masks
    (transformers' initial weights are kept). Parallel / Factorized / Doped: ``model_class(base_config)``
    transformed by `sparse_ift_`. Neither ``base_config`` nor anything else passed in is modified.

    Args:
        model_class: A transformers model class, e.g. ``GPT2LMHeadModel`` or ``BertForPreTraining``.
        base_config: The dense model's config.
        config: The `SparseIFTConfig`.

    Returns:
        The new model; ``model.config.sparse_ift`` records the transformation.

    Example:
        >>> model = apply_sparse_ift(GPT2LMHeadModel, GPT2Config(), SparseIFTConfig(kind="wide", sparsity=0.5))
        >>> model.config.n_embd
        1092
    """
    if not isinstance(config, SparseIFTConfig):
        raise TypeError(f"config must be a SparseIFTConfig, got {type(config).__name__}.")
    if config.kind != "wide":
        return sparse_ift_(model_class(copy.deepcopy(base_config)), config)
    structure = MaskStructure.from_config(config)
    wide = widen_config(base_config, config.sparsity, multiple_of=structure_multiple(structure))
    model = model_class(wide)
    sparsify_(model, config.sparsity_config(mask_init="random"))
    _record_(model, config, list(sparse_modules(model)), None)
    logger.info("Sparse-IFT wide (s=%g): %s widened to %s.", config.sparsity, type(base_config).__name__,
                {f: getattr(wide, f) for f in WIDTH_FIELDS[wide.model_type][:2]})
    return model


def get_sparse_ift_config(model: nn.Module) -> Optional[SparseIFTConfig]:
    """The `SparseIFTConfig` recorded in ``model.config.sparse_ift``, or ``None`` for other models."""
    record = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if not record:
        return None
    return SparseIFTConfig.from_dict(record["config"])


def rebuild_sparse_ift_(model: nn.Module) -> nn.Module:
    """Re-creates the Sparse-IFT structure recorded in ``model.config.sparse_ift`` on a freshly built model.

    Call it after ``model_class(config)`` and before loading weights. Parallel / Factorized / Doped modules
    are rebuilt on the recorded target names with the recorded non-linearity; Sparse Wide (already the right
    architecture) is sparsified again. Masks are the ones the transformation drew initially (same seed and
    names), so a statically sparse model gets its masks back exactly; masks changed by training are restored
    from the sparse checkpoint files. A model without a record is returned unchanged.

    Args:
        model: A model built from a config that carries ``sparse_ift``.

    Returns:
        The same ``model``.

    Example:
        >>> config = GPT2Config.from_pretrained(path)
        >>> model = rebuild_sparse_ift_(GPT2LMHeadModel(config))
    """
    record = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if not record:
        return model
    if not isinstance(record, dict) or not {"config", "targets"} <= set(record):
        raise ValueError(f"config.{CONFIG_KEY} must be a dict with 'config' and 'targets', got {record!r}.")
    cfg = SparseIFTConfig.from_dict(record["config"])
    _check_untransformed(model)
    if cfg.kind == "wide":
        sparsify_(model, cfg.sparsity_config(mask_init="random"))
        model._hf_sparse_ift_config = cfg
        return model
    names = list(record["targets"])
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"config.{CONFIG_KEY} names modules that {type(model).__name__} lacks: {missing[:5]}.")
    targets = {n: modules[n] for n in names}
    nonlinearity = record.get("nonlinearity") or resolve_nonlinearity(cfg.nonlinearity, model.config)
    _transform_(model, cfg, targets, nonlinearity)
    _record_(model, cfg, names, nonlinearity)
    return model


__all__ = [
    "CONFIG_KEY",
    "SparseDoped",
    "SparseFactorized",
    "SparseParallel",
    "apply_sparse_ift",
    "get_sparse_ift_config",
    "rebuild_sparse_ift_",
    "resolve_nonlinearity",
    "sparse_ift_",
    "widen_config",
]
