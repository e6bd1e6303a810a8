"""Transposable N:M masks: every ``m x m`` tile holds ``n`` active weights per row *and* per column, so the mask
and its transpose are both N:M (the forward and the backward product can both use N:M sparse kernels).

Pure tensor functions, no state (re-exported by `hf_sparse.structure`). Transposable 2:4 masks come from the
NVIDIA sparse-training study (anonymous ICLR 2022 submission), App. E.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import torch

#: Largest ``m`` for transposable N:M: every valid ``m x m`` pattern is enumerated (90 for 2:4, 2,040 for 2:5);
#: beyond 5 the count explodes (``m=6, n=3`` already has 297,200 patterns).
MAX_TRANSPOSABLE_M = 5


@functools.lru_cache(maxsize=None)
def _transposable_patterns_cpu(n: int, m: int) -> torch.Tensor:
    """Every ``m x m`` 0/1 matrix with exactly ``n`` ones per row and per column, as ``[P, m*m]`` bool.

    Built row by row, pruning partial patterns whose column sums already exceed ``n`` (vectorised per row).
    """
    choices = torch.tensor(
        [[j in c for j in range(m)] for c in itertools.combinations(range(m), n)], dtype=torch.bool
    )
    partial = choices.unsqueeze(1)  # [P, rows so far, m]
    for _ in range(m - 1):
        p, c = partial.shape[0], choices.shape[0]
        grown = torch.cat(
            [partial.unsqueeze(1).expand(p, c, -1, m), choices.view(1, c, 1, m).expand(p, c, 1, m)], dim=2
        ).reshape(p * c, -1, m)
        partial = grown[grown.sum(dim=1).le(n).all(dim=1)]
    full = partial[partial.sum(dim=1).eq(n).all(dim=1)]
    return full.reshape(full.shape[0], m * m)


def transposable_patterns(n: int = 2, m: int = 4) -> torch.Tensor:
    """All valid transposable N:M tile patterns, ``[P, m, m]`` bool (90 for 2:4)."""
    if m > MAX_TRANSPOSABLE_M:
        raise ValueError(f"Transposable N:M supports m <= {MAX_TRANSPOSABLE_M}, got m={m}.")
    return _transposable_patterns_cpu(n, m).view(-1, m, m)


def _to_tiles(t: torch.Tensor, m: int) -> torch.Tensor:
    rows, cols = t.shape
    return t.reshape(rows // m, m, cols // m, m).permute(0, 2, 1, 3).reshape(-1, m * m)


def _from_tiles(tiles: torch.Tensor, shape: Sequence[int], m: int) -> torch.Tensor:
    rows, cols = shape
    return tiles.reshape(rows // m, cols // m, m, m).permute(0, 2, 1, 3).reshape(rows, cols)


def transposable_nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Transposable N:M mask (NVIDIA sparse-training paper, App. E.2).

    In every ``m x m`` tile, picks the valid pattern (``n`` active per row and per column) with the largest
    sum of ``|scores|``. All tiles are scored against all patterns with one matrix product, in chunks.

    Args:
        scores: 2-D score tensor whose dimensions are multiples of ``m``.
        n, m: The N:M ratio.

    Returns:
        A boolean mask; the mask and its transpose are both N:M along either dimension.
    """
    patterns = _transposable_patterns_cpu(n, m).to(scores.device)
    pf = patterns.float()
    tiles = _to_tiles(scores.detach().float().abs(), m)
    best = torch.empty(tiles.shape[0], dtype=torch.long, device=scores.device)
    chunk = max(1, (1 << 24) // pf.shape[0])  # bounds the [tiles, patterns] score matrix to ~64 MB
    for start in range(0, tiles.shape[0], chunk):  # loop over memory chunks, not over tiles
        best[start : start + chunk] = (tiles[start : start + chunk] @ pf.T).argmax(dim=1)
    return _from_tiles(patterns[best], scores.shape, m)
