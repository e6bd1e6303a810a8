"""2:4 semi-structured backend: clean, logged fall back without CUDA; equality with the masked model on a GPU."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertConfig, BertModel

from hf_sparse.config import SparsityConfig
from hf_sparse.kernels import active_backends, disable_, enable_
from hf_sparse.kernels import semi_structured as ss
from hf_sparse.patching import sparse_modules, sparsify_

has_sparse_tensor_cores = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def _bert(structure="nm", **kw):
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=128, max_position_embeddings=32), add_pooling_layer=False)
    cfg = dict(sparsity=None, n=2, m=4) if structure.startswith("nm") else dict(sparsity=0.5)
    sparsify_(model, SparsityConfig(structure=structure, **cfg, **kw))
    return model.eval()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall back on a machine without CUDA")
def test_falls_back_without_cuda_and_logs_why(caplog):
    model = _bert()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        before = model(ids).last_hidden_state
    with caplog.at_level(logging.WARNING, logger="hf_sparse.kernels.dispatch"):
        assert enable_(model, backend="semi_structured") == []
    assert len(caplog.records) == len(sparse_modules(model)) == 6
    assert all("CUDA is not available" in r.getMessage() for r in caplog.records)
    assert not active_backends(model) and disable_(model) == []
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, before)


def test_unsupported_reasons(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    layer = next(iter(sparse_modules(_bert()).values()))
    assert "not CUDA" in ss.unsupported_reason(layer)  # the weights are still on the CPU
    monkeypatch.setattr(ss, "_device_type", lambda layer: "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert "7.5 < 8.0" in ss.unsupported_reason(layer)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert ss.unsupported_reason(layer) is None
    block = next(iter(sparse_modules(_bert("block", block_size=16)).values()))
    assert "is not 2:4" in ss.unsupported_reason(block)
    nm_t = next(iter(sparse_modules(_bert("nm_transposable")).values()))
    assert ss.unsupported_reason(nm_t) is None  # transposable 2:4 is still 2:4 along the input dimension


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall back on a machine without CUDA")
def test_training_without_sparse_tensor_cores_keeps_the_masked_path():
    model = _bert().train()
    layer = next(iter(sparse_modules(model).values()))
    x = torch.randn(3, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a half compute dtype, so only the missing CUDA stops it
        y = ss.semi_structured_forward(layer, x)  # would need CUDA if it tried to compress
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(y, type(layer).forward(layer, x))
    y.float().sum().backward()
    assert not layer.weight.grad[~layer.weight_mask].any()


@pytest.mark.skipif(not has_sparse_tensor_cores, reason="needs a CUDA GPU with compute capability >= 8.0")
@pytest.mark.parametrize("structure", ["nm", "nm_transposable"])
def test_semi_structured_matches_masked_model_on_gpu(structure):
    model = _bert(structure).cuda().half()
    ids = torch.randint(0, 64, (4, 32), device="cuda")
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    names = enable_(model, backend="semi_structured")
    assert sorted(names) == sorted(sparse_modules(model))
    with torch.no_grad():
        got = model(ids).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    layer = sparse_modules(model)[names[0]]
    first = ss.compressed_weight(layer)
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place update must invalidate the compressed copy
    assert ss.compressed_weight(layer) is not first
