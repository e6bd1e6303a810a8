"""Triton block-sparse kernels against the dense masked reference (CPU: Triton's interpreter; CUDA when present)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Must happen before Triton is imported anywhere in this process: triton.jit reads it when decorating.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

pytest.importorskip("triton")

from hf_sparse.config import SparsityConfig  # noqa: E402
from hf_sparse.kernels import active_backends, disable_, enable_, refresh_layout_  # noqa: E402
from hf_sparse.kernels import triton_blocksparse as tb  # noqa: E402
from hf_sparse.layers import SparseConv1D, SparseLinear  # noqa: E402
from hf_sparse.patching import sparse_modules, sparsify_  # noqa: E402
from hf_sparse.structure import MaskStructure, make_generator, random_mask  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


def _layer(cls, in_f, out_f, block, density, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    dense = nn.Linear(in_f, out_f) if cls is SparseLinear else Conv1D(out_f, in_f)
    nn.init.normal_(dense.bias)
    structure = MaskStructure("block", block_size=block)
    input_dim = cls.input_dim
    mask = random_mask(dense.weight.shape, structure, density, input_dim, make_generator(seed, "mask"))
    layer = cls.from_dense(dense, mask, structure)
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer.to(device=DEVICE, dtype=dtype)


def _run(layer, x, kernel):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = tb.block_sparse_forward(layer, x) if kernel else type(layer).forward(layer, x)
    y.backward(torch.ones_like(y) * torch.linspace(-1, 1, y.shape[-1], device=y.device, dtype=y.dtype))
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("cls,in_f,out_f,block,lead,dtype", [
    (SparseLinear, 64, 96, 16, (3, 7), torch.float32),
    (SparseLinear, 64, 64, 32, (40,), torch.float16),
    (SparseLinear, 128, 64, 64, (2, 5), torch.bfloat16),
    (SparseConv1D, 32, 96, 16, (2, 9), torch.float32),
])
def test_forward_dx_dw_match_masked_reference(cls, in_f, out_f, block, lead, dtype):
    layer = _layer(cls, in_f, out_f, block, density=0.5, dtype=dtype)
    x = torch.randn(*lead, in_f, device=DEVICE, dtype=dtype)
    got = _run(layer, x, kernel=True)
    reference = _layer(cls, in_f, out_f, block, density=0.5, dtype=dtype).float()  # same seed: same weights
    want = _run(reference, x.float(), kernel=False)
    for g, w, what in zip(got, want, ("y", "dx", "dW", "db")):
        assert g.dtype == dtype, what
        torch.testing.assert_close(g.float(), w, **TOL[dtype], msg=what)
    # dW is exactly zero outside the active blocks: the kernel never writes there.
    assert not got[2][~layer.weight_mask].any()


def test_empty_block_rows_and_columns():
    layer = _layer(SparseLinear, 64, 64, 16, density=1.0)
    mask = torch.zeros(64, 64, dtype=torch.bool, device=DEVICE)
    mask[16:32, 32:48] = True  # one active block: rows 0, 2, 3 and columns 0, 1, 3 are empty
    layer.set_mask_(mask)
    layout = tb.layout_for(layer)
    assert layout.num_blocks == 1 and layout.row_ptr.tolist() == [0, 0, 1, 1, 1]
    assert layout.col_ptr.tolist() == [0, 0, 0, 1, 1]
    x = torch.randn(5, 64, device=DEVICE)
    y, dx, dw, db = _run(layer, x, kernel=True)
    torch.testing.assert_close(y[:, :16], layer.bias[:16].detach().expand(5, 16))
    assert not dx[:, :32].any() and not dx[:, 48:].any()
    assert int((dw != 0).sum()) == 256
    torch.testing.assert_close(y, _run(layer, x, kernel=False)[0], rtol=1e-4, atol=1e-4)


def test_layout_follows_set_mask():
    layer = _layer(SparseLinear, 64, 64, 16, density=0.25)
    first = tb.layout_for(layer)
    assert tb.layout_for(layer) is first  # cached while the mask is unchanged
    new_mask = random_mask((64, 64), layer.structure, 0.5, 1, make_generator(7, "dst"), device=DEVICE)
    layer.set_mask_(new_mask)  # what a DST update does: in place, same buffer
    second = tb.layout_for(layer)
    assert second is not first and second.num_blocks == 8
    x = torch.randn(6, 64, device=DEVICE)
    for got, want in zip(_run(layer, x, kernel=True), _run(layer, x, kernel=False)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert tb.refresh_layout_(layer) is not second


def _tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertForMaskedLM(config)
    sparsify_(model, SparsityConfig(sparsity=0.5, structure="block", block_size=16, seed=0))
    return model.to(DEVICE)


def test_enable_disable_on_bert_matches_masked_model():
    model = _tiny_bert()
    ids = torch.randint(0, 64, (2, 8), device=DEVICE)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: m.weight.grad.clone() for n, m in sparse_modules(model).items()}

    ref_loss, ref_grads = loss_and_grads()
    names = enable_(model, backend="triton", allow_interpreter=True)
    assert sorted(names) == sorted(sparse_modules(model)) and set(active_backends(model).values()) == {"triton"}
    loss, grads = loss_and_grads()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name in names:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5)
    assert model.state_dict().keys() == _tiny_bert().state_dict().keys()
    assert sorted(disable_(model)) == sorted(names) and not active_backends(model)
    assert "forward" not in vars(next(iter(sparse_modules(model).values())))
    assert refresh_layout_(model) == 0


def test_straight_through_uses_masked_path_with_dense_gradient():
    model = _tiny_bert()
    enable_(model, backend="triton", allow_interpreter=True)
    layer = next(iter(sparse_modules(model).values()))
    layer.straight_through = True
    x = torch.randn(3, 32, device=DEVICE)
    layer(x).sum().backward()
    assert layer.weight.grad[~layer.weight_mask].abs().sum() > 0


def test_autocast_runs_in_half_precision():
    layer = _layer(SparseLinear, 32, 32, 16, density=0.5)
    x = torch.randn(4, 32, device=DEVICE)
    dtype = torch.float16 if DEVICE == "cuda" else torch.bfloat16
    with torch.autocast(DEVICE, dtype=dtype):
        y = tb.block_sparse_forward(layer, x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), type(layer).forward(layer, x).detach(), **TOL[dtype])


def test_enable_validates_before_switching():
    model = _tiny_bert()
    with pytest.raises(ValueError, match="'cuda_graphs'"):
        enable_(model, backend="cuda_graphs")
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="allow_interpreter"):
            enable_(model, backend="triton")
    layer = next(iter(sparse_modules(model).values()))
    bad = layer.weight_mask.clone()
    bad[0, 0] = ~bad[0, 0]  # no longer whole blocks
    layer.weight_mask.copy_(bad)
    with pytest.raises(ValueError, match="whole 16x16 blocks"):
        enable_(model, backend="triton", allow_interpreter=True)
    assert not active_backends(model)
    unstructured = BertForMaskedLM(_tiny_bert().config)
    sparsify_(unstructured, SparsityConfig(sparsity=0.5))
    with pytest.raises(ValueError, match="block structure"):
        enable_(unstructured.to(DEVICE), backend="triton", allow_interpreter=True)
    with pytest.raises(ValueError, match="block_size=8"):
        tb.BlockLayout.from_mask(torch.ones(16, 16, dtype=torch.bool), 8)


def test_dw_token_splits_add_up():
    layer = _layer(SparseLinear, 64, 64, 16, density=1 / 16)  # one active block, so dW is split over tokens
    x = torch.randn(150, 64, device=DEVICE)
    tiles = 3  # 150 tokens in 64-row tiles
    assert tb._dw_splits(tiles, 1, torch.device(DEVICE)) > 1
    for got, want in zip(_run(layer, x, kernel=True), _run(layer, x, kernel=False)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip message on a machine without CUDA")
def test_gpu_benchmark_skips_without_cuda():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_blocksparse_gpu.py")], capture_output=True,
                         text=True, timeout=120, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr
    assert "skipped, CUDA is not available" in out.stdout


_COMPILE_FOR_GPU = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hf_sparse.kernels import triton_blocksparse as tb

INDEX_ARGS = {"row_ptr", "col_idx", "col_ptr", "row_idx", "row_of"}
for arch, dtype, block in ((80, "fp16", 32), (90, "bf16", 16), (80, "fp32", 64)):
    for fn, extra in ((tb._fwd_kernel, {"HAS_BIAS": True}), (tb._dx_kernel, {}), (tb._dw_kernel, {})):
        const = dict(BLOCK_M=64, BS=block, PRECISION="tf32" if dtype == "fp32" else "ieee", UPCAST=False, **extra)
        sig = {a: "constexpr" if a in const else "*i32" if a in INDEX_ARGS else "*fp32" if a == "part_ptr"
               else f"*{dtype}" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
        triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", arch, 32))
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_real_gpus():
    """The interpreter accepts code the GPU compiler rejects: compile to cubin (ptxas ships with Triton)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _COMPILE_FOR_GPU], capture_output=True, text=True,
                         timeout=300, cwd=repo, env={**env, "PYTHONPATH": str(repo)})
    if out.returncode != 0 and ("ptxas" in out.stderr and "not found" in out.stderr.lower()):
        pytest.skip("Triton's ptxas is not available here")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("compiled")
