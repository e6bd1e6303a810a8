"""A per-module summary of a sparse model (`sparsity_report`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import re
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..patching import get_sparsity_config, sparse_modules


@dataclass
class LayerSparsity:
    """One sparse module's line of the report."""

    name: str
    shape: tuple
    layout: str  # "linear [out, in]" or "conv1d [in, out]"
    structure: str
    target_density: float
    density: float  # active weights / numel
    active: int
    numel: int
    nonzero: int  # non-zero weights: <= active (an active weight may be exactly zero)
    pattern: Optional[str] = None  # the `sparsity_pattern` regex that pinned this module's sparsity, if any


@dataclass
class SparsityReport:
    """Per-module and overall sparsity of a model. ``str(report)`` is a fixed-width table."""

    layers: List[LayerSparsity] = field(default_factory=list)

    @property
    def total_active(self) -> int:
        return sum(layer.active for layer in self.layers)

    @property
    def total_numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def density(self) -> float:
        """Overall density over the sparse modules."""
        return self.total_active / self.total_numel if self.total_numel else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def to_dict(self) -> Dict[str, Any]:
        return {
            "layers": [asdict(layer) for layer in self.layers],
            "total_active": self.total_active,
            "total_numel": self.total_numel,
            "density": self.density,
        }

    def __str__(self) -> str:
        width = max([len("module")] + [len(layer.name) for layer in self.layers])
        head = f"{'module':<{width}}  {'shape':>12}  {'structure':<18}  {'target':>7}  {'actual':>7}  {'active':>10}"
        pinned = any(layer.pattern is not None for layer in self.layers)
        if pinned:  # the column only appears when a sparsity_pattern pinned some module
            head += "  pattern"
        lines = [head, "-" * len(head)]
        for layer in self.layers:
            shape = "x".join(map(str, layer.shape))
            lines.append(
                f"{layer.name:<{width}}  {shape:>12}  {layer.structure:<18}  {layer.target_density:7.4f}  "
                f"{layer.density:7.4f}  {layer.active:>10}" + (f"  {layer.pattern or '-'}" if pinned else "")
            )
        lines.append("-" * len(head))
        lines.append(
            f"{len(self.layers)} sparse modules: {self.total_active} / {self.total_numel} weights active "
            f"(density {self.density:.4f}, sparsity {self.sparsity:.4f})"
        )
        return "\n".join(lines)


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """Per sparse module: name, shape, layout, structure, target and actual density, active and non-zero counts.

    Modules whose sparsity a ``sparsity_pattern`` entry of the model's config pins carry that regex (``pattern``).

    Args:
        model: A sparsified model.

    Returns:
        A `SparsityReport`; print it for a table, or use ``.to_dict()`` for logging.

    Example:
        >>> print(sparsity_report(model))
    """
    found = sparse_modules(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no sparse modules; call sparsify_ first.")
    config = get_sparsity_config(model)
    patterns = dict(getattr(config, "sparsity_pattern", None) or {})
    layers = []
    for name, m in found.items():
        active = int(m.weight_mask.sum())
        pattern = next((regex for regex in patterns if re.fullmatch(regex, name)), None)
        layers.append(
            LayerSparsity(
                name=name,
                shape=tuple(m.weight.shape),
                layout="linear [out, in]" if m.input_dim == 1 else "conv1d [in, out]",
                structure=m.structure.describe(),
                target_density=m.target_density,
                density=active / m.weight_mask.numel(),
                active=active,
                numel=m.weight_mask.numel(),
                nonzero=int(torch.count_nonzero(m.weight)),
                pattern=pattern,
            )
        )
    return SparsityReport(layers)
