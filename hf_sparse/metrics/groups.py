"""Which layers the training metrics measure, and their module groups.

The groups come from the one table in `hf_sparse.targets` (shared with target selection and FLOP accounting);
a metric may pass its own ``patterns`` (group -> regex, matched in full) instead.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional

from torch import nn

from ..patching import sparse_modules
from ..targets import MODULE_GROUPS, OTHER
from ..targets import module_group as _table_group

__all__ = ["MODULE_GROUPS", "OTHER", "measured_modules", "module_group"]


def module_group(name: str, patterns: Optional[Mapping[str, str]] = None) -> str:
    """The module group of a qualified module name (``"other"`` when none matches).

    Args:
        name: Qualified module name.
        patterns: Optional ``{group: regex}`` matched in full, in order; default: the `hf_sparse.targets` table.

    Returns:
        The group name.

    Example:
        >>> module_group("bert.encoder.layer.0.intermediate.dense")
        'ffn_up'
    """
    if not patterns:
        return _table_group(name)
    for group, pattern in patterns.items():
        if re.fullmatch(pattern, name):
            return group
    return OTHER


def measured_modules(model: nn.Module, patterns: Optional[Mapping[str, str]] = None) -> Dict[str, nn.Module]:
    """Layers whose weights the metrics measure: the sparse layers, or (dense model) every ``nn.Linear`` /
    GPT-2 ``Conv1D`` whose name falls in a module group. Reparametrised layers count as their plain class.

    Args:
        model: The model.
        patterns: Optional group regexes (see `module_group`).

    Returns:
        The layers by qualified name.
    """
    from transformers.pytorch_utils import Conv1D

    found = sparse_modules(model)
    if found:
        return dict(found)
    return {
        name: m for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, Conv1D)) and module_group(name, patterns) != OTHER
    }
