import itertools
import math
import os
import subprocess
import sys

import pytest
import torch

from hf_sparse.structure import erk_densities, uniform_densities
from hf_sparse.structure import (
    MaskStructure,
    block_scores,
    check_fits,
    derive_seed,
    expand_granules,
    make_generator,
    nm_mask,
    num_active,
    random_mask,
    reduce_to_granules,
    select_mask,
    topk_granules,
    transposable_nm_mask,
    transposable_patterns,
)

UNSTRUCTURED = MaskStructure()
B = torch.tensor


def test_unstructured_hand_computed():
    w = B([[0.1, -0.9, 0.3, 0.05], [0.5, -0.2, -0.7, 0.0]])
    mask = select_mask(w, UNSTRUCTURED, 0.5, input_dim=1)
    assert mask.tolist() == [[False, True, True, False], [True, False, True, False]]
    # Same result whichever dimension is the input: unstructured ignores the layout.
    assert torch.equal(select_mask(w.T, UNSTRUCTURED, 0.5, input_dim=0), mask.T)


@pytest.mark.parametrize("density", [0.0, 0.1, 0.33, 0.5, 0.9, 1.0])
def test_unstructured_exact_count(density):
    w = torch.randn(37, 53)
    mask = select_mask(w, UNSTRUCTURED, density, input_dim=1)
    assert int(mask.sum()) == round(density * w.numel()) == num_active(UNSTRUCTURED, w.shape, density)
    if 0 < density < 1:  # every kept weight is at least as large as every dropped one
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_any_score_tensor_can_rank():
    w = torch.ones(2, 2)
    score = B([[0.0, 5.0], [1.0, 2.0]])
    assert select_mask(score, UNSTRUCTURED, 0.5, 1).tolist() == [[False, True], [False, True]]
    assert w.shape == score.shape


def _blocks_4x4():
    # Three 2x2 blocks with different winners per norm; the fourth is small.
    a = torch.full((2, 2), 1.2)  # L1 4.8, L2 2.4, Linf 1.2
    b = B([[2.5, 0.0], [0.0, 0.0]])  # L1 2.5, L2 2.5, Linf 2.5
    c = B([[2.0, -2.0], [0.0, 0.0]])  # L1 4.0, L2 2.83, Linf 2.0
    d = torch.full((2, 2), 0.1)
    return torch.cat([torch.cat([a, b], 1), torch.cat([c, d], 1)], 0)


