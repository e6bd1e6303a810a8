"""FLOP accounting: closed form of Algorithm 2, actual-mask sparse FLOPs, training FLOPs, Table 1 cardinality."""

import json

import pytest
import torch
from transformers import BertConfig, BertForPreTraining, GPT2Config, GPT2LMHeadModel

from hf_sparse import SparsityConfig, sparse_modules, sparsify_
from hf_sparse import flops
from hf_sparse.flops import (
    GROUPS,
    TrainingFlopsMeter,
    count,
    mask_search_space,
    search_space_cardinality,
    training_flops,
    transformer_flops,
)

V, H, S, L = 96, 32, 16, 2


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=H, n_layer=L, n_head=4, n_positions=S,
                                      bos_token_id=0, eos_token_id=0))


def tiny_bert():
    torch.manual_seed(0)
    return BertForPreTraining(BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                                         intermediate_size=4 * H, max_position_embeddings=S))


def test_closed_form_hand_values():
    f = transformer_flops(vocab_size=V, hidden_size=H, seq_len=S, num_layers=L)
    assert f["qkv"] == 3 * 2 * 3 * L * S * H * H
    assert f["ffn"] == 3 * 16 * L * S * H * H
    assert f["attn_scores"] == f["attn_values"] == 3 * 2 * L * S * S * H
    assert f["embeddings"] == 6 * S * H * V
    assert f["total"] == sum(v for k, v in f.items() if k != "total")
    # GPT-3 Small at S=1024 (the Sparse-IFT paper's WikiText-103 setup): Table 15 lists 8.763e11 FLOPs/seq.
    assert transformer_flops(50257, 768, 1024, 12)["total"] == pytest.approx(8.763e11, rel=3e-3)


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_gpt2_matches_algorithm_2(batch):
    c = count(tiny_gpt2(), seq_len=S, batch_size=batch)
    closed = transformer_flops(V, H, S, L)
    groups = c.groups
    for g in ("qkv", "attn_scores", "attn_values", "attn_output", "ffn", "embeddings"):
        assert groups[g].dense_train == batch * closed[g], g
        assert groups[g].sparse_train == groups[g].dense_train
    assert groups["other"].dense_forward == 0
    assert c.dense_train == c.sparse_train == batch * closed["total"]
    assert c.sparse_fraction == 1.0


def test_sparse_flops_follow_the_actual_mask():
    model = tiny_gpt2()
    sparsify_(model, SparsityConfig(sparsity=0.75, seed=0))
    found = sparse_modules(model)
    # Change one mask by hand: the count must read the mask, not the configured sparsity.
    name, layer = next(iter(found.items()))
    mask = torch.zeros_like(layer.weight_mask)
    mask.view(-1)[:7] = True
    layer.set_mask_(mask)
    c = count(model, seq_len=S, batch_size=2)
    for n, m in found.items():
        entry = c.module(n)
        assert entry.sparse_forward == 2 * 2 * S * int(m.weight_mask.sum())
        assert entry.dense_forward == 2 * 2 * S * m.weight.numel()
    assert c.module(name).density == 7 / layer.weight.numel()
    assert c.module(name).sparse_train == 3 * 2 * 2 * S * 7
    dense = count(tiny_gpt2(), seq_len=S, batch_size=2)
    assert c.dense_forward == dense.dense_forward
    assert c.groups["attn_scores"].sparse_forward == dense.groups["attn_scores"].sparse_forward
    assert c.groups["embeddings"].sparse_forward == dense.groups["embeddings"].dense_forward
    assert c.sparse_forward < dense.sparse_forward


def test_bert_groups_and_pooled_heads():
    c = count(tiny_bert(), seq_len=S, batch_size=2)
    assert c.module("bert.encoder.layer.0.attention.self.key").group == "qkv"
    assert c.module("bert.encoder.layer.1.attention.output.dense").group == "attn_output"
    assert c.module("bert.encoder.layer.0.output.dense").group == "ffn"
    assert c.module("cls.predictions.decoder").group == "embeddings"
    assert c.module("cls.predictions.transform.dense").group == "other"
    pooler = c.module("bert.pooler.dense")
    assert pooler.group == "other" and pooler.tokens == 2 and pooler.dense_forward == 2 * 2 * H * H
    assert c.module("cls.seq_relationship").tokens == 2
    assert c.module("bert.encoder.layer.0.attention.self", "attn_scores").dense_forward == 2 * 2 * S * S * H
    # Encoder groups of BERT follow the same closed form as GPT-2's blocks.
    closed = transformer_flops(V, H, S, L)
    for g in ("qkv", "attn_scores", "attn_values", "attn_output", "ffn", "embeddings"):
        assert c.groups[g].dense_train == 2 * closed[g], g


