"""CPU inference conversion: every representation equals the dense masked product; conversion is validated first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from hf_sparse.config import SparsityConfig
from hf_sparse.kernels import METHODS, SparseInferenceLinear, numba_available, to_cpu_inference_
from hf_sparse.kernels.benchmark import benchmark_inference
from hf_sparse.layers import SparseConv1D, SparseLinear
from hf_sparse.patching import sparse_modules, sparsify_
from hf_sparse.structure import MaskStructure, make_generator, random_mask

REPO = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed (extra 'cpu-kernels')")


def _method_params():
    return [pytest.param(m, marks=needs_numba) if m.startswith("numba") else m for m in METHODS]


def _tiny_bert(**sparsity):
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False).eval()
    return sparsify_(model, SparsityConfig(mask_init="magnitude", **sparsity))


@pytest.mark.parametrize("method", _method_params())
@pytest.mark.parametrize("tokens", [1, 70, 128, 300])  # one short panel ... several panels with a tail
def test_inference_linear_equals_masked_product(method, tokens):
    structure = MaskStructure("block", block_size=8)
    mask = random_mask((48, 40), structure, 0.25, 1, make_generator(0, "w"))
    weight = torch.randn(48, 40) * mask
    bias = torch.randn(48)
    x = torch.randn(tokens, 40)
    layer = SparseInferenceLinear(weight, bias, method, block_size=8)
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert layer.nnz == int(mask.sum())


@pytest.mark.parametrize("method", _method_params())
def test_inference_linear_leading_shape_and_no_bias(method):
    weight = torch.randn(16, 24) * (torch.rand(16, 24) > 0.7)
    x = torch.randn(2, 3, 5, 24)
    layer = SparseInferenceLinear(weight, None, method, block_size=8 if method.endswith("bsr") else 1)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (2, 3, 5, 16)
    torch.testing.assert_close(out, x @ weight.T, rtol=1e-5, atol=1e-5)


def test_inference_linear_rejects_bad_input():
    layer = SparseInferenceLinear(torch.eye(8), None, "torch_csr")
    with pytest.raises(ValueError, match="float64"):
        layer(torch.ones(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="last dimension 8"):
        layer(torch.ones(2, 7))
    with pytest.raises(RuntimeError, match="inference-only"):
        layer(torch.ones(2, 8, requires_grad=True))
    with pytest.raises(ValueError, match="'coo'"):
        SparseInferenceLinear(torch.eye(8), None, "coo")
    with pytest.raises(ValueError, match="block_size=3"):
        SparseInferenceLinear(torch.eye(8), None, "torch_bsr", block_size=3)


@pytest.mark.parametrize("sparsity", [dict(sparsity=0.75), dict(sparsity=0.5, structure="block", block_size=16),
                                      dict(sparsity=None, structure="nm", n=2, m=4)])
def test_bert_conversion_equals_masked_model(sparsity):
    model = _tiny_bert(**sparsity)
    names = list(sparse_modules(model))
    ids = torch.randint(0, 96, (2, 37))
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    choices = to_cpu_inference_(model, calibration_tokens=64, repeats=1)
    assert not sparse_modules(model)
    converted = {n: m for n, m in model.named_modules() if isinstance(m, SparseInferenceLinear)}
    assert sorted(converted) == sorted(names)
    assert sorted(n for c in choices.values() for n in c.layers) == sorted(names)
    for choice in choices.values():
        assert choice.method in choice.timings and all(t > 0 for t in choice.timings.values())
        if sparsity.get("structure") != "block":
            assert not any(m.endswith("bsr") for m in choice.timings)  # BSR only for block masks
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", _method_params())
def test_forced_method_on_gpt2(method):
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    sparsify_(model, SparsityConfig(sparsity=0.75, structure="block", block_size=8))
    assert all(isinstance(m, SparseConv1D) for m in sparse_modules(model).values())
    ids = torch.randint(0, 96, (3, 11))
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    choices = to_cpu_inference_(model, methods=[method], calibration_tokens=33, repeats=1)
    assert {c.method for c in choices.values()} == {method}
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_conversion_validates_before_touching_the_model():
    model = _tiny_bert(sparsity=0.5)
    with pytest.raises(ValueError, match="'fastest'"):
        to_cpu_inference_(model, methods=["fastest"])
    model.double()
    with pytest.raises(ValueError, match="torch.float64"):
        to_cpu_inference_(model)
    assert all(isinstance(m, SparseLinear) for m in sparse_modules(model).values())
    assert len(sparse_modules(model)) == 12
    with pytest.raises(ValueError, match="no sparse layers"):
        to_cpu_inference_(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_benchmark_inference_leaves_model_untouched():
    model = _tiny_bert(sparsity=0.9)
    result = benchmark_inference(model, batch_size=2, seq_len=16, repeats=1, methods=["dense", "torch_csr"])
    assert len(sparse_modules(model)) == 12  # the original stays a trainable sparse model
    assert result.dense_seconds > 0 and result.sparse_seconds > 0
    assert result.max_abs_diff < 1e-4
    assert set(result.to_dict()["methods"].values()) <= {"dense", "torch_csr"}
    with pytest.raises(ValueError, match="batch_size=0"):
        benchmark_inference(model, batch_size=0)


@pytest.mark.slow
def test_benchmark_script_runs():
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_cpu_inference.py"), "--layers", "1", "--batch", "1",
           "--seq", "8", "--sparsity", "0.9", "--structures", "block16", "--repeats", "1", "--rounds", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("block16") for line in lines) == 3  # two rounds, then the summary row
    assert "speedup over 2 rounds" in out.stdout and re.match(r"block16\s+0\.90\s+[\d.]+x \([\d.]+-[\d.]+\)", lines[-1])


def test_without_numba_falls_back_to_pytorch_representations():
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch\n"
        "from hf_sparse.kernels import numba_available, to_cpu_inference_, SparseInferenceLinear\n"
        "from tests.test_kernels_cpu import _tiny_bert\n"
        "assert not numba_available()\n"
        "model = _tiny_bert(sparsity=0.9)\n"
        "choices = to_cpu_inference_(model, calibration_tokens=16, repeats=1)\n"
        "assert all(not m.startswith('numba') for c in choices.values() for m in c.timings)\n"
        "try:\n"
        "    to_cpu_inference_(_tiny_bert(sparsity=0.9), methods=['numba_csr'])\n"
        "except RuntimeError as err:\n"
        "    assert 'cpu-kernels' in str(err)\n"
        "else:\n"
        "    raise AssertionError('expected a RuntimeError')\n"
        "try:\n"
        "    SparseInferenceLinear(torch.eye(4), None, 'numba_csr')\n"
        "except RuntimeError as err:\n"
        "    assert 'numba' in str(err)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_dense_kept_unless_a_sparse_format_wins_clearly(monkeypatch):
    from hf_sparse.kernels import cpu

    timings = {"dense": 1.0, "torch_csr": 0.97}  # 3% faster: inside the noise margin
    monkeypatch.setattr(cpu, "time_round_robin", lambda calls, repeats, before=None: {m: timings[m] for m in calls})
    model = _tiny_bert(sparsity=0.5)
    choices = to_cpu_inference_(model, methods=["dense", "torch_csr"], calibration_tokens=16, repeats=1)
    assert {c.method for c in choices.values()} == {"dense"}
    timings["torch_csr"] = 1.0 / (cpu.MIN_SPEEDUP + 0.01)
    model = _tiny_bert(sparsity=0.5)
    choices = to_cpu_inference_(model, methods=["dense", "torch_csr"], calibration_tokens=16, repeats=1)
    assert {c.method for c in choices.values()} == {"torch_csr"}
