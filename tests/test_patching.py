import copy

import pytest
import torch
from torch import nn
from transformers import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from transformers.pytorch_utils import Conv1D

import hf_sparse
from hf_sparse import SparseConv1D, SparseLinear, SparsityConfig, densify_, sparse_modules, sparsify_

from conftest import tiny_bert_config, tiny_gpt2_config

BERT_SUFFIXES = ["attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense"]
GPT2_SUFFIXES = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def _expected(prefix, block, suffixes, layers=2):
    return [f"{prefix}{block}.{i}.{s}" for i in range(layers) for s in suffixes]


@pytest.mark.parametrize(
    "cls, prefix",
    [(BertForPreTraining, "bert."), (BertForMaskedLM, "bert."), (BertForQuestionAnswering, "bert."),
     (BertForSequenceClassification, "bert."), (BertModel, "")],
)
def test_bert_default_targets_for_every_head(cls, prefix):
    model = cls(tiny_bert_config())
    sparsify_(model, SparsityConfig(sparsity=0.5))
    found = sparse_modules(model)
    assert list(found) == _expected(prefix, "encoder.layer", BERT_SUFFIXES)
    assert all(type(m) is SparseLinear for m in found.values())


@pytest.mark.parametrize(
    "cls, prefix", [(GPT2LMHeadModel, "transformer."), (GPT2ForSequenceClassification, "transformer."), (GPT2Model, "")]
)
def test_gpt2_default_targets_for_every_head(cls, prefix):
    model = cls(tiny_gpt2_config())
    sparsify_(model, SparsityConfig(sparsity=0.5))
    found = sparse_modules(model)
    assert list(found) == _expected(prefix, "h", GPT2_SUFFIXES)
    assert all(type(m) is SparseConv1D for m in found.values())


def test_embeddings_heads_and_pooler_stay_dense(tiny_bert):
    sparsify_(tiny_bert, SparsityConfig(sparsity=0.5))
    assert type(tiny_bert.bert.pooler.dense) is nn.Linear
    assert type(tiny_bert.cls.predictions.decoder) is nn.Linear
    assert type(tiny_bert.cls.seq_relationship) is nn.Linear
    assert type(tiny_bert.bert.embeddings.word_embeddings) is nn.Embedding


@pytest.mark.parametrize("structure, extra", [
    ("unstructured", {}), ("block", {"block_size": 16}), ("block", {"block_size": 8, "block_norm": "linf"}),
    ("nm", {"sparsity": None}), ("nm_transposable", {"sparsity": None}),
])
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_exact_counts_every_structure(family, structure, extra):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_bert_config()) if family == "bert" else GPT2LMHeadModel(tiny_gpt2_config())
    kw = {"sparsity": 0.75, **extra}
    cfg = SparsityConfig(structure=structure, **kw)
    sparsify_(model, cfg)
    for name, m in sparse_modules(model).items():
        st = m.structure
        k = hf_sparse.structure.num_active(st, m.weight.shape, cfg.density)
        assert int(m.weight_mask.sum()) == hf_sparse.structure.granules_to_elements(st, k), name
        assert m.weight[~m.weight_mask].eq(0).all(), name
        if structure == "nm":  # groups run along the input dimension in both layouts
            w = m.weight_mask if m.input_dim == 1 else m.weight_mask.T
            assert w.reshape(w.shape[0], -1, 4).sum(-1).eq(2).all(), name


def test_magnitude_mask_keeps_the_largest_weights(tiny_bert):
    q = tiny_bert.bert.encoder.layer[0].attention.self.query
    original = q.weight.detach().clone()
    sparsify_(tiny_bert, SparsityConfig(sparsity=0.75, mask_init="magnitude"))
    q = tiny_bert.bert.encoder.layer[0].attention.self.query
    kept = original.abs()[q.weight_mask]
    assert kept.min() >= original.abs()[~q.weight_mask].max()
    torch.testing.assert_close(q.weight[q.weight_mask], original[q.weight_mask])  # values kept


