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
    slice_ptr, perm, indices, data = _rows().sell_pack(weight)
    # Rows sorted by count (3, 2, 1, 0), stable: 1, 3, 0, 2; one slice of 3 steps (its longest row), 8 lanes each.
    assert perm.tolist() == [1, 3, 0, 2]
    assert slice_ptr.tolist() == [0, 3]
    assert indices.dtype == np.uint16 and data.dtype == np.float32 and data.shape == (24,)
    steps = data.reshape(3, 8)
    assert steps[:, :4].tolist() == [[1.0, 4.0, 5.0, 0.0], [2.0, 6.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]
    assert indices.reshape(3, 8)[:, :4].tolist() == [[0, 0, 1, 0], [1, 2, 0, 0], [2, 0, 0, 0]]
    assert not steps[:, 4:].any()  # lanes of rows that do not exist stay zero


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


def test_wide_inputs_use_32_bit_columns():
    weight = torch.zeros(3, 70_000)
    weight[0, 69_999] = 2.0
    weight[2, 65_536] = -1.0
    slice_ptr, perm, indices, data = _rows().sell_pack(weight)
    assert indices.dtype == np.int32
    x = torch.randn(1, 70_000)
    y = np.empty((1, 3), dtype=np.float32)
    _rows().sell_rows_matmul(slice_ptr, perm, indices, data, np.zeros(3, np.float32), x.numpy(), y, 2)
    torch.testing.assert_close(torch.from_numpy(y), F.linear(x, weight))
