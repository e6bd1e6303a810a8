"""Compressed inference export: active values + bitmask, its size against dense fp32, and the loader."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from hf_sparse import SparsityConfig, get_sparsity_config, sparse_modules, sparsify_
from hf_sparse.checkpoint import COMPRESSED_WEIGHTS, export, load_compressed
from hf_sparse.checkpoint.masks import CheckpointError


def bert(sparsity=0.9, structure="unstructured"):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=256, max_position_embeddings=16)).eval()
    return sparsify_(model, SparsityConfig(sparsity=sparsity, structure=structure, block_size=8, seed=0))


def gpt2():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                                       bos_token_id=0, eos_token_id=0)).eval()
    return sparsify_(model, SparsityConfig(sparsity=None, structure="nm", seed=0))


IDS = torch.arange(10).reshape(2, 5)


def test_compressed_size_at_90_percent(tmp_path):
    model = bert()
    report = export(model, tmp_path / "c")
    # per sparse weight: 10% of the values in fp32 + 1 bit => 0.1 * 4 + 1 / 8 = 0.525 bytes of 4
    weights = sum(m.weight.numel() for m in sparse_modules(model).values())
    active = sum(int(m.weight_mask.sum()) for m in sparse_modules(model).values())
    assert report.sparse_bytes == active * 4 + sum((m.weight.numel() + 7) // 8 for m in sparse_modules(model).values())
    assert report.sparse_dense_fp32_bytes == weights * 4
    assert report.sparse_ratio == pytest.approx(0.13125, abs=1e-3) and report.sparse_ratio <= 0.15
    assert report.file_bytes == (tmp_path / "c" / COMPRESSED_WEIGHTS).stat().st_size
    # the file is the sparse part plus the dense tensors (embeddings, biases, LayerNorms) plus the JSON header
    rest = report.dense_fp32_bytes - report.sparse_dense_fp32_bytes
    header = int.from_bytes((tmp_path / "c" / COMPRESSED_WEIGHTS).read_bytes()[:8], "little") + 8
    assert report.file_bytes == report.sparse_bytes + rest + header
    half = export(model, tmp_path / "h", dtype=torch.float16)
    assert half.sparse_ratio == pytest.approx(0.1 * 2 / 4 + 1 / 32, abs=1e-3)
    stored = load_file(str(tmp_path / "c" / COMPRESSED_WEIGHTS))
    q = "bert.encoder.layer.0.attention.self.query"
    assert stored[q + ".weight.values"].numel() == int(sparse_modules(model)[q].weight_mask.sum())
    assert q + ".weight" not in stored


@pytest.mark.parametrize("make,cls", [(bert, BertForMaskedLM), (gpt2, AutoModelForCausalLM)])
def test_compressed_round_trip(tmp_path, make, cls):
    model = make()
    first = next(iter(sparse_modules(model).values()))
    with torch.no_grad():  # an active weight that is exactly zero stays active
        first.weight.view(-1)[first.weight_mask.flatten().nonzero()[0, 0]] = 0.0
    export(model, tmp_path)
    loaded = load_compressed(cls, tmp_path)
    for name, m in sparse_modules(model).items():
        assert torch.equal(sparse_modules(loaded)[name].weight_mask, m.weight_mask)
        assert torch.equal(sparse_modules(loaded)[name].weight, m.weight)
    assert get_sparsity_config(loaded) == get_sparsity_config(model)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)
    # tied input / output embeddings survive
    assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()


def test_dense_format_is_vanilla(tmp_path):
    model = bert(structure="block")
    report = export(model, tmp_path, format="dense")
    assert report.ratio == pytest.approx(1.0, abs=0.02)
    vanilla = BertForMaskedLM.from_pretrained(tmp_path).eval()
    assert not sparse_modules(vanilla)
    with torch.no_grad():
        assert torch.equal(vanilla(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="'zip'"):
        export(bert(), tmp_path / "x", format="zip")
    with pytest.raises(ValueError, match="int8"):
        export(bert(), tmp_path / "x", dtype=torch.int8)
    assert not (tmp_path / "x").exists()


def test_tampered_values_rejected(tmp_path):
    export(bert(), tmp_path)
    tensors = load_file(str(tmp_path / COMPRESSED_WEIGHTS))
    key = "bert.encoder.layer.0.attention.self.query.weight.values"
    tensors[key] = tensors[key][:-1].clone()
    save_file(tensors, str(tmp_path / COMPRESSED_WEIGHTS))
    with pytest.raises(CheckpointError, match="self.query.*values for"):
        load_compressed(BertForMaskedLM, tmp_path)
    assert json.loads((tmp_path / "compressed_config.json").read_text())["format"] == "compressed"
