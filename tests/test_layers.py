import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_sparse import MaskStructure, SparseConv1D, SparseLinear
from hf_sparse.structure import make_generator, random_mask


def _linear_pair(dtype=torch.float32):
    torch.manual_seed(0)
    dense = nn.Linear(16, 8).to(dtype)
    mask = random_mask((8, 16), MaskStructure(), 0.25, 1, make_generator(0, "l"))
    with torch.no_grad():
        dense.weight.masked_fill_(~mask, 0)
    reference = nn.Linear(16, 8).to(dtype)
    reference.load_state_dict(dense.state_dict())
    return SparseLinear.from_dense(dense, mask), reference, mask


def _conv_pair(dtype=torch.float32):
    torch.manual_seed(0)
    dense = Conv1D(8, 16).to(dtype)  # nf=8 outputs, nx=16 inputs, weight [16, 8]
    with torch.no_grad():
        dense.bias.normal_()
    mask = random_mask((16, 8), MaskStructure("nm"), 0.5, 0, make_generator(0, "c"))
    with torch.no_grad():
        dense.weight.masked_fill_(~mask, 0)
    reference = Conv1D(8, 16).to(dtype)
    reference.load_state_dict(dense.state_dict())
    return SparseConv1D.from_dense(dense, mask, MaskStructure("nm")), reference, mask


PAIRS = {"linear": _linear_pair, "conv1d": _conv_pair}


@pytest.mark.parametrize("kind", PAIRS)
def test_from_dense_reuses_parameters_and_keeps_state_dict(kind):
    make = PAIRS[kind]
    sparse, reference, _ = make()
    assert isinstance(sparse, type(reference))  # still an nn.Linear / Conv1D
    assert list(sparse.state_dict()) == list(reference.state_dict()) == ["weight", "bias"]
    dense = sparse.to_dense()
    assert type(dense) is type(reference)
    assert dense.weight is sparse.weight and dense.bias is sparse.bias


def test_from_dense_shares_the_parameter_objects():
    dense = nn.Linear(4, 4)
    w, b = dense.weight, dense.bias
    sparse = SparseLinear.from_dense(dense, torch.ones(4, 4, dtype=torch.bool))
    assert sparse.weight is w and sparse.bias is b
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        SparseLinear.from_dense(dense, torch.ones(4, 3, dtype=torch.bool))


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_equals_dense_with_same_zeros(kind, dtype):
    sparse, reference, _ = PAIRS[kind](dtype)
    x = torch.randn(3, 5, 16).to(dtype)
    try:
        expected = reference(x)
    except RuntimeError as err:  # pragma: no cover - CPU builds without this dtype's matmul
        pytest.skip(f"{dtype} matmul unsupported on this CPU: {err}")
    torch.testing.assert_close(sparse(x), expected)


@pytest.mark.parametrize("kind", PAIRS)
def test_forward_under_autocast(kind):
    sparse, reference, _ = PAIRS[kind]()
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = sparse(x), reference(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind", PAIRS)
def test_masked_weights_do_not_leak_into_forward(kind):
    # Even if an inactive weight became non-zero (e.g. "frozen" inactive weights), the output ignores it.
    sparse, reference, mask = PAIRS[kind]()
    with torch.no_grad():
        sparse.weight[~mask] = 123.0
    x = torch.randn(2, 16)
    torch.testing.assert_close(sparse(x), reference(x))


@pytest.mark.parametrize("kind", PAIRS)
def test_inactive_gradients_are_zero_and_straight_through_is_dense(kind):
    sparse, reference, mask = PAIRS[kind]()
    x = torch.randn(6, 16)
    sparse(x).square().sum().backward()
    reference(x).square().sum().backward()
    assert sparse.weight.grad[~mask].eq(0).all()
    torch.testing.assert_close(sparse.weight.grad[mask], reference.weight.grad[mask])

    sparse.weight.grad = None
    reference.weight.grad = None
    sparse.straight_through = True
    out = sparse(x)
    torch.testing.assert_close(out, reference(x))  # forward unchanged
    out.square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(sparse.weight.grad, reference.weight.grad)  # dense gradient
    assert sparse.weight.grad[~mask].ne(0).any()


def test_optimizer_built_before_patching_keeps_working_and_stays_sparse():
    dense = nn.Linear(16, 8)
    opt = torch.optim.AdamW(dense.parameters(), lr=0.1, weight_decay=0.1)
    mask = random_mask((8, 16), MaskStructure(), 0.25, 1, make_generator(0, "l"))
    sparse = SparseLinear.from_dense(dense, mask)
    sparse.set_mask_(mask)  # zeroes the inactive weights
    before = sparse.weight.detach().clone()
    for _ in range(3):
        sparse(torch.randn(4, 16)).sum().backward()
        opt.step()
        opt.zero_grad()
    assert sparse.weight[~mask].eq(0).all()
    assert not torch.equal(sparse.weight[mask], before[mask])


def test_set_mask_in_place_and_validation():
    sparse, _, mask = _linear_pair()
    buf = sparse.weight_mask
    new = ~mask
    assert sparse.set_mask_(new) is buf
    assert torch.equal(sparse.weight_mask, new)
    assert sparse.weight[mask].eq(0).all()
    with pytest.raises(ValueError, match="bool tensor"):
        sparse.set_mask_(new.float())
    assert "density=0.7500" in repr(sparse)


def test_mask_follows_module_to_dtype_and_stays_bool():
    sparse, _, _ = _linear_pair()
    sparse.to(torch.float64)
    assert sparse.weight_mask.dtype == torch.bool and sparse.weight.dtype == torch.float64


@pytest.mark.slow
@pytest.mark.parametrize("kind", PAIRS)
def test_torch_compile_matches_eager(kind):
    sparse, reference, mask = PAIRS[kind]()
    compiled = torch.compile(sparse)
    x = torch.randn(4, 16)
    torch.testing.assert_close(compiled(x), reference(x))
    compiled(x).sum().backward()
    assert sparse.weight.grad[~mask].eq(0).all()
