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


def pattern_densities(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    pinned: Mapping[str, float],
    distribution: str = "uniform",
) -> Dict[str, float]:
    """Per-layer densities when some layers are pinned to their own density (``SparsityConfig.sparsity_pattern``).

    The rule: pinned layers get exactly their pinned density. With ``"uniform"`` every other layer keeps
    ``density`` (peft's ``rank_pattern`` convention: the pattern overrides, nothing else moves, so the overall
    density changes). With ``"erk"`` the overall budget ``density * total`` is kept: the pinned layers take their
    active weights first and ERK shares what is left among the other layers, so pinning a layer denser than
    ``density`` makes the rest sparser and pinning it sparser makes the rest denser. When the pinned layers alone
    hold more than the budget, or leave more than the other layers can hold, this raises ``ValueError`` with the
    numbers.

    Args:
        shapes: Weight shape per layer name.
        density: Overall target density in [0, 1].
        pinned: Density of the pinned layers, by name (a subset of ``shapes``).
        distribution: ``"uniform"`` or ``"erk"``.

    Returns:
        Density per layer name, each in [0, 1].

    Example:
        >>> d = pattern_densities({"a": (10, 10), "b": (10, 10)}, 0.3, {"a": 0.5}, "erk")
        >>> round(d["b"], 6)
        0.1
    """
    unknown = sorted(set(pinned) - set(shapes))
    if unknown:
        raise ValueError(f"Pinned layers {unknown} are not among the layers {sorted(shapes)[:5]}...")
    rest = {name: shape for name, shape in shapes.items() if name not in pinned}
    if distribution == "uniform":
        out = uniform_densities(rest, density)
    elif distribution == "erk":
        numel = {name: math.prod(shape) for name, shape in shapes.items()}
        total = sum(numel.values())
        pinned_active = sum(float(pinned[n]) * numel[n] for n in pinned)
        rest_numel = total - sum(numel[n] for n in pinned)
        budget = density * total - pinned_active
        rest_density = budget / rest_numel if rest_numel else 0.0
        if rest_numel and not -1e-9 <= rest_density <= 1.0 + 1e-9:
            raise ValueError(
                f"sparsity_pattern with distribution='erk' cannot keep the overall density {density:.6g}: the pinned "
                f"layers hold {pinned_active:.0f} of {total} weights (budget {density * total:.0f}), so the other "
                f"{rest_numel} weights would need density {rest_density:.6g}, outside [0, 1]. Change the pinned "
                "sparsities or the overall sparsity, or use distribution='uniform'."
            )
        out = erk_densities(rest, min(1.0, max(0.0, rest_density))) if rest else {}
    else:
        raise ValueError(f"Unknown distribution {distribution!r}; choose 'uniform' or 'erk'.")
    out.update({name: float(pinned[name]) for name in pinned})
    return {name: out[name] for name in shapes}
