"""Which modules of a model are sparse: per-model-type defaults, module groups, and `find_target_modules`.

One table (`MODEL_FAMILIES`) names, for every supported model family, the transformer block and the modules in
it by group: ``qkv`` (query / key / value projections), ``attn_out`` (the projection after attention),
``ffn_up`` and ``ffn_down`` (the two feed-forward projections). Target selection (`DEFAULT_TARGET_MODULES`),
FLOP accounting (`hf_sparse.flops`) and the training metrics (`hf_sparse.metrics`) all read it, so they
cannot disagree about what a module is (peft keeps its per-model target maps in one place for the same reason).
"""

from __future__ import annotations

import functools
import re
from typing import Dict, List, Tuple, Union

from torch import nn

from .config import SparsityConfig
from .layers import sparse_class_for

#: The module groups of a transformer block (the Cerebras paper's groups, Singh et al. 2024, App. A / C).
MODULE_GROUPS: Tuple[str, ...] = ("qkv", "attn_out", "ffn_up", "ffn_down")
#: Group of a module that is in none of `MODULE_GROUPS`.
OTHER = "other"

#: Per model family: the regex of one transformer block, and per group the regexes of its modules inside a
#: block. ``targets`` says whether the family's modules are the default targets of `sparsify_` for that
#: ``model_type``; the others (Llama / OPT-style names) only name groups for the metrics of dense models.
MODEL_FAMILIES: Dict[str, Dict] = {
    "bert": {
        "block": r"encoder\.layer\.\d+",
        "groups": {
            "qkv": r"attention\.self\.(query|key|value)",
            "attn_out": r"attention\.output\.dense",
            "ffn_up": r"intermediate\.dense",
            "ffn_down": r"output\.dense",
        },
        "targets": True,
    },
    "gpt2": {
        "block": r"h\.\d+",
        "groups": {"qkv": r"attn\.c_attn", "attn_out": r"attn\.c_proj", "ffn_up": r"mlp\.c_fc", "ffn_down": r"mlp\.c_proj"},
        "targets": True,
    },
    "decoder": {
        "block": r"layers\.\d+",
        "groups": {
            "qkv": r"(self_attn|attn)\.(q_proj|k_proj|v_proj|qkv_proj)",
            "attn_out": r"(self_attn|attn)\.(o_proj|out_proj)",
            "ffn_up": r"mlp\.(up_proj|gate_proj|fc1)",
            "ffn_down": r"mlp\.(down_proj|fc2)",
        },
        "targets": False,
    },
}
MODEL_FAMILIES["roberta"] = MODEL_FAMILIES["bert"]


def _family_targets(family: Dict) -> str:
    inner = "|".join(family["groups"][g] for g in MODULE_GROUPS)
    return rf"(.*\.)?{family['block']}\.({inner})"


# Default targets per `config.model_type`: every Linear of the encoder / decoder blocks. Embeddings, the tied
# MLM / LM heads, the pooler and task heads stay dense (DynSparse paper: "non-embedding weights").
DEFAULT_TARGET_MODULES: Dict[str, str] = {
    model_type: _family_targets(family) for model_type, family in MODEL_FAMILIES.items() if family["targets"]
}
ALL_LINEAR = "all-linear"


@functools.lru_cache(maxsize=2)
def _group_patterns(include_submodules: bool) -> Tuple[Tuple[str, "re.Pattern"], ...]:
    # A module belongs to a group when it sits directly inside a numbered block (``...<digits>.<suffix>``),
    # whatever the block is called; this keeps BERT's FFN-down ``layer.N.output.dense`` apart from its
    # attention output ``layer.N.attention.output.dense``.
    tail = r"(\..+)?" if include_submodules else ""
    out = []
    for group in MODULE_GROUPS:
        alternatives = sorted({fam["groups"][group] for fam in MODEL_FAMILIES.values()})
        out.append((group, re.compile(rf"(.*\.)?\d+\.({'|'.join(alternatives)}){tail}")))
    return tuple(out)


def module_group(name: str, include_submodules: bool = False) -> str:
    """The module group (`MODULE_GROUPS`) of a qualified module name, or ``"other"``.

    Args:
        name: The qualified module name (``model.named_modules()``).
        include_submodules: Also place the sub-modules of a grouped module in its group (e.g. the branches of a
            Sparse-IFT module that replaced ``h.0.attn.c_attn``).

    Returns:
        ``"qkv"``, ``"attn_out"``, ``"ffn_up"``, ``"ffn_down"`` or ``"other"``.

    Example:
        >>> module_group("bert.encoder.layer.0.intermediate.dense")
        'ffn_up'
        >>> module_group("transformer.h.3.attn.c_attn.branches.1", include_submodules=True)
        'qkv'
    """
    for group, pattern in _group_patterns(bool(include_submodules)):
        if pattern.fullmatch(name):
            return group
    return OTHER


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
