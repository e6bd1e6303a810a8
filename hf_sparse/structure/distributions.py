"""Per-layer density distributions: how an overall density is shared between layers.

Pure functions over shapes; part of the structure layer (no modules, no state).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence


def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float) -> Dict[str, float]:
    """Every layer gets the same density (the DynSparse paper's choice for BERT).

    Example:
        >>> uniform_densities({"a": (4, 4), "b": (8, 2)}, 0.25)
        {'a': 0.25, 'b': 0.25}
    """
    return {name: float(density) for name in shapes}


def erk_densities(
    shapes: Mapping[str, Sequence[int]], density: float, power_scale: float = 1.0
) -> Dict[str, float]:
    """Erdos-Renyi-Kernel densities: layer ``l`` gets density ``eps * (sum(shape) / prod(shape)) ** power_scale``.

    ``eps`` is solved so the total number of active weights equals ``density * total``. Layers whose density
    would exceed 1 are made dense and ``eps`` is solved again for the rest (Evci et al., 2020), so the overall
    density is preserved exactly up to rounding to whole weights.

    Args:
        shapes: Weight shape per layer name.
        density: Overall target density in [0, 1].
        power_scale: Exponent on the Erdos-Renyi factor (1.0 is ERK; 0.0 gives uniform).

    Returns:
        Density per layer name, each in [0, 1].

    Example:
        >>> d = erk_densities({"small": (16, 16), "big": (256, 256)}, 0.1)
        >>> d["small"] > d["big"]
        True
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density={density!r} must be in [0, 1].")
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: (sum(shape) / numel[name]) ** power_scale for name, shape in shapes.items()}
    dense: set = set()
    while True:
        # Active weights the sparse layers must hold once the dense layers have taken theirs.
        budget = density * sum(numel.values()) - sum(numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        eps = budget / divisor if divisor > 0 else 0.0
        too_dense = {n for n in shapes if n not in dense and eps * raw[n] > 1.0}
        if not too_dense:
            break
        dense |= too_dense
    return {n: 1.0 if n in dense else max(0.0, eps * raw[n]) for n in shapes}