@pytest.mark.parametrize("norm, winner", [("l1", (0, 0)), ("l2", (1, 0)), ("linf", (0, 1))])
def test_block_norms_hand_computed(norm, winner):
    w = _blocks_4x4()
    st = MaskStructure("block", block_size=2, norm=norm)
    mask = select_mask(w, st, 0.25, input_dim=1)
    expected = torch.zeros(2, 2, dtype=torch.bool)
    expected[winner] = True
    assert torch.equal(mask, expected.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_block_scores_values():
    w = _blocks_4x4()
    torch.testing.assert_close(block_scores(w, 2, "l1"), B([[4.8, 2.5], [4.0, 0.4]]))
    torch.testing.assert_close(block_scores(w, 2, "linf"), B([[1.2, 2.5], [2.0, 0.1]]))
    torch.testing.assert_close(block_scores(w, 2, "l2"), B([[2.4, 2.5], [math.sqrt(8), 0.2]]))


@pytest.mark.parametrize("bs", [1, 2, 4, 8, 16, 32])
def test_block_exact_counts_and_constant_blocks(bs):
    w = torch.randn(64, 96)
    st = MaskStructure("block", block_size=bs)
    mask = select_mask(w, st, 0.3, input_dim=1)
    n_blocks = (64 // bs) * (96 // bs)
    assert int(mask.sum()) == round(0.3 * n_blocks) * bs * bs
    granules = reduce_to_granules(mask, st)
    assert torch.equal(expand_granules(granules, st), mask)  # every block all-on or all-off


def test_block_that_does_not_divide_is_a_clear_error():
    with pytest.raises(ValueError, match=r"block_size=16 does not divide both dimensions of its weight \(64, 40\)"):
        check_fits(MaskStructure("block", block_size=16), (64, 40), 1, "layer.q")
    with pytest.raises(ValueError, match="block_size=16 does not divide"):
        select_mask(torch.randn(64, 40), MaskStructure("block", block_size=16), 0.5, 1)


def test_nm_linear_hand_computed():
    # Linear weight [out=2, in=8]: groups of 4 run along dim 1.
    w = B([[0.1, -0.5, 0.3, 0.2, 0.9, 0.8, -0.7, 0.0], [4.0, 3.0, 2.0, 1.0, 0.0, 0.1, 0.2, -0.3]])
    mask = nm_mask(w, 2, 4, input_dim=1)
    assert mask.int().tolist() == [[0, 1, 1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 1, 1]]


def test_nm_conv1d_groups_run_along_dim0():
    # Conv1D weight [in=8, out=2] is the transpose layout: groups of 4 consecutive *rows*.
    w = B([[0.1, -0.5, 0.3, 0.2, 0.9, 0.8, -0.7, 0.0], [4.0, 3.0, 2.0, 1.0, 0.0, 0.1, 0.2, -0.3]]).T
    mask = nm_mask(w, 2, 4, input_dim=0)
    assert mask.T.int().tolist() == [[0, 1, 1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 1, 1]]
    # Along dim 1 it would be a different (wrong) mask for Conv1D.
    w2 = torch.randn(16, 12)
    assert nm_mask(w2, 2, 4, 0).reshape(4, 4, 12).sum(1).eq(2).all()
    assert nm_mask(w2, 2, 4, 1).reshape(16, 3, 4).sum(2).eq(2).all()


@pytest.mark.parametrize("n, m", [(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8)])
def test_nm_exact_per_group(n, m):
    w = torch.randn(24, 64)
    st = MaskStructure("nm", n=n, m=m)
    mask = select_mask(w, st, 0.123, input_dim=1)  # density ignored: N:M fixes it
    assert mask.reshape(24, 64 // m, m).sum(-1).eq(n).all()
    assert int(mask.sum()) == num_active(st, w.shape, 0.0)


def test_nm_not_fitting_input_dim():
    with pytest.raises(ValueError, match=r"m=4 does not divide the input dimension \(6\)"):
        check_fits(MaskStructure("nm"), (8, 6), 1, "fc")
    check_fits(MaskStructure("nm"), (8, 6), 0, "fc")  # input dim 8 fits


def _brute_force_patterns(n, m):
    out = []
    for bits in itertools.product([0, 1], repeat=m * m):
        t = torch.tensor(bits).view(m, m)
        if t.sum(0).eq(n).all() and t.sum(1).eq(n).all():
            out.append(t.bool())
    return torch.stack(out)


def test_transposable_pattern_enumeration_matches_brute_force():
    ours = transposable_patterns(2, 4)
    assert ours.shape == (90, 4, 4)
    brute = _brute_force_patterns(2, 4)
    assert {tuple(p.flatten().tolist()) for p in ours} == {tuple(p.flatten().tolist()) for p in brute}
    assert len(transposable_patterns(1, 4)) == 24  # permutation matrices
    assert len(transposable_patterns(1, 2)) == 2


def test_transposable_best_pattern_against_brute_force():
    torch.manual_seed(1)
    brute = _brute_force_patterns(2, 4).float()  # [90, 4, 4]
    w = torch.randn(16, 24)
    mask = transposable_nm_mask(w, 2, 4)
    tiles_w = w.abs().reshape(4, 4, 6, 4).permute(0, 2, 1, 3).reshape(-1, 4, 4)
    tiles_m = mask.reshape(4, 4, 6, 4).permute(0, 2, 1, 3).reshape(-1, 4, 4)
    best = (tiles_w.unsqueeze(1) * brute.unsqueeze(0)).sum((2, 3)).amax(1)
    torch.testing.assert_close((tiles_w * tiles_m).sum((1, 2)), best)
    assert tiles_m.sum(1).eq(2).all() and tiles_m.sum(2).eq(2).all()
    # Transposable: both the weight and its transpose are 2:4 along either dimension.
    assert nm_mask(mask.float(), 2, 4, 1).eq(mask).all() and nm_mask(mask.float(), 2, 4, 0).eq(mask).all()


def test_transposable_needs_both_dims_and_enumerates_small_m_only():
    with pytest.raises(ValueError, match="both dimensions"):
        check_fits(MaskStructure("nm_transposable"), (8, 6), 1, "fc")
    assert MaskStructure("nm_transposable", n=4, m=8).describe() == "4:8 transposable"  # solved by min-cost flow
    with pytest.raises(ValueError, match="m <= 5"):
        transposable_patterns(4, 8)


def test_topk_allowed_and_errors():
    scores = B([5.0, 4.0, 3.0, 2.0, 1.0])
    allowed = B([False, True, False, True, True])
    assert topk_granules(scores, 2, allowed).tolist() == [False, True, False, True, False]
    with pytest.raises(ValueError, match="only 3 are available"):
        topk_granules(scores, 4, allowed)
    with pytest.raises(ValueError, match="NaN"):
        topk_granules(B([1.0, float("nan")]), 1)
    assert not topk_granules(scores, 0).any()


@pytest.mark.parametrize(
    "structure",
    [UNSTRUCTURED, MaskStructure("block", 8), MaskStructure("nm"), MaskStructure("nm_transposable")],
    ids=lambda s: s.describe(),
)
def test_random_masks_exact_seeded(structure):
    shape = (32, 48)
    m1 = random_mask(shape, structure, 0.25, 1, make_generator(0, "layer"))
    m2 = random_mask(shape, structure, 0.25, 1, make_generator(0, "layer"))
    m3 = random_mask(shape, structure, 0.25, 1, make_generator(1, "layer"))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    if structure.kind == "nm":
        assert m1.reshape(32, 12, 4).sum(-1).eq(2).all()
    elif structure.kind == "nm_transposable":
        t = m1.reshape(8, 4, 12, 4).permute(0, 2, 1, 3)
        assert t.sum(-1).eq(2).all() and t.sum(-2).eq(2).all()
    else:
        assert int(m1.sum()) == structure.block_size**2 * num_active(structure, shape, 0.25)


def test_derive_seed_is_stable():
    # A fixed value: Python's hash() would change between processes; sha256 must not.
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1) != derive_seed(0, "a", 2)
    # Another interpreter with another hash seed derives the same value.
    code = "from hf_sparse.structure import derive_seed; print(derive_seed(0, 'a', 1))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert int(out.stdout) == derive_seed(0, "a", 1)


def test_uniform_and_erk_densities():
    shapes = {"small": (16, 16), "mid": (64, 64), "wide": (64, 256)}
    assert set(uniform_densities(shapes, 0.2).values()) == {0.2}
    d = erk_densities(shapes, 0.2)
    total = sum(math.prod(s) for s in shapes.values())
    active = sum(d[n] * math.prod(s) for n, s in shapes.items())
    assert active == pytest.approx(0.2 * total)
    assert d["small"] > d["mid"] > d["wide"]
    # eps * (n_in + n_out) / (n_in * n_out): the ratio of two sparse layers is fixed by their shapes.
    assert d["mid"] / d["wide"] == pytest.approx((128 / 4096) / (320 / 16384))


def test_erk_caps_dense_layers_and_keeps_total():
    shapes = {"tiny": (4, 4), "big": (256, 256)}
    d = erk_densities(shapes, 0.5)
    assert d["tiny"] == 1.0
    assert d["tiny"] * 16 + d["big"] * 65536 == pytest.approx(0.5 * (16 + 65536))


def test_transposable_hand_computed_tile():
    # Large values sit on a valid 2:4 transposable pattern (sum 65). Row 0's second largest value (8.5 at
    # column 3) is left out: taking it forces small weights elsewhere (best such pattern sums to 52).
    w = B([[9.0, 8.0, 0.1, 8.5],
           [0.2, 0.1, 9.0, 8.0],
           [8.0, 0.3, 7.0, 0.2],
           [0.1, 9.0, 0.2, 7.0]])
    expected = B([[1, 1, 0, 0],
                  [0, 0, 1, 1],
                  [1, 0, 1, 0],
                  [0, 1, 0, 1]]).bool()
    assert torch.equal(transposable_nm_mask(w, 2, 4), expected)
    # Row-wise 2:4 (not transposable) takes 8.5 in row 0, and column 3 then has three active weights.
    greedy = nm_mask(w, 2, 4, 1)
    assert greedy[0].tolist() == [True, False, False, True] and int(greedy[:, 3].sum()) == 3