def test_truncated_normal_init_and_random_pattern_are_seeded():
    def build(seed):
        torch.manual_seed(123)
        model = BertForPreTraining(tiny_bert_config(hidden_size=64, intermediate_size=256))
        return sparsify_(model, SparsityConfig(sparsity=0.9, init="truncated_normal", seed=seed))

    a, b, c = build(0), build(0), build(1)
    for (name, ma), mb, mc in zip(sparse_modules(a).items(), sparse_modules(b).values(), sparse_modules(c).values()):
        assert torch.equal(ma.weight_mask, mb.weight_mask) and torch.equal(ma.weight, mb.weight), name
        assert not torch.equal(ma.weight_mask, mc.weight_mask), name
    w = torch.cat([m.weight[m.weight_mask] for m in sparse_modules(a).values()])
    assert w.abs().max() <= 0.04  # truncated at two standard deviations
    assert 0.015 < w.std() < 0.02  # a normal truncated at 2 sigma has std 0.88 sigma


def test_regex_list_suffix_and_exclude(tiny_bert):
    model = copy.deepcopy(tiny_bert)
    sparsify_(model, SparsityConfig(target_modules=r".*\.attention\.self\.(query|value)"))
    assert list(sparse_modules(model)) == _expected("bert.", "encoder.layer", ["attention.self.query", "attention.self.value"])

    model = copy.deepcopy(tiny_bert)
    sparsify_(model, SparsityConfig(target_modules=["key", "bert.encoder.layer.1.intermediate.dense"]))
    assert list(sparse_modules(model)) == [
        "bert.encoder.layer.0.attention.self.key", "bert.encoder.layer.1.attention.self.key",
        "bert.encoder.layer.1.intermediate.dense"]

    model = copy.deepcopy(tiny_bert)
    sparsify_(model, SparsityConfig(exclude_modules=["query", "key", "value"]))
    assert list(sparse_modules(model)) == _expected(
        "bert.", "encoder.layer", ["attention.output.dense", "intermediate.dense", "output.dense"])


def test_all_linear_excludes_heads_and_output_embeddings(tiny_bert, tiny_gpt2):
    sparsify_(tiny_bert, SparsityConfig(target_modules="all-linear"))
    names = list(sparse_modules(tiny_bert))
    assert names == _expected("bert.", "encoder.layer", BERT_SUFFIXES) + ["bert.pooler.dense"]
    sparsify_(tiny_gpt2, SparsityConfig(target_modules="all-linear"))
    assert list(sparse_modules(tiny_gpt2)) == _expected("transformer.", "h", GPT2_SUFFIXES)


def test_erk_distribution_preserves_overall_density():
    model = BertForPreTraining(tiny_bert_config(hidden_size=64, intermediate_size=256))
    sparsify_(model, SparsityConfig(sparsity=0.8, distribution="erk"))
    report = hf_sparse.sparsity_report(model)
    assert report.density == pytest.approx(0.2, abs=1e-3)
    by_name = {layer.name: layer for layer in report.layers}
    q = by_name["bert.encoder.layer.0.attention.self.query"]
    ffn = by_name["bert.encoder.layer.0.intermediate.dense"]
    assert q.density > ffn.density  # square layers are denser than the 4x wider FFN under ERK


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()])


def _assert_unchanged(model, snap):
    state, types = snap
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert hf_sparse.get_sparsity_config(model) is None


@pytest.mark.parametrize("cfg, message", [
    (SparsityConfig(structure="block", block_size=48), "block_size=48 does not divide"),
    (SparsityConfig(sparsity=None, structure="nm", n=3, m=7), "m=7 does not divide the input dimension"),
    (SparsityConfig(target_modules=["query", "nonexistent"]), "'nonexistent'"),
    (SparsityConfig(target_modules=r"nothing\.here"), "matched no module"),
    (SparsityConfig(target_modules=r".*LayerNorm"), "not nn.Linear or Conv1D"),
    (SparsityConfig(target_modules=r"(unclosed"), "not a valid regular expression"),
    (SparsityConfig(exclude_modules=r".*"), "No target modules left"),
])
def test_validation_errors_leave_the_model_unchanged(tiny_bert, cfg, message):
    snap = _snapshot(tiny_bert)
    with pytest.raises(ValueError, match=message):
        sparsify_(tiny_bert, cfg)
    _assert_unchanged(tiny_bert, snap)


def test_block_error_names_the_module(tiny_bert):
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.0\.attention\.self\.query: block_size=64"):
        sparsify_(tiny_bert, SparsityConfig(structure="block", block_size=64))


