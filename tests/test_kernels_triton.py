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
from hf_sparse.kernels import triton_configs as tc  # noqa: E402
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
    db = None if layer.bias is None else layer.bias.grad.clone()
    return y.detach(), x.grad, layer.weight.grad.clone(), db


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
    splits, per_split = tb._dw_splits(150, 1, torch.device(DEVICE))
    # Splits are whole multiples of the largest token tile, so any autotuned BLOCK_M tiles them exactly.
    assert splits > 1 and per_split % max(tc.BLOCK_MS) == 0 and (splits - 1) * per_split < 150 <= splits * per_split
    for got, want in zip(_run(layer, x, kernel=True), _run(layer, x, kernel=False)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _masked_pair(mask, bias=True, dtype=torch.float32):
    """A kernel layer and an identical reference layer with the given block mask."""
    layers = []
    for _ in range(2):
        torch.manual_seed(3)
        dense = nn.Linear(mask.shape[1], mask.shape[0], bias=bias)
        layer = SparseLinear.from_dense(dense, mask.cpu(), MaskStructure("block", block_size=16))
        with torch.no_grad():
            layer.weight.mul_(layer.weight_mask)
        layers.append(layer.to(device=DEVICE, dtype=dtype))
    return layers


@pytest.mark.parametrize("bias", [True, False])
def test_empty_block_rows_and_columns_match_reference(bias):
    blocks = torch.zeros(4, 8, dtype=torch.bool)  # [out/16, in/16] for a 64x128 weight
    blocks[0, [1, 4]] = True
    blocks[2, [1, 2, 7]] = True  # block rows 1, 3 and block columns 0, 3, 5, 6 are empty
    mask = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)
    layer, reference = _masked_pair(mask, bias)
    layout = tb.layout_for(layer)
    assert layout.rows_nz.tolist() == [0, 2] and layout.rows_empty.tolist() == [1, 3]
    assert layout.cols_nz.tolist() == [1, 2, 4, 7] and layout.cols_empty.tolist() == [0, 3, 5, 6]
    x = torch.randn(2, 19, 128, device=DEVICE)
    got = _run(layer, x, kernel=True)[:3]
    want = _run(reference, x, kernel=False)[:3]
    for g, w, what in zip(got, want, ("y", "dx", "dW")):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=what)
    assert not got[1][..., 48:64].any() and not got[2][~layer.weight_mask].any()
    if bias:
        torch.testing.assert_close(layer.bias.grad, reference.bias.grad)


def test_all_empty_mask_gives_bias_and_zero_gradients():
    mask = torch.zeros(64, 128, dtype=torch.bool)
    layer, reference = _masked_pair(mask, bias=True, dtype=torch.float16)
    layout = tb.layout_for(layer)
    assert layout.num_blocks == 0 and not layout.rows_nz.numel() and not layout.cols_nz.numel()
    x = torch.randn(7, 128, device=DEVICE, dtype=torch.float16)
    y, dx, dw, db = _run(layer, x, kernel=True)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, layer.bias.detach().expand(7, 64))
    assert not dx.any() and not dw.any()
    torch.testing.assert_close(db, _run(reference, x, kernel=False)[3])


def test_interpreter_uses_exactly_one_config():
    for kernel in (tb._fwd_kernel, tb._dx_kernel, tb._dw_kernel):
        assert kernel.configs == ([tc.DEFAULT_CONFIG] if tb.interpreter_active() else kernel.configs)
    layer = _layer(SparseLinear, 32, 32, 16, density=0.5)
    _run(layer, torch.randn(3, 32, device=DEVICE), kernel=True)
    assert set(tb.chosen_configs()) == {"fwd", "dx", "dw"}
    if tb.interpreter_active():
        assert set(tb.chosen_configs().values()) == {"BLOCK_M=64 warps=4 stages=2"}


def test_candidate_configs_and_buckets():
    full = tc.candidate_configs(interpreter=False)
    assert len(full) == 27 and len({tc.describe(c) for c in full}) == 27
    assert tc.candidate_configs(interpreter=True) == [tc.DEFAULT_CONFIG]
    assert [tc.bucket(n) for n in (1, 16, 17, 4096, 5000, 10 ** 6)] == [16, 16, 32, 4096, 8192, 65536]


def _pruned(kind, bucket, bs, dtype, precision="ieee"):
    named = {"x_ptr": torch.empty(0, dtype=dtype), "M_BUCKET": bucket}
    return tc.make_prune(kind, "x_ptr")(tc.candidate_configs(interpreter=False), named, BS=bs, PRECISION=precision)


