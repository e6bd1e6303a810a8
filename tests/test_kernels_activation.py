"""Activations fused into converted layers: `SparseInferenceLinear(activation=...)` on every path, and
`to_cpu_inference_(fuse_activations=...)` on GPT-2 and BERT, against the unfused dense masked models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel
from transformers import activations as hf_activations

from hf_sparse.config import SparsityConfig
from hf_sparse.kernels import SparseInferenceLinear, numba_available, to_cpu_inference_
from hf_sparse.kernels.cpu import activation_name
from hf_sparse.kernels.inference_linear import ACTIVATIONS
from hf_sparse.patching import sparsify_

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed (extra 'cpu-kernels')")
REFERENCE = {"gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"), "relu": F.relu}


def _weight(out_f: int = 24, in_f: int = 40) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(out_f, in_f) * (torch.rand(out_f, in_f) < 0.3)


def test_activation_names_of_modules():
    assert activation_name(hf_activations.NewGELUActivation()) == "gelu_tanh"
    assert activation_name(hf_activations.GELUTanh()) == "gelu_tanh"
    assert activation_name(hf_activations.GELUActivation()) == "gelu"
    assert activation_name(hf_activations.GELUActivation(use_gelu_python=True)) == "gelu"
    assert activation_name(nn.GELU()) == "gelu"
    assert activation_name(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert activation_name(nn.ReLU()) == "relu"
    assert activation_name(nn.SiLU()) is None
    assert activation_name(hf_activations.FastGELUActivation()) is None  # same function, other rounding: left alone


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        SparseInferenceLinear(_weight(), None, "dense", activation="swish")


@needs_numba
def test_kernel_codes_follow_the_names():
    from hf_sparse.kernels import _numba_rows

    codes = (_numba_rows.ACT_GELU, _numba_rows.ACT_GELU_TANH, _numba_rows.ACT_RELU)
    assert [ACTIVATIONS.index(name) + 1 for name in ("gelu", "gelu_tanh", "relu")] == list(codes)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("method", ["dense", "torch_csr", "numba_csr", "numba_sell"])
def test_every_path_applies_the_activation(method, activation):
    if method.startswith("numba") and not numba_available():
        pytest.skip("numba not installed (extra 'cpu-kernels')")
    weight, bias = _weight(), torch.randn(24)
    layer = SparseInferenceLinear(weight, bias, method, activation=activation)
    assert f"activation={activation}" in repr(layer)
    torch.manual_seed(1)
    # Large inputs reach pre-activations of several hundred: the tanh GELU's exponent cap must keep them finite.
    for x in (torch.randn(1, 1, 40), torch.randn(2, 16, 40), 60 * torch.randn(3, 40)):
        with torch.inference_mode():
            got = layer(x)
        expected = REFERENCE[activation](F.linear(x, weight, bias))
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@needs_numba
def test_decode_kernel_applies_the_activation_per_thread():
    """The few-rows kernel with 1 and 2 threads (the epilogue runs in each thread's own rows)."""
    weight, bias = _weight(70, 300), torch.randn(70)
    layer = SparseInferenceLinear(weight, bias, "numba_csr", few_rows_method="numba_sell", few_rows=4,
                                  activation="gelu_tanh")
    x = torch.randn(3, 300)
    expected = F.gelu(F.linear(x, weight, bias), approximate="tanh")
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def _gpt2(activation_function: str = "gelu_new") -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=96,
                                       bos_token_id=2, eos_token_id=3,
                                       activation_function=activation_function)).eval()
    return sparsify_(model, SparsityConfig(sparsity=0.8, mask_init="magnitude"))


@needs_numba
@pytest.mark.parametrize("methods", [("numba_sell",), ("numba_csr", "numba_sell"), None])
def test_gpt2_activation_fused_same_logits_and_tokens(methods):
    model = _gpt2()
    converted = copy.deepcopy(model)
    to_cpu_inference_(converted, methods=methods, calibration_tokens=32, repeats=1)
    for block in converted.transformer.h:
        assert isinstance(block.mlp.act, nn.Identity)
        assert block.mlp.c_fc.activation == "gelu_tanh" and block.mlp.c_proj.activation is None
        assert block.attn.c_attn.activation is None
    ids = torch.randint(4, 64, (1, 16))
    with torch.inference_mode():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
        kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(converted.generate(ids, **kwargs), model.generate(ids, **kwargs))


@needs_numba
def test_fusion_can_be_switched_off_and_skips_unknown_activations():
    kept = _gpt2()
    to_cpu_inference_(kept, calibration_tokens=32, repeats=1, fuse_activations=False)
    assert all(isinstance(b.mlp.act, hf_activations.NewGELUActivation) and b.mlp.c_fc.activation is None
               for b in kept.transformer.h)
    silu = _gpt2("silu")
    act_type = type(silu.transformer.h[0].mlp.act)
    to_cpu_inference_(silu, calibration_tokens=32, repeats=1)
    assert act_type is not nn.Identity
    assert all(type(b.mlp.act) is act_type and b.mlp.c_fc.activation is None for b in silu.transformer.h)


@needs_numba
def test_bert_packed_feed_forward_with_fused_gelu():
    """BERT's erf GELU moves into the first feed-forward projection, whose output still reaches the second one in
    the panel layout (the activation keeps its strides)."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False).eval()
    model = sparsify_(model, SparsityConfig(sparsity=0.8, mask_init="magnitude"))
    converted = copy.deepcopy(model)
    to_cpu_inference_(converted, methods=["numba_csr"], calibration_tokens=64, repeats=1)
    layer = converted.encoder.layer[0]
    assert isinstance(layer.intermediate.intermediate_act_fn, nn.Identity)
    assert layer.intermediate.dense.activation == "gelu" and layer.intermediate.dense.packed_output
    ids = torch.randint(4, 64, (2, 32))
    with torch.inference_mode():
        torch.testing.assert_close(converted(ids).last_hidden_state, model(ids).last_hidden_state,
                                   rtol=1e-4, atol=1e-4)


@needs_numba
@pytest.mark.parametrize("fuse", [True, False])
def test_benchmark_generation_passes_the_fusion_choice_on(monkeypatch, fuse):
    from hf_sparse.kernels import benchmark as bench

    seen = []
    real = bench.to_cpu_inference_

    def spy(model, **kwargs):
        choices = real(model, **kwargs)
        seen.append((kwargs["fuse_activations"], type(model.transformer.h[0].mlp.act)))
        return choices

    monkeypatch.setattr(bench, "to_cpu_inference_", spy)
    result = bench.benchmark_generation(_gpt2(), prompt_len=8, new_tokens=4, repeats=1, fuse_activations=fuse)
    assert result.same_tokens
    assert seen == [(fuse, nn.Identity if fuse else hf_activations.NewGELUActivation)]
