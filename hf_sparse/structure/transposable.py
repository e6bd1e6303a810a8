"""Transposable N:M masks: every ``m x m`` tile holds ``n`` active weights per row *and* per column, so the mask
and its transpose are both N:M (the forward and the backward product can both use N:M sparse kernels).

Pure tensor functions, no state (re-exported by `hf_sparse.structure`). Transposable 2:4 masks come from the
NVIDIA sparse-training study (anonymous ICLR 2022 submission), App. E.

Two exact solvers pick, in every tile, the valid pattern with the largest sum of ``|scores|``:

- ``m <= MAX_TRANSPOSABLE_M``: every valid pattern is enumerated once and all tiles are scored against all
  patterns with one matrix product (90 patterns for 2:4).
- larger ``m`` (4:8, 2:8, 1:8 as in the Sparse-IFT paper, Saxena et al. 2023, arXiv 2303.11525): a tile is a
  max-weight degree-constrained bipartite subgraph (rows and columns as the two sides, every node of degree
  exactly ``n``), solved as a min-cost flow by successive shortest paths, as Hubara et al. 2021
  (arXiv 2102.08124) suggest. The ``n * m`` unit augmentations run in lockstep over all tiles; each shortest
  path is a Bellman-Ford search vectorised over tiles. Successive shortest paths keep every intermediate flow of
  minimum cost, so the final one is optimal (up to float64 rounding), not an approximation.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import torch

#: Largest ``m`` solved by enumerating every valid ``m x m`` pattern (90 for 2:4, 2,040 for 2:5); beyond 5 the
#: count explodes (``m=6, n=3`` already has 297,200 patterns) and the min-cost-flow solver takes over.
MAX_TRANSPOSABLE_M = 5
METHODS = ("auto", "patterns", "flow")


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


def transposable_nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4, method: str = "auto") -> torch.Tensor:
    """Transposable N:M mask (NVIDIA sparse-training paper, App. E.2), for any ``0 < n < m``.

    In every ``m x m`` tile, picks the valid pattern (``n`` active per row and per column) with the largest
    sum of ``|scores|``; both solvers are exact (see the module docstring).

    Args:
        scores: 2-D score tensor whose dimensions are multiples of ``m``.
        n, m: The N:M ratio.
        method: ``"patterns"`` (enumerate every pattern, ``m <= MAX_TRANSPOSABLE_M``), ``"flow"`` (min-cost
            flow, any ``m``) or ``"auto"``: patterns up to ``MAX_TRANSPOSABLE_M``, flow beyond.

    Returns:
        A boolean mask; the mask and its transpose are both N:M along either dimension.

    Example:
        >>> mask = transposable_nm_mask(torch.randn(16, 16), 4, 8)
        >>> bool(mask.view(2, 8, 2, 8).sum(dim=3).eq(4).all() and mask.view(2, 8, 2, 8).sum(dim=1).eq(4).all())
        True
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; choose one of {', '.join(map(repr, METHODS))}.")
    if not 0 < n < m:
        raise ValueError(f"Transposable N:M needs 0 < n < m, got n={n}, m={m}.")
    if method == "patterns" and m > MAX_TRANSPOSABLE_M:
        raise ValueError(f"method='patterns' enumerates patterns for m <= {MAX_TRANSPOSABLE_M} only, got m={m}; "
                         "use method='flow' or 'auto'.")
    if method == "flow" or (method == "auto" and m > MAX_TRANSPOSABLE_M):
        tiles = _to_tiles(scores.detach().abs(), m).view(-1, m, m)
        return _from_tiles(transposable_flow_tiles(tiles, n).reshape(-1, m * m), scores.shape, m)
    patterns = _transposable_patterns_cpu(n, m).to(scores.device)
    pf = patterns.float()
    tiles = _to_tiles(scores.detach().float().abs(), m)
    best = torch.empty(tiles.shape[0], dtype=torch.long, device=scores.device)
    chunk = max(1, (1 << 24) // pf.shape[0])  # bounds the [tiles, patterns] score matrix to ~64 MB
    for start in range(0, tiles.shape[0], chunk):  # loop over memory chunks, not over tiles
        best[start : start + chunk] = (tiles[start : start + chunk] @ pf.T).argmax(dim=1)
    return _from_tiles(patterns[best], scores.shape, m)


#: Tiles solved together by the flow solver: bounds its ``[tiles, m, m]`` float64 work tensors (~32 MB at m=8).
_FLOW_CHUNK_ELEMENTS = 1 << 22


def transposable_flow_tiles(tiles: torch.Tensor, n: int) -> torch.Tensor:
    """Exact max-weight transposable N:M pattern of every tile, by min-cost flow (Hubara et al. 2021, arXiv 2102.08124).

    Args:
        tiles: ``[T, m, m]`` non-negative scores.
        n: Active weights per row and per column of a tile (``0 < n < m``).

    Returns:
        ``[T, m, m]`` bool with exactly ``n`` ``True`` in every row and every column of every tile, maximising the
        kept sum of ``tiles``.

    Example:
        >>> transposable_flow_tiles(torch.tensor([[[1.0, 5.0], [4.0, 2.0]]]), 1)
        tensor([[[False,  True],
                 [ True, False]]])
    """
    t, m, m2 = tiles.shape
    if m != m2 or not 0 < n < m:
        raise ValueError(f"Need [T, m, m] tiles and 0 < n < m, got shape {tuple(tiles.shape)} and n={n}.")
    w = tiles.detach().to(torch.float64)
    # Keeping n per row / column is dropping m - n per row / column with the smallest sum: solve the smaller side.
    if n > m - n:
        return ~transposable_flow_tiles(w.amax() - w, m - n)
    out = torch.empty(tiles.shape, dtype=torch.bool, device=tiles.device)
    chunk = max(1, _FLOW_CHUNK_ELEMENTS // (m * m))
    for start in range(0, t, chunk):  # memory chunks; the tiles inside one are solved together
        out[start : start + chunk] = _flow_chunk(w[start : start + chunk], n)
    return out


def _flow_chunk(w: torch.Tensor, n: int) -> torch.Tensor:
    """Successive shortest paths on every tile of ``w`` ``[T, m, m]`` at once (see `transposable_flow_tiles`).

    Network per tile: source -> row i (capacity n) -> column j (capacity 1, cost -w[i, j]) -> sink (capacity n).
    Each of the ``n * m`` rounds pushes one unit along a cheapest source-sink path of the residual network, found
    by Bellman-Ford over the bipartite residual graph (forward edges: unselected (i, j) at cost -w; backward edges:
    selected (i, j) at cost +w). Successive shortest paths never create a negative cycle, so every intermediate
    selection is the best one of its size and the last is optimal. Only the tiles whose distances changed in a
    Bellman-Ford pass take part in the next one (most settle after the first).
    """
    t, m, _ = w.shape
    dev, inf = w.device, float("inf")
    # Relaxations must improve by more than float64 noise, so near-zero cycles cannot enter the predecessor tree.
    tol = 1e-12 * (float(w.abs().max()) + 1.0) * m
    sel = torch.zeros((t, m * m), dtype=torch.bool, device=dev)  # (i, j) at i * m + j
    fwd = (-w).transpose(1, 2).contiguous()  # fwd[t, j, i]: cost of row i -> column j while (i, j) is unselected
    back = torch.full_like(w, inf)  # back[t, i, j]: cost of column j -> row i while (i, j) is selected
    flat_w, flat_fwd, flat_back = w.reshape(t, -1), fwd.view(t, -1), back.view(t, -1)
    row_deg = torch.zeros((t, m), dtype=torch.long, device=dev)
    col_deg = torch.zeros((t, m), dtype=torch.long, device=dev)
    tile = torch.arange(t, device=dev)
    for _ in range(n * m):
        dist_r = torch.where(row_deg < n, 0.0, inf).to(w.dtype)
        pred_r = torch.full((t, m), -1, dtype=torch.long, device=dev)  # column a row was reached from; -1: source
        # First pass over every tile: columns reached straight from the rows with room left.
        dist_c, pred_c = (dist_r.unsqueeze(1) + fwd).min(dim=2)  # pred_c: row a column was reached from
        act = tile
        for _ in range(m):  # a shortest path visits each of the m rows at most once
            dist_r, pred_r, act = _relax(dist_c, back, dist_r, pred_r, act, tol)
            if act.numel() == 0:
                break
            dist_c, pred_c, act = _relax(dist_r, fwd, dist_c, pred_c, act, tol)
            if act.numel() == 0:
                break
        end = torch.where(col_deg < n, dist_c, inf).argmin(dim=1)
        col_deg[tile, end] += 1
        on_t, col = tile, end
        for _ in range(m):  # walk the path back: forward edges become selected, backward edges unselected
            row = pred_c[on_t, col]
            _flip(sel, flat_fwd, flat_back, flat_w, on_t, row, col, m, on=True)
            prev = pred_r[on_t, row]
            starts = prev < 0
            row_deg[on_t[starts], row[starts]] += 1
            walking = ~starts
            on_t, row, prev = on_t[walking], row[walking], prev[walking]
            if on_t.numel() == 0:
                break
            _flip(sel, flat_fwd, flat_back, flat_w, on_t, row, prev, m, on=False)
            col = prev
    sel = sel.view(t, m, m)
    if not (bool(sel.sum(dim=1).eq(n).all()) and bool(sel.sum(dim=2).eq(n).all())):
        raise RuntimeError("Transposable N:M flow solver lost a row or column count; please report this.")
    return sel


def _relax(dist_from, cost, dist_to, pred_to, act, tol):
    """One Bellman-Ford pass from one side of the tiles ``act`` to the other; returns the tiles that improved.

    Indexing is skipped while every tile is still active (the first pass), which would only copy the tensors.
    """
    full = act.numel() == dist_to.shape[0]
    best, arg = (dist_from.unsqueeze(1) + cost if full else dist_from[act].unsqueeze(1) + cost[act]).min(dim=2)
    old = dist_to if full else dist_to[act]
    better = best < old - tol
    if full:
        dist_to, pred_to = torch.where(better, best, old), torch.where(better, arg, pred_to)
    else:
        dist_to[act] = torch.where(better, best, old)
        pred_to[act] = torch.where(better, arg, pred_to[act])
    return dist_to, pred_to, act[better.any(dim=1)]


def _flip(sel, fwd, back, w, tiles, row, col, m, on: bool) -> None:
    """Selects (``on``) or unselects edge ``(row, col)`` in each of ``tiles``, keeping both cost tables in step."""
    ij, ji = row * m + col, col * m + row
    sel[tiles, ij] = on
    fwd[tiles, ji] = float("inf") if on else -w[tiles, ij]
    back[tiles, ij] = w[tiles, ij] if on else float("inf")