def test_report_forms():
    c = count(tiny_bert(), seq_len=S)
    d = json.loads(json.dumps(c.to_dict()))
    assert set(d["groups"]) == set(GROUPS)
    assert d["total"]["sparse_train"] == c.sparse_train
    assert len(d["modules"]) == len(c.modules)
    text = str(c)
    assert "total" in text and "ffn" in text
    assert "bert.pooler.dense" in c.to_table(per_module=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="seq_len=0"):
        count(tiny_gpt2(), seq_len=0)
    with pytest.raises(ValueError, match="batch_size=-1"):
        count(tiny_gpt2(), seq_len=4, batch_size=-1)
    with pytest.raises(ValueError, match="no Linear"):
        count(torch.nn.Sequential(torch.nn.ReLU()), seq_len=4)


def test_training_flops_from_density_history():
    model = tiny_gpt2()
    c = count(model, seq_len=S, batch_size=4)
    name = "transformer.h.0.mlp.c_fc"
    entry = c.module(name)
    per_step = c.dense_train
    # 10 steps fully dense, then 5 steps with c_fc at density 0.25.
    hist = [(10, None), (5, {name: 0.25})]
    expected = 15 * per_step - 5 * 0.75 * entry.dense_train
    assert training_flops(c, hist) == pytest.approx(expected, rel=1e-12)
    meter = TrainingFlopsMeter(c)
    meter.update(10)
    meter.update(5, {name: 0.25})
    assert meter.total == pytest.approx(expected, rel=1e-12) and meter.steps == 15
    other = TrainingFlopsMeter(c)
    other.load_state_dict(meter.state_dict())
    assert other.total == meter.total and other.steps == 15
    with pytest.raises(ValueError, match="not counted"):
        training_flops(c, [(1, {"nope": 0.5})])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        training_flops(c, [(1, {name: 1.5})])
    with pytest.raises(ValueError, match="steps=-1"):
        training_flops(c, [(-1, None)])


def test_search_space_cardinality_table_1():
    d_in, d_out = 768, 3072
    assert search_space_cardinality("dense", d_in, d_out, 0.0) == d_in * d_out
    assert search_space_cardinality("wide", d_in, d_out, 0.75) == (2 * d_in) * (2 * d_out)
    assert search_space_cardinality("parallel", d_in, d_out, 0.75) == 4 * d_in * d_out
    assert search_space_cardinality("parallel", d_in, d_out, 0.5) == 2 * d_in * d_out
    # d_sf = 768 * 3072 / (3840 * 0.5) = 1228.8 -> 1229
    assert search_space_cardinality("factorized", d_in, d_out, 0.5) == 1229 * (d_in + d_out)
    assert search_space_cardinality("doped", d_in, d_out, 0.9) == d_in * d_out
    with pytest.raises(ValueError, match="kind='deep'"):
        search_space_cardinality("deep", d_in, d_out, 0.5)
    with pytest.raises(ValueError, match="nearest valid sparsities are 0.5"):
        search_space_cardinality("parallel", d_in, d_out, 0.6)


def test_mask_search_space_of_a_model():
    model = tiny_gpt2()
    sparsify_(model, SparsityConfig(sparsity=0.5))
    assert mask_search_space(model) == sum(m.weight.numel() for m in sparse_modules(model).values())
    assert flops.mask_search_space(tiny_gpt2()) == 0


def test_with_densities_is_a_copy():
    c = count(tiny_gpt2(), seq_len=S)
    name = "transformer.h.1.attn.c_proj"
    planned = c.with_densities({name: 0.1})
    assert planned.module(name).sparse_forward == pytest.approx(0.1 * c.module(name).dense_forward)
    assert planned.module(name).density == 0.1 and c.module(name).density == 1.0
    assert planned.dense_forward == c.dense_forward
    with pytest.raises(ValueError, match="not counted"):
        c.with_densities({"transformer.h.1.attn": 0.5})  # attention products have no weights


def test_cli_flops(capsys):
    from hf_sparse.cli import main

    args = ["flops", "--model", "gpt2", "--hidden_size", "768", "--num_layers", "12", "--num_heads", "12",
            "--seq_len", "1024", "--json"]
    assert main(args) == 0
    dense = json.loads(capsys.readouterr().out)
    assert dense["total"]["dense_train"] == transformer_flops(50257, 768, 1024, 12)["total"]
    assert main(args + ["--sparsity", "0.5", "--wide"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert wide["total"]["sparse_train"] / dense["total"]["sparse_train"] == pytest.approx(1.17, abs=0.01)
    assert main(["flops", "--model", "bert", "--hidden_size", "64", "--num_heads", "4", "--num_layers", "2",
                 "--seq_len", "32", "--sparsity", "0.9"]) == 0
    assert "total" in capsys.readouterr().out
    assert main(["flops", "--sparsity", "1.5"]) == 2
    assert "sparsity=1.5" in capsys.readouterr().err