def test_already_sparse_and_unknown_model_type(tiny_bert):
    sparsify_(tiny_bert, SparsityConfig(sparsity=0.5))
    snap = _snapshot(tiny_bert)
    with pytest.raises(ValueError, match="already sparsified"):
        sparsify_(tiny_bert, SparsityConfig(sparsity=0.9))
    assert [(n, type(m)) for n, m in tiny_bert.named_modules()] == snap[1]

    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="No default target modules for model_type=None"):
        sparsify_(plain, SparsityConfig())
    sparsify_(plain, SparsityConfig(sparsity=0.5, target_modules=["0", "2"]))
    assert list(sparse_modules(plain)) == ["0", "2"]
    with pytest.raises(TypeError, match="SparsityConfig"):
        sparsify_(nn.Linear(2, 2), {"sparsity": 0.5})


def test_densify_restores_plain_classes_and_keeps_weights(tiny_gpt2):
    sparsify_(tiny_gpt2, SparsityConfig(sparsity=0.75))
    masked = {n: m.weight.detach().clone() for n, m in sparse_modules(tiny_gpt2).items()}
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        before = tiny_gpt2(ids).logits
    assert densify_(tiny_gpt2) is tiny_gpt2
    assert not sparse_modules(tiny_gpt2)
    assert all(type(tiny_gpt2.get_submodule(n)) is Conv1D for n in masked)
    for n, w in masked.items():
        assert torch.equal(tiny_gpt2.get_submodule(n).weight, w)
    with torch.no_grad():
        torch.testing.assert_close(tiny_gpt2(ids).logits, before)
    with pytest.raises(ValueError, match="no sparse modules"):
        densify_(tiny_gpt2)


def test_forward_equals_dense_model_with_same_zeros(tiny_bert):
    sparsify_(tiny_bert, SparsityConfig(sparsity=0.9, structure="block", block_size=16))
    dense = BertForPreTraining(tiny_bert.config).eval()
    dense.load_state_dict(tiny_bert.state_dict())
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        a, b = tiny_bert(ids), dense(ids)
    torch.testing.assert_close(a.prediction_logits, b.prediction_logits)


def test_state_dict_is_the_dense_one_and_vanilla_save_load_works(tiny_bert, tmp_path):
    keys = list(tiny_bert.state_dict())
    sparsify_(tiny_bert, SparsityConfig(sparsity=0.9))
    assert list(tiny_bert.state_dict()) == keys
    tiny_bert.save_pretrained(tmp_path)
    loaded = BertForPreTraining.from_pretrained(tmp_path)
    for name, m in sparse_modules(tiny_bert).items():
        assert torch.equal(loaded.get_submodule(name).weight, m.weight)


def test_training_step_keeps_exact_sparsity(tiny_gpt2):
    sparsify_(tiny_gpt2, SparsityConfig(sparsity=0.8, structure="block", block_size=8))
    tiny_gpt2.train()
    opt = torch.optim.AdamW(tiny_gpt2.parameters(), lr=1e-2)
    ids = torch.randint(0, 128, (4, 16))
    for _ in range(3):
        tiny_gpt2(ids, labels=ids).loss.backward()
        for m in sparse_modules(tiny_gpt2).values():
            assert m.weight.grad[~m.weight_mask].eq(0).all()
        opt.step()
        opt.zero_grad()
    for m in sparse_modules(tiny_gpt2).values():
        assert m.weight[~m.weight_mask].eq(0).all()


def test_straight_through_switch(tiny_bert):
    sparsify_(tiny_bert, SparsityConfig(sparsity=0.5))
    names = hf_sparse.set_straight_through_(tiny_bert, True, ["bert.encoder.layer.0.attention.self.query"])
    assert names == ["bert.encoder.layer.0.attention.self.query"]
    flags = {n: m.straight_through for n, m in sparse_modules(tiny_bert).items()}
    assert flags.pop(names[0]) is True and not any(flags.values())
    with pytest.raises(ValueError, match="Not sparse modules"):
        hf_sparse.set_straight_through_(tiny_bert, True, ["bert.pooler.dense"])


def test_report(tiny_bert):
    sparsify_(tiny_bert, SparsityConfig(sparsity=0.75))
    report = hf_sparse.sparsity_report(tiny_bert)
    assert len(report.layers) == 12
    first = report.layers[0]
    assert (first.name, first.shape, first.layout) == ("bert.encoder.layer.0.attention.self.query", (32, 32), "linear [out, in]")
    assert first.active == 256 and first.numel == 1024 and first.density == 0.25 and first.target_density == 0.25
    assert first.nonzero <= first.active
    assert report.sparsity == pytest.approx(0.75)
    text = str(report)
    assert "bert.encoder.layer.1.output.dense" in text and "sparsity 0.7500" in text
    assert report.to_dict()["total_active"] == report.total_active
