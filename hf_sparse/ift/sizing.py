"""Iso-FLOP sizing of the Sparse-IFT members (Sparse-IFT paper, Sec. 2.4 and Table 1), as pure functions.

A dense layer ``D_in -> D_out`` costs ``B * D_in * D_out`` multiply-accumulates. Each member spends the same
budget differently, parameterised by the sparsity ``s`` alone:

- Sparse Wide: ``k_sw = sqrt(1 / (1 - s))`` wider inputs and outputs, ``s``-sparse.
- Sparse Parallel: ``k_sp = 1 / (1 - s)`` parallel ``s``-sparse branches of the original shape.
- Sparse Factorized: ``U (D_in x d)``, ``V (d x D_out)``, both ``s``-sparse, ``d = D_in D_out / ((D_in + D_out)(1 - s))``.
- Sparse Doped: dense rank-``d`` ``U V`` with ``d = s D_in D_out / (D_in + D_out)`` plus an ``s``-sparse
  ``D_in x D_out`` matrix.

Sizes are rounded to integers (to a multiple of ``multiple_of`` where a mask structure needs it); everything
else in the package takes its sizes from here so the modules, the FLOP counter and the search-space
cardinality always agree.
"""

from __future__ import annotations

import math

from ..config import IFT_KINDS, parallel_branches

__all__ = [
    "active_macs",
    "doped_rank",
    "factorized_rank",
    "parallel_branches",
    "round_to_multiple",
    "search_space_cardinality",
    "wide_factor",
]


def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} must be a number in [0, 1).")
    return float(sparsity)


def wide_factor(sparsity: float) -> float:
    """Sparse Wide widening factor ``k_sw = sqrt(1 / (1 - s))`` (1 at ``s = 0``).

    Example:
        >>> wide_factor(0.75)
        2.0
    """
    return math.sqrt(1.0 / (1.0 - _check_sparsity(sparsity)))


def round_to_multiple(value: float, multiple: int = 1, mode: str = "nearest") -> int:
    """Rounds ``value`` to a positive multiple of ``multiple``.

    Args:
        value: The real-valued size.
        multiple: The granularity (1 for plain integers).
        mode: ``"nearest"`` or ``"up"``. A tiny tolerance absorbs floating-point noise, so
            ``768 * wide_factor(0.75)`` rounds up to exactly 1536.

    Returns:
        The rounded size, at least ``multiple``.
    """
    if multiple < 1:
        raise ValueError(f"multiple={multiple!r} must be a positive integer.")
    q = value / multiple
    units = math.ceil(q - 1e-9) if mode == "up" else math.floor(q + 0.5)
    return max(int(units), 1) * multiple


def factorized_rank(d_in: int, d_out: int, sparsity: float, multiple_of: int = 1) -> int:
    """Inner size ``d_sf = D_in D_out / ((D_in + D_out)(1 - s))`` of Sparse Factorized, rounded to the nearest
    multiple of ``multiple_of``.

    Example:
        >>> factorized_rank(768, 768, 0.5)
        768
    """
    s = _check_sparsity(sparsity)
    return round_to_multiple(d_in * d_out / ((d_in + d_out) * (1.0 - s)), multiple_of)


def doped_rank(d_in: int, d_out: int, sparsity: float) -> int:
    """Rank ``d_sd = s D_in D_out / (D_in + D_out)`` of the dense low-rank part of Sparse Doped (0 at ``s = 0``).

    Example:
        >>> doped_rank(768, 3072, 0.5)
        307
    """
    s = _check_sparsity(sparsity)
    return int(math.floor(s * d_in * d_out / (d_in + d_out) + 0.5))


def search_space_cardinality(kind: str, d_in: int, d_out: int, sparsity: float, multiple_of: int = 1) -> int:
    """Number of weights the mask search can explore for one ``D_in x D_out`` layer (Sparse-IFT paper, Table 1).

    Args:
        kind: ``"dense"`` (the untransformed layer, ``D_in D_out``), ``"wide"``, ``"parallel"``,
            ``"factorized"`` or ``"doped"``.
        d_in, d_out: The dense layer's input and output sizes.
        sparsity: The transformation's sparsity ``s``.
        multiple_of: Granularity of the rounded sizes (as used when building the modules).

    Returns:
        ``k_sw^2 D_in D_out`` (wide, with the rounded widened sizes), ``k_sp D_in D_out`` (parallel),
        ``d_sf (D_in + D_out)`` (factorized), ``D_in D_out`` (doped and dense).

    Example:
        >>> search_space_cardinality("parallel", 768, 768, 0.75)
        2359296
    """
    if kind == "dense" or kind == "doped":
        _check_sparsity(sparsity)
        return d_in * d_out
    if kind == "wide":
        k = wide_factor(sparsity)
        return round_to_multiple(d_in * k, multiple_of) * round_to_multiple(d_out * k, multiple_of)
    if kind == "parallel":
        return parallel_branches(_check_sparsity(sparsity)) * d_in * d_out
    if kind == "factorized":
        return factorized_rank(d_in, d_out, sparsity, multiple_of) * (d_in + d_out)
    raise ValueError(f"kind={kind!r} is not supported; choose 'dense' or one of {', '.join(map(repr, IFT_KINDS))}.")


def _active(numel: int, sparsity: float) -> int:
    # The exact count `structure.num_active` gives an unstructured mask of this density.
    return int(round((1.0 - sparsity) * numel))


def active_macs(kind: str, d_in: int, d_out: int, sparsity: float, multiple_of: int = 1) -> int:
    """Multiply-accumulates per token (2 FLOPs each) of one ``D_in -> D_out`` layer after a transformation.

    The iso-FLOP property says this is ``D_in * D_out`` up to rounding. Counts are the exact active counts of
    unstructured masks (``round((1 - s) * numel)`` per sparse matrix) with the sizes the modules are built
    with, so a built module's FLOPs (`hf_sparse.flops.count`) equal ``2 * tokens * active_macs(...)``. For
    ``"wide"`` both sizes are widened to the nearest multiple here; whole models widen via `widen_config`.

    Args:
        kind: ``"dense"``, ``"wide"``, ``"parallel"``, ``"factorized"`` or ``"doped"``.
        d_in, d_out: The dense layer's sizes. sparsity: ``s``. multiple_of: Size granularity.

    Returns:
        Active multiply-accumulates per token.

    Example:
        >>> active_macs("parallel", 768, 768, 0.75) == 768 * 768
        True
    """
    s = _check_sparsity(sparsity)
    if kind == "dense":
        return d_in * d_out
    if kind == "wide":
        k = wide_factor(s)
        return _active(round_to_multiple(d_in * k, multiple_of) * round_to_multiple(d_out * k, multiple_of), s)
    if kind == "parallel":
        return parallel_branches(s) * _active(d_in * d_out, s)
    if kind == "factorized":
        d = factorized_rank(d_in, d_out, s, multiple_of)
        return _active(d_in * d, s) + _active(d * d_out, s)
    if kind == "doped":
        return doped_rank(d_in, d_out, s) * (d_in + d_out) + _active(d_in * d_out, s)
    raise ValueError(f"kind={kind!r} is not supported; choose 'dense' or one of {', '.join(map(repr, IFT_KINDS))}.")
