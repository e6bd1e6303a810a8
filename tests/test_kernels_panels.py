"""The Numba kernels' panel layout: packing, the tiled transpose, the pack cache, packed feed-forward outputs and the
column-chunked CSR format — each against a hand-computed or dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from hf_sparse.config import SparsityConfig
from hf_sparse.kernels import SparseInferenceLinear, numba_available, to_cpu_inference_
from hf_sparse.kernels.panels import PackCache, pack, packed_view, sequence_panel, unpack
from hf_sparse.patching import sparsify_

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed (extra 'cpu-kernels')")


def _spmm():
    from hf_sparse.kernels import _numba_spmm

    return _numba_spmm


def test_pack_hand_computed_with_padded_tail():
    x = torch.arange(6.0).view(3, 2)  # 3 tokens, 2 features, panels of 2 tokens
    expected = torch.tensor([[[0.0, 2.0], [1.0, 3.0]], [[4.0, 0.0], [5.0, 0.0]]])
    assert torch.equal(pack(x, 2), expected)
    assert torch.equal(pack(x, 2, _spmm().transpose_panels), expected)
    assert torch.equal(unpack(expected, 3, _spmm().transpose_panels), x)


@pytest.mark.parametrize("shape", [(3, 37, 70), (1, 16, 16), (2, 5, 48), (4, 33, 17)])
def test_tiled_transpose_matches_torch_on_ragged_tiles(shape):
    src = torch.randn(*shape)
    dst = torch.empty(shape[0], shape[2], shape[1])
    _spmm().transpose_panels(src.numpy(), dst.numpy())
    assert torch.equal(dst, src.transpose(1, 2))


@pytest.mark.parametrize("tokens,panel", [(70, 32), (128, 128), (5, 16)])
def test_pack_unpack_round_trip(tokens, panel):
    x = torch.randn(tokens, 40)
    xp = pack(x, panel, _spmm().transpose_panels)
    assert xp.shape == (-(-tokens // panel), 40, panel)
    assert torch.equal(pack(x, panel), xp)
    tail = tokens - (xp.shape[0] - 1) * panel
    assert not xp[-1, :, tail:].any()  # the padding of the last panel is zero
    assert torch.equal(unpack(xp, tokens, _spmm().transpose_panels), x)


def test_packed_view_only_for_panel_layout():
    yp = torch.randn(2, 24, 32)  # [batch, features, seq] as a kernel writes it
    x = yp.transpose(1, 2)  # [batch, seq, features] view
    view = packed_view(x)
    assert view is not None and view.data_ptr() == yp.data_ptr() and torch.equal(view, yp)
    assert packed_view(F.gelu(x)) is not None  # element-wise ops keep the layout
    assert packed_view(x.contiguous()) is None
    assert packed_view(x[:, :, :12]) is None  # a slice is not a whole panel
    assert packed_view(torch.randn(2, 24, 20).transpose(1, 2)) is None  # panel layout, but seq=20 is no panel
    assert sequence_panel(torch.randn(2, 20, 8)) is None  # 20 is not a multiple of 16
    assert sequence_panel(torch.randn(2, 512, 8)) is None  # wider than a panel
    assert sequence_panel(torch.randn(64, 8)) is None
    assert sequence_panel(torch.randn(2, 48, 8)) == 48


def test_pack_cache_packs_one_tensor_once():
    calls = []

    def counting(src, dst):
        calls.append(src.shape)
        _spmm().transpose_panels(src, dst)

    cache = PackCache()
    x = torch.randn(2, 16, 8)
    cache.get(x, 16, counting)
    cache.get(x, 16, counting)
    assert len(calls) == 2  # closed (outside its parent's forward): nothing is kept
    cache.open()
    first = cache.get(x, 16, counting)
    assert cache.get(x, 16, counting) is first and len(calls) == 3  # query, key and value share one pack
    assert cache.get(x, 32, counting) is not first and len(calls) == 4  # another panel width
    same_values = x.clone()
    assert torch.equal(cache.get(same_values, 32, counting), cache.get(x, 32, counting)) and len(calls) == 6
    x.add_(1.0)  # edited in place: the version counter moves, so it is packed again
    assert torch.equal(cache.get(x, 32, counting), pack(x.reshape(-1, 8), 32)) and len(calls) == 7
    cache.close()
    cache.get(x, 32, counting)
    assert len(calls) == 8 and cache._entry == ()  # closing dropped the activation


def test_pack_cache_scope_follows_parent_forward_and_inference_tensors():
    cache = PackCache()
    parent = torch.nn.Identity()
    cache.attach_(parent)
    seen = []
    parent.register_forward_pre_hook(lambda module, args: seen.append(cache._open))
    with torch.inference_mode():
        x = torch.randn(2, 16, 8)  # an inference tensor: no version counter
        parent(x)
        assert seen == [1] and cache._open == 0
        first = cache.get(x, 16)
        x.mul_(2.0)  # outside the parent's forward the cache is closed, so the edit is always seen
        assert torch.equal(cache.get(x, 16), 2 * first)
        cache.open()
        assert cache.get(x, 16) is cache.get(x, 16)
        cache.close()

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    failing = Boom()
    cache.attach_(failing)
    with pytest.raises(RuntimeError, match="boom"):
        failing(x)
    assert cache._open == 0  # closed even when the forward raised


def test_chunked_csr_hand_computed():
    weight = torch.tensor([[1.0, 0.0, 2.0, 3.0], [0.0, 4.0, 0.0, 5.0], [6.0, 0.0, 0.0, 0.0]])
    ptr, indices, data = _spmm().chunked_csr(weight, column_chunk=2)
    # chunk 0 (columns 0-1): row0 [0], row1 [1], row2 [0]; chunk 1 (columns 2-3): row0 [2, 3], row1 [3], row2 none
    assert ptr.tolist() == [0, 1, 2, 3, 5, 6, 6]
    assert indices.tolist() == [0, 1, 0, 2, 3, 3]
    assert data.tolist() == [1.0, 4.0, 6.0, 2.0, 3.0, 5.0]
    ptr, indices, data = _spmm().chunked_csr(weight, column_chunk=8)  # one chunk: plain CSR
    assert ptr.tolist() == [0, 3, 5, 6] and indices.tolist() == [0, 2, 3, 1, 3, 0]


@pytest.mark.parametrize("chunk", [3, 16, 64])
@pytest.mark.parametrize("panel", [5, 8, 32, 64, 120, 128, 200])  # register blocks of 64/32/16/8 tokens, then a tail
def test_csr_kernel_with_column_chunks_equals_dense(chunk, panel):
    torch.manual_seed(1)
    weight = torch.randn(300, 40) * (torch.rand(300, 40) < 0.2)  # more rows than one row group
    weight[7] = 0  # a row without non-zeros keeps its bias
    bias = torch.randn(300)
    x = torch.randn(3, 40, panel)
    yp = torch.empty(3, 300, panel)
    _spmm().csr_panel_matmul(*_spmm().chunked_csr(weight, chunk), bias.numpy(), x.numpy(), yp.numpy())
    expected = torch.einsum("ok,ckj->coj", weight, x) + bias[None, :, None]
    torch.testing.assert_close(yp, expected, rtol=1e-5, atol=1e-5)
    # The row-major variant writes [tokens, out] itself; the last panel holds only 2 of its tokens.
    tokens = 2 * panel + 2
    y = np.full((tokens, 300), np.nan, dtype=np.float32)
    _spmm().csr_panel_matmul_rows(*_spmm().chunked_csr(weight, chunk), bias.numpy(), x.numpy(), y)
    rows = expected.transpose(1, 2).reshape(-1, 300)[:tokens]
    torch.testing.assert_close(torch.from_numpy(y), rows, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [64, 130, 200])
def test_csr_kernel_from_row_major_input(tokens):
    """`csr_matmul_unpacked` packs each panel inside its task: row-major or packed output, ragged last panel."""
    torch.manual_seed(2)
    weight = torch.randn(300, 40) * (torch.rand(300, 40) < 0.2)
    bias = torch.randn(300)
    x = torch.randn(tokens, 40)
    expected = F.linear(x, weight, bias)
    arrays = _spmm().chunked_csr(weight, 16)
    y = np.full((tokens, 300), np.nan, dtype=np.float32)
    _spmm().csr_matmul_unpacked(*arrays, bias.numpy(), x.numpy(), y, np.empty((0, 300, 64), np.float32))
    torch.testing.assert_close(torch.from_numpy(y), expected, rtol=1e-5, atol=1e-5)
    panels = -(-tokens // 64)
    yp = np.full((panels, 300, 64), np.nan, dtype=np.float32)
    _spmm().csr_matmul_unpacked(*arrays, bias.numpy(), x.numpy(), np.empty((0, 300), np.float32), yp)
    packed = torch.from_numpy(yp).transpose(1, 2).reshape(-1, 300)
    torch.testing.assert_close(packed[:tokens], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[tokens:], bias.expand(panels * 64 - tokens, 300))  # zero padding: bias only


@pytest.mark.parametrize("threads", [1, 2])
def test_layer_packs_in_task_for_many_panels(threads, monkeypatch):
    """Inputs with at least two panels per thread skip the separate packing pass; outputs are unchanged."""
    spmm, calls = _spmm(), []
    kernel = spmm.csr_matmul_unpacked
    monkeypatch.setattr(spmm, "csr_matmul_unpacked", lambda *args: calls.append(args[-1].shape) or kernel(*args))
    torch.manual_seed(3)
    weight = torch.randn(48, 40) * (torch.rand(48, 40) < 0.2)
    bias = torch.randn(48)
    layer = SparseInferenceLinear(weight, bias, "numba_csr")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            x = torch.randn(3, 100, 40)  # 300 tokens: 5 panels of 64
            torch.testing.assert_close(layer(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
            layer.packed_output = True  # one 64-token sequence per panel, returned as a view of the panels
            x = torch.randn(5, 64, 40)
            out = layer(x)
            assert packed_view(out) is not None
            torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
            layer(torch.randn(2, 64, 40))  # 2 panels: too few for every thread to get two, so packed first
    finally:
        torch.set_num_threads(previous)
    assert calls == [(0, 48, 64), (5, 48, 64)] if threads == 2 else len(calls) == 3  # yp: row-major, then packed


def test_layer_uses_column_chunks():
    spmm = _spmm()
    in_f = 3 * spmm.CSR_COLUMN_CHUNK + 64
    weight = torch.randn(8, in_f) * (torch.rand(8, in_f) < 0.1)
    layer = SparseInferenceLinear(weight, None, "numba_csr")
    assert layer._main.arrays[0].shape[0] == 8 * -(-in_f // spmm.CSR_COLUMN_CHUNK) + 1
    x = torch.randn(20, in_f)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ weight.T, rtol=1e-4, atol=1e-4)


def _tiny_bert():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False).eval()
    return sparsify_(model, SparsityConfig(sparsity=0.75, mask_init="magnitude"))


def _record(model, names):
    seen = {}

    def hook(name):
        def record(module, args, out):
            seen.setdefault(name, (args[0], out))  # the first call; returning None keeps the output

        return record

    for name in names:
        model.get_submodule(name).register_forward_hook(hook(name))
    return seen


@pytest.mark.parametrize("seq", [32, 20])  # 20 is not a multiple of 16: the usual contiguous path
def test_bert_feed_forward_passes_packed_activations(seq):
    model = _tiny_bert()
    ids = torch.randint(0, 96, (3, seq))
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    to_cpu_inference_(model, methods=["numba_csr"], calibration_tokens=64, repeats=1)
    up, down = "encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense"
    assert model.get_submodule(up).packed_output and not model.get_submodule(down).packed_output
    assert not model.get_submodule("encoder.layer.0.attention.self.query").packed_output
    for layer in range(2):  # query / key / value share one cache per attention block; other layers have none
        attention = f"encoder.layer.{layer}.attention.self."
        caches = {id(model.get_submodule(attention + n).pack_cache) for n in ("query", "key", "value")}
        assert len(caches) == 1 and model.get_submodule(attention + "query").pack_cache is not None
    assert model.get_submodule(up).pack_cache is None
    seen = _record(model, [up, down])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    up_out, down_in = seen[up][1], seen[down][0]
    if seq % 16 == 0:
        assert not up_out.is_contiguous() and packed_view(up_out) is not None
        assert packed_view(down_in) is not None  # GELU kept the layout, so the second projection did not pack
    else:
        assert up_out.is_contiguous() and down_in.is_contiguous()
    torch.testing.assert_close(seen[down][1], F.linear(down_in.contiguous(), _dense_weight(model, down),
                                                       model.get_submodule(down).bias), rtol=1e-5, atol=1e-5)


def _dense_weight(model, name):
    layer = model.get_submodule(name)
    eye = torch.eye(layer.in_features)
    with torch.no_grad():
        return (layer(eye.unsqueeze(0)).squeeze(0) - layer.bias).T


def test_packed_ffn_off_and_unknown_models():
    model = _tiny_bert()
    to_cpu_inference_(model, methods=["numba_csr"], calibration_tokens=32, repeats=1, packed_ffn=False)
    assert not any(m.packed_output for m in model.modules() if isinstance(m, SparseInferenceLinear))
    model = _tiny_bert()
    to_cpu_inference_(model, methods=["dense"], calibration_tokens=32, repeats=1)  # consumer is not a Numba layer
    assert not any(m.packed_output for m in model.modules() if isinstance(m, SparseInferenceLinear))


def test_gpt2_feed_forward_passes_packed_activations():
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    sparsify_(model, SparsityConfig(sparsity=0.75))
    ids = torch.randint(0, 96, (2, 48))
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    to_cpu_inference_(model, methods=["numba_csr"], calibration_tokens=32, repeats=1)
    assert [n for n, m in model.named_modules() if getattr(m, "packed_output", False)] == ["h.0.mlp.c_fc",
                                                                                          "h.1.mlp.c_fc"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_bias_shape_is_checked():
    with pytest.raises(ValueError, match=r"bias of shape \(3,\)"):
        SparseInferenceLinear(torch.eye(4), torch.zeros(3), "numba_csr")
