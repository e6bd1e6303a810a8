"""Converted models as users run them: `torch.inference_mode`, transformers pipelines, greedy generation with the
few-rows (decode) kernel; outputs equal the dense masked model's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, BertTokenizer, GPT2Config, GPT2LMHeadModel, pipeline

from hf_sparse.config import SparsityConfig
from hf_sparse.kernels import SparseInferenceLinear, numba_available, to_cpu_inference_
from hf_sparse.patching import densify_, sparsify_

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed (extra 'cpu-kernels')")
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "to", "house", "big", "small", "red", "blue", "and"]


def _tokenizer(tmp_path) -> BertTokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"w{i}" for i in range(44)]  # 64 entries
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(vocab_file=str(path))


def _bert_mlm() -> BertForMaskedLM:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=64)).eval()
    return sparsify_(model, SparsityConfig(sparsity=0.9, mask_init="magnitude"))


def _gpt2_lm() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=96,
                                       bos_token_id=2, eos_token_id=3)).eval()
    return sparsify_(model, SparsityConfig(sparsity=0.9, mask_init="magnitude"))


def _rows_for_decode(monkeypatch) -> None:
    """Makes the races pick ``numba_csr`` for many rows and the few-rows kernel for decode (tiny layers would
    otherwise often keep dense, and the test is about the paths, not the timings)."""
    from hf_sparse.kernels import cpu

    fixed = {"numba_sell": 0.5, "numba_csr": 1.0}
    monkeypatch.setattr(cpu, "time_round_robin", lambda calls, repeats, before=None: {
        m: fixed.get(m, 2.0) for m in calls})


@pytest.mark.parametrize("methods", [["numba_csr"], ["numba_bsr", "numba_csr"], None])
def test_bert_under_inference_mode_and_no_grad(methods):
    model = _bert_mlm()
    ids = torch.randint(5, 64, (3, 32))  # 32 tokens: panel layout, packed feed-forward, shared query/key/value pack
    with torch.no_grad():
        expected = model(ids).logits
    to_cpu_inference_(model, methods=methods, calibration_tokens=96, repeats=1)
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(model(ids[:, :20]).logits, _masked(ids[:, :20]), rtol=1e-4, atol=1e-4)


def _masked(ids):
    with torch.no_grad():
        return _bert_mlm()(ids).logits


def test_shared_pack_is_never_stale_after_in_place_edit():
    model = _bert_mlm()
    to_cpu_inference_(model, methods=["numba_csr"], calibration_tokens=64, repeats=1)
    attention = model.bert.encoder.layer[0].attention.self
    query, key = attention.query, attention.key
    assert query.pack_cache is key.pack_cache is not None
    reference = {n: (densify_(copy.deepcopy(_bert_mlm())).bert.encoder.layer[0].attention.self.get_submodule(n))
                 for n in ("query", "key")}
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            x = torch.randn(2, 32, 32)
            first = query(x)
            x.mul_(-2.0)  # same tensor object, new values
            torch.testing.assert_close(key(x), reference["key"](x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(query(x), -2.0 * (first - query.bias) + query.bias, rtol=1e-4, atol=1e-4)
            attention(x)  # inside the parent's forward the pack is shared, and dropped when it returns
            assert query.pack_cache._entry == ()


def test_few_rows_representation_per_row_count():
    weight = torch.randn(48, 40) * (torch.rand(48, 40) > 0.8)
    bias = torch.randn(48)
    layer = SparseInferenceLinear(weight, bias, "numba_csr", few_rows_method="numba_sell", few_rows=4)
    assert layer.few_rows == 4 and "numba_sell (<= 4 rows)" in repr(layer)
    assert layer._few.arrays[2].dtype.itemsize == 1  # 8-bit column steps
    with torch.inference_mode():
        for shape in [(1, 40), (1, 1, 40), (2, 2, 40), (5, 40), (3, 33, 40)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(layer(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
        strided = torch.randn(40, 3).t()  # 3 rows that are not contiguous
        torch.testing.assert_close(layer(strided), F.linear(strided, weight, bias), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # an input that requires grad is fine while grad is off
        x = torch.randn(2, 40, requires_grad=True)
        torch.testing.assert_close(layer(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="few_rows=0"):
        SparseInferenceLinear(weight, bias, "numba_csr", few_rows_method="numba_sell")


def test_greedy_generation_matches_dense(monkeypatch):
    _rows_for_decode(monkeypatch)
    model = _gpt2_lm()
    dense = densify_(copy.deepcopy(model))
    ids = torch.randint(5, 64, (1, 20))
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = dense.generate(ids, **kwargs)
    choices = to_cpu_inference_(model, calibration_tokens=20, repeats=1)
    assert all(c.method == "numba_csr" and c.decode_method == "numba_sell" and c.few_rows == 16
               for c in choices.values())
    calls = []
    layer = model.transformer.h[0].mlp.c_fc
    layer.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[:-1].numel()))
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            assert torch.equal(model.generate(ids, **kwargs), expected)
    assert calls[:3] == [20, 1, 1]  # prefill through the panel kernel, then one row per decode step


def test_decode_race_records_its_choice():
    model = _gpt2_lm()
    choices = to_cpu_inference_(model, calibration_tokens=20, repeats=1)
    for choice in choices.values():
        assert choice.decode_method in choice.decode_timings
        assert "numba_sell" not in choice.timings  # the rows kernel only races for few rows
        assert choice.few_rows == 0 or choice.decode_method != choice.method
    none = to_cpu_inference_(_gpt2_lm(), calibration_tokens=20, repeats=1, decode_tokens=None)
    assert all(c.decode_method is None and c.few_rows == 0 for c in none.values())
    with pytest.raises(ValueError, match="decode_tokens=17"):
        to_cpu_inference_(_gpt2_lm(), decode_tokens=17)


def test_fill_mask_pipeline(tmp_path):
    tokenizer = _tokenizer(tmp_path)
    text = "the cat sat on the [MASK] and the dog ran to the big red house"
    reference = pipeline("fill-mask", model=densify_(_bert_mlm()), tokenizer=tokenizer, device="cpu")(text, top_k=5)
    model = _bert_mlm()
    to_cpu_inference_(model, methods=["numba_csr"], calibration_tokens=32, repeats=1)
    got = pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")(text, top_k=5)
    assert [r["token"] for r in got] == [r["token"] for r in reference]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in reference], abs=1e-5)


def test_text_generation_pipeline(tmp_path, monkeypatch):
    _rows_for_decode(monkeypatch)
    tokenizer = _tokenizer(tmp_path)
    kwargs = dict(max_new_tokens=8, do_sample=False, return_full_text=False)
    text = "the small blue cat"
    reference = pipeline("text-generation", model=densify_(_gpt2_lm()), tokenizer=tokenizer, device="cpu")
    model = _gpt2_lm()
    to_cpu_inference_(model, calibration_tokens=8, repeats=1)
    got = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    assert got(text, **kwargs)[0]["generated_text"] == reference(text, **kwargs)[0]["generated_text"]


@pytest.mark.parametrize("kind", ["bert_pretraining", "gpt2_lm"])
def test_bench_inference_cli_loads_the_head_and_times_generation(tmp_path, kind, capsys, recwarn):
    import logging

    from transformers import BertForPreTraining

    from hf_sparse import checkpoint as ckpt
    from hf_sparse.cli import main

    torch.manual_seed(0)
    if kind == "gpt2_lm":
        model = _gpt2_lm()
    else:
        model = BertForPreTraining(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64,
                                              max_position_embeddings=32)).eval()
        sparsify_(model, SparsityConfig(sparsity=0.75, seed=0))
    path = ckpt.save_pretrained(model, tmp_path / "ck")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        assert main(["bench-inference", str(path), "--batch_size", "1", "--seq_len", "16", "--repeats", "1",
                     "--prompt_len", "8", "--new_tokens", "4"]) == 0
    finally:
        logging.getLogger().removeHandler(handler)
    out = capsys.readouterr()
    text = out.out + out.err
    assert type(model).__name__ in out.out  # the checkpoint's own class, heads included
    assert "LOAD REPORT" not in text and "unexpected" not in text.lower()
    assert ("greedy generation" in out.out) == (kind == "gpt2_lm")
    if kind == "gpt2_lm":
        assert "same tokens: yes" in out.out and "decode" in out.out
    assert not [w for w in recwarn if "beta" in str(w.message)]  # no PyTorch CSR beta warning
    assert not [r for r in records if r.levelno >= logging.WARNING]
