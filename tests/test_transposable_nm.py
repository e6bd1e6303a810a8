"""Transposable N:M beyond m = 5: the exact min-cost-flow solver (Hubara et al. 2021, arXiv 2102.08124)."""

import itertools

import pytest
import torch

from hf_sparse.structure import MaskStructure, make_generator, random_mask, select_mask, transposable_nm_mask
from hf_sparse.structure.transposable import transposable_flow_tiles


def _tiles(mask: torch.Tensor, m: int) -> torch.Tensor:
    rows, cols = mask.shape
    return mask.reshape(rows // m, m, cols // m, m).permute(0, 2, 1, 3).reshape(-1, m, m)


def _assert_transposable(mask: torch.Tensor, n: int, m: int) -> None:
    tiles = _tiles(mask, m)
    assert tiles.sum(dim=1).eq(n).all() and tiles.sum(dim=2).eq(n).all()
    assert int(mask.sum()) == mask.numel() * n // m


def _best_by_search(w: torch.Tensor, n: int) -> float:
    """Exact optimum of one tile by depth-first search over rows with column budgets (independent of the flow)."""
    m = w.shape[0]
    rows = [list(itertools.combinations(range(m), n)) for _ in range(m)]
    vals = w.tolist()
    best = [-1.0]
    row_max = [sum(sorted(r, reverse=True)[:n]) for r in vals]  # optimistic bound: rows ignoring column budgets
    tail = [sum(row_max[i:]) for i in range(m + 1)]

    def go(i, left, acc):
        if acc + tail[i] <= best[0]:
            return
        if i == m:
            best[0] = acc
            return
        for c in rows[i]:
            if all(left[j] for j in c):
                for j in c:
                    left[j] -= 1
                go(i + 1, left, acc + sum(vals[i][j] for j in c))
                for j in c:
                    left[j] += 1

    go(0, [n] * m, 0.0)
    return best[0]


@pytest.mark.parametrize("n, m", [(1, 3), (2, 4), (3, 4), (2, 5), (3, 5)])
def test_flow_equals_pattern_enumeration(n, m):
    torch.manual_seed(n * 10 + m)
    w = torch.randn(6 * m, 8 * m)
    flow = transposable_nm_mask(w, n, m, method="flow")
    enum = transposable_nm_mask(w, n, m, method="patterns")
    _assert_transposable(flow, n, m)
    kept_flow = (_tiles(w.abs() * flow, m)).sum(dim=(1, 2))
    kept_enum = (_tiles(w.abs() * enum, m)).sum(dim=(1, 2))
    torch.testing.assert_close(kept_flow, kept_enum)  # per tile: both are optimal


@pytest.mark.parametrize("n", [1, 2])
def test_flow_8x8_is_optimal_against_search(n):
    torch.manual_seed(n)
    tiles = torch.rand(3, 8, 8)
    sel = transposable_flow_tiles(tiles, n)
    assert sel.sum(dim=1).eq(n).all() and sel.sum(dim=2).eq(n).all()
    for tile, s in zip(tiles, sel):
        assert float((tile * s).sum()) == pytest.approx(_best_by_search(tile.double(), n), rel=1e-6)


@pytest.mark.parametrize("n", [2, 4, 6])
def test_flow_8x8_recovers_a_planted_optimum(n):
    # Large values (>= 10) on a random valid n:8 pattern, noise below 0.1 elsewhere: every other pattern drops a
    # large value and can win back less than 64 * 0.1, so the planted pattern is the unique optimum.
    g = torch.Generator().manual_seed(n)
    planted = torch.zeros(16, 8, 8, dtype=torch.bool)
    for k in range(16):  # circulant n-regular pattern under random row / column permutations
        base = torch.tensor([[(j - i) % 8 < n for j in range(8)] for i in range(8)])
        planted[k] = base[torch.randperm(8, generator=g)][:, torch.randperm(8, generator=g)]
    tiles = torch.rand(16, 8, 8, generator=g) * 0.1 + planted * (10 + torch.rand(16, 8, 8, generator=g))
    assert torch.equal(transposable_flow_tiles(tiles, n), planted)


def test_hand_computed_tile_beats_row_greedy():
    # 1:3 (a permutation): rows 0 and 1 both want column 0 (9, 8.5). The optimum is (0,0), (1,2), (2,1):
    # 9 + 8 + 7 = 24; the next best permutations give 8.5 + 7 + 0 = 15.5 and 9 + 1 + 1 = 11.
    w = torch.tensor([[9.0, 1.0, 0.0], [8.5, 1.0, 8.0], [0.0, 7.0, 1.0]])
    sel = transposable_flow_tiles(w.unsqueeze(0), 1)[0]
    assert sel.tolist() == [[True, False, False], [False, False, True], [False, True, False]]


def test_select_and_random_masks_for_4_8_and_1_8():
    w = torch.randn(16, 32)
    for n in (4, 2, 1):
        s = MaskStructure("nm_transposable", n=n, m=8)
        mask = select_mask(w, s, density=0.0, input_dim=1)
        _assert_transposable(mask, n, 8)
        # The transpose is N:M too (the Conv1D layout and the backward product).
        _assert_transposable(mask.T.contiguous(), n, 8)
        r1 = random_mask((16, 32), s, 0.0, 0, make_generator(3, "mask", "x"))
        r2 = random_mask((16, 32), s, 0.0, 0, make_generator(3, "mask", "x"))
        _assert_transposable(r1, n, 8)
        assert torch.equal(r1, r2)  # seeded


def test_method_errors():
    with pytest.raises(ValueError, match="method"):
        transposable_nm_mask(torch.randn(8, 8), 4, 8, method="greedy")
    with pytest.raises(ValueError, match="m <= 5"):
        transposable_nm_mask(torch.randn(8, 8), 4, 8, method="patterns")
    with pytest.raises(ValueError, match="0 < n < m"):
        transposable_nm_mask(torch.randn(8, 8), 8, 8)
