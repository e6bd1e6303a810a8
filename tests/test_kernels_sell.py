"""The few-rows (decode) kernel: SELL-8 layout by hand, and products equal to the dense ones for awkward weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_sparse.kernels import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed (extra 'cpu-kernels')")


def _rows():
    from hf_sparse.kernels import _numba_rows

    return _numba_rows


def test_sell_pack_layout_by_hand():
    weight = torch.tensor([[0.0, 5.0, 0.0],
                           [1.0, 2.0, 3.0],
                           [0.0, 0.0, 0.0],
                           [4.0, 0.0, 6.0]])
    slice_ptr, perm, steps, data = _rows().sell_pack(weight)
    # Rows sorted by count (3, 2, 1, 0), stable: 1, 3, 0, 2; one slice of 3 steps (its longest row), 8 lanes each.
    assert perm.tolist() == [1, 3, 0, 2]
    assert slice_ptr.tolist() == [0, 3]
    assert steps.dtype == np.uint8 and data.dtype == np.float32 and data.shape == (24,)
    values = data.reshape(3, 8)
    assert values[:, :4].tolist() == [[1.0, 4.0, 5.0, 0.0], [2.0, 6.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]
    # Column steps: row 1 has columns 0, 1, 2; row 3 columns 0, 2; row 0 column 1; padding steps are 0.
    assert steps.reshape(3, 8)[:, :4].tolist() == [[0, 0, 1, 0], [1, 2, 0, 0], [1, 0, 0, 0]]
    assert not values[:, 4:].any() and not steps.reshape(3, 8)[:, 4:].any()  # lanes of absent rows stay zero


def test_sell_pack_bridges_long_gaps_with_fillers():
    weight = torch.zeros(2, 1000)
    weight[0, 300] = 1.0  # first column 300 = 255 + 45: one filler
    weight[0, 301] = 2.0
    weight[0, 900] = 3.0  # gap 599 = 255 + 255 + 89: two fillers
    weight[1, 255] = 4.0  # exactly 255: no filler
    slice_ptr, perm, steps, data = _rows().sell_pack(weight)
    assert perm.tolist() == [0, 1] and slice_ptr.tolist() == [0, 6]
    lanes = steps.reshape(6, 8)
    assert lanes[:, 0].tolist() == [255, 45, 1, 255, 255, 89]
    assert data.reshape(6, 8)[:, 0].tolist() == [0.0, 1.0, 2.0, 0.0, 0.0, 3.0]
    assert lanes[:, 1].tolist() == [255, 0, 0, 0, 0, 0] and data.reshape(6, 8)[:, 1].tolist()[:2] == [4.0, 0.0]
    assert np.cumsum(lanes[:, 0])[[1, 2, 5]].tolist() == [300, 301, 900]  # the running sums are the columns


def _weights():
    torch.manual_seed(0)
    uneven = torch.randn(45, 70) * (torch.rand(45, 70) > 0.9)
    uneven[:5] = torch.randn(5, 70)  # a few dense rows: slices differ ten-fold in length
    uneven[-7:] = 0  # trailing empty rows: the last task boundary must still reach the end
    yield "uneven", uneven
    yield "empty", torch.zeros(16, 24)
    yield "one row", torch.randn(1, 9)
    yield "dense", torch.randn(24, 8)


@pytest.mark.parametrize("threads", [1, 2, 3, 64])
@pytest.mark.parametrize("tokens", [1, 2, 5, 16])
def test_sell_rows_matmul_matches_dense(threads, tokens):
    rows = _rows()
    for name, weight in _weights():
        bias = torch.randn(weight.shape[0])
        x = torch.randn(tokens, weight.shape[1])
        y = np.full((tokens, weight.shape[0]), np.nan, dtype=np.float32)  # every entry must be written
        arrays = rows.sell_pack(weight)
        if threads == 1:
            rows.sell_rows_matmul_serial(*arrays, bias.numpy(), x.numpy(), y)
        else:
            rows.sell_rows_matmul(*arrays, bias.numpy(), x.numpy(), y, threads)
        torch.testing.assert_close(torch.from_numpy(y), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5, msg=name)


def test_wide_inputs_past_16_bit_columns():
    weight = torch.zeros(3, 70_000)
    weight[0, 69_999] = 2.0
    weight[2, 65_536] = -1.0
    weight[2, 65_537] = 0.5
    slice_ptr, perm, steps, data = _rows().sell_pack(weight)
    assert data.size == 8 * (69_999 // 255 + 1)  # the first row's fillers set the slice's length
    x = torch.randn(1, 70_000)
    y = np.empty((1, 3), dtype=np.float32)
    _rows().sell_rows_matmul(slice_ptr, perm, steps, data, np.zeros(3, np.float32), x.numpy(), y, 2)
    torch.testing.assert_close(torch.from_numpy(y), F.linear(x, weight))


@pytest.mark.parametrize("density", [0.02, 0.1, 1.0])
def test_slice_sums_match_the_dense_product(density):
    """The step loop called directly, on whole slices and on every prefix length from 0 to 9 steps, so the
    unrolled part (4 steps per iteration) and the single-step remainder both run."""
    from hf_sparse.kernels import _simd

    torch.manual_seed(1)
    weight = torch.randn(16, 600) * (torch.rand(16, 600) < density)
    slice_ptr, perm, steps, data = _rows().sell_pack(weight)
    x = torch.randn(600).numpy()
    expected = F.linear(torch.from_numpy(x), weight)[torch.from_numpy(perm).long()].numpy()
    for g in range(2):
        sums = np.full(8, np.nan, dtype=np.float32)
        _simd.slice_sums(data, steps, x, int(slice_ptr[g]) * 8, int(slice_ptr[g + 1]) * 8, sums)
        np.testing.assert_allclose(sums, expected[8 * g:8 * g + 8], rtol=1e-5, atol=1e-5)
    q0 = int(slice_ptr[0]) * 8
    lanes_steps = steps.reshape(-1, 8).astype(np.int64)
    lanes_data = data.reshape(-1, 8)
    for k in range(min(10, int(slice_ptr[1]) + 1)):
        columns = np.cumsum(lanes_steps[:k], axis=0)
        prefix = (lanes_data[:k] * x[columns]).sum(axis=0) if k else np.zeros(8)
        sums = np.full(8, np.nan, dtype=np.float32)
        _simd.slice_sums(data, steps, x, q0, q0 + 8 * k, sums)
        np.testing.assert_allclose(sums, prefix, rtol=1e-5, atol=1e-5)


def test_slice_intrinsic_refuses_other_dtypes():
    from numba.core.errors import TypingError

    from hf_sparse.kernels import _simd

    ok = np.zeros(8, np.float32)
    with pytest.raises(TypingError, match="deltas must be a 1-D C-contiguous uint8"):
        _simd.slice_sums(ok, np.zeros(8, np.uint16), ok, 0, 8, ok)