def test_prune_drops_oversized_tiles_and_register_hogs():
    small = _pruned("fwd", 32, 16, torch.float16)
    assert small and {c.kwargs["BLOCK_M"] for c in small} == {32}  # <= 32 tokens: no 64- or 128-row tiles
    big = _pruned("fwd", 4096, 64, torch.float16)
    assert {c.kwargs["BLOCK_M"] for c in big} == {32, 64, 128} and tc.DEFAULT_CONFIG in big
    # A 128x64 tile on 2 warps (64 threads) holds 128 fp32 accumulator registers per thread: it spills.
    for kind in ("fwd", "dx"):
        for dtype, precision in ((torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee")):
            assert all(not (c.kwargs["BLOCK_M"] == 128 and c.num_warps == 2)
                       for c in _pruned(kind, 4096, 64, dtype, precision))
    # CUDA-core fp32 (no TF32): 4+ warps, no deep pipeline.
    assert all(c.num_warps >= 4 and c.num_stages == 2 for c in _pruned("dw", 4096, 64, torch.float32))
    # A 16x16 dW tile has room for two warps' MMA tiles only.
    assert {c.num_warps for c in _pruned("dw", 4096, 16, torch.bfloat16)} == {2}
    # Shared memory: 4 stages of 128x64 + 64x64 fp32 tiles (192 KiB) fit an H100 only.
    assert not tc.fits("fwd", 128, 64, torch.float32, "tf32", 8, 4, capability=80)
    assert tc.fits("fwd", 128, 64, torch.float32, "tf32", 8, 4, capability=90)
    # Spills ptxas made on sm_80 only are excluded there only.
    assert tc.fits("dw", 64, 64, torch.float16, "ieee", 8, 2, capability=90)
    assert not tc.fits("dw", 64, 64, torch.float16, "ieee", 8, 2, capability=86)


def test_prune_reads_the_real_launch_arguments():
    """What a GPU autotuner hands `early_config_prune`: the positional launch arguments by name, constexprs as
    keywords. Checked here because a misnamed argument would only fail on a GPU."""
    layer = _layer(SparseLinear, 64, 128, 32, density=0.5, dtype=torch.float16)
    layout = tb.layout_for(layer)
    x, dy = torch.empty(40, 64, dtype=torch.float16), torch.empty(40, 128, dtype=torch.float16)
    weight = layer.weight.detach().cpu()
    part = torch.empty(1, layout.num_blocks, 32, 32)
    launches = {"fwd": (tb._fwd_kernel, tb._fwd_launch(x, weight, None, dy, layout)),
                "dx": (tb._dx_kernel, tb._dx_launch(dy, weight, x, layout)),
                "dw": (tb._dw_kernel, tb._dw_launch(dy, x, part, layout, 128))}
    full = tc.candidate_configs(interpreter=False)
    for kind, (kernel, (args, meta)) in launches.items():
        assert kernel.keys == ["M_BUCKET", "NNZB_BUCKET", "LINES", "BS"]
        named = dict(zip(kernel.arg_names, args))
        assert named["M_BUCKET"] == 64 and named["NNZB_BUCKET"] == 16 and named["LINES"] == (2 if kind == "dx" else 4)
        kept = kernel.early_config_prune(full, named, **meta, grid=None, warmup=False)
        assert kept and all(c.kwargs["BLOCK_M"] <= 64 for c in kept)
        assert kept == tc.kept_configs(full, kind, 32, torch.float16, "ieee", 64, tc._device_capability())


def test_autotune_off_prunes_to_one_config(monkeypatch):
    monkeypatch.setenv("HF_SPARSE_TRITON_AUTOTUNE", "0")
    assert _pruned("fwd", 4096, 32, torch.float16) == [tc.DEFAULT_CONFIG]
    # Where the default does not fit (fp32 CUDA-core 64x64 tiles), the nearest kept config is used.
    (only,) = _pruned("fwd", 4096, 64, torch.float32)
    assert only != tc.DEFAULT_CONFIG and tc.fits("fwd", only.kwargs["BLOCK_M"], 64, torch.float32, "ieee",
                                                 only.num_warps, only.num_stages)
    assert tc.untuned_config([]) == tc.DEFAULT_CONFIG


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


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run of the end-to-end mode")
def test_gpu_benchmark_model_mode_runs_on_the_interpreter():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "benchmarks" / "bench_blocksparse_gpu.py"), "--model", "--device", "cpu",
           "--hidden", "32", "--layers", "1", "--heads", "2", "--vocab", "50", "--batch", "2", "--seq", "16",
           "--blocks", "16", "--densities", "0.5", "--repeats", "1", "--dtype", "float32"]
    env = {**os.environ, "PYTHONPATH": str(repo), "TRITON_INTERPRET": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo, env=env)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("block 16x16"))
    dense_ms, masked_ms, kernel_ms = (float(v) for v in row.split()[3:6])
    assert min(dense_ms, masked_ms, kernel_ms) > 0
    env["TRITON_INTERPRET"] = "0"
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=repo, env=env)
    assert refused.returncode == 2 and "needs TRITON_INTERPRET=1" in refused.stdout
