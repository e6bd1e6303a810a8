"""Sparse-IFT checkpoints load into any head of their base model, as transformers' own from_pretrained does.

The Sparse-IFT paper (Saxena et al. 2023, arXiv:2303.11525) pre-trains BERT and fine-tunes it on SQuAD, sparse or
dense (SPDF); here every transformation goes pre-training -> question answering (BERT) and language model ->
sequence classification (GPT-2): unused head weights are dropped with a report, new heads are initialised, extra
keyword arguments reach the config, masks come back exactly, and ``dense=True`` keeps the transformed structure
with dense layers.
"""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertModel,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)

from conftest import tiny_bert_config, tiny_gpt2_config

from hf_sparse import SparseIFTConfig, SparsityConfig, apply_sparse_ift, sparse_modules, sparsify_
from hf_sparse import checkpoint as ckpt
from hf_sparse.ift import from_pretrained_sparse_ift
from hf_sparse.ift.modules import IFT_MODULES

KINDS = ["wide", "parallel", "factorized", "doped"]


def _trained_ift(model_class, config, kind):
    """A Sparse-IFT model whose masks moved away from the initial ones, with an active weight exactly zero."""
    torch.manual_seed(0)
    model = apply_sparse_ift(model_class, config, SparseIFTConfig(kind=kind, sparsity=0.5)).eval()
    gen = torch.Generator().manual_seed(1)
    for m in sparse_modules(model).values():
        flat = m.weight_mask.flatten()
        m.set_mask_(flat[torch.randperm(flat.numel(), generator=gen)].view(m.weight_mask.shape))
        with torch.no_grad():
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.weight_mask)
    first = next(iter(sparse_modules(model).values()))
    with torch.no_grad():
        first.weight[tuple(first.weight_mask.nonzero()[0].tolist())] = 0.0
    return model


def _ift_types(model):
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, tuple(IFT_MODULES.values()))})


def _assert_same_masks(original, loaded, strip="", add=""):
    want = {add + n[len(strip):]: m.weight_mask for n, m in sparse_modules(original).items()}
    got = {n: m.weight_mask for n, m in sparse_modules(loaded).items()}
    assert list(got) == list(want)
    assert all(torch.equal(got[n], want[n]) for n in want)


@pytest.mark.parametrize("kind", KINDS)
def test_bert_pretraining_checkpoint_into_question_answering(tmp_path, caplog, kind):
    model = _trained_ift(BertForPreTraining, tiny_bert_config(), kind)
    ckpt.save_pretrained(model, tmp_path, ift_config=SparseIFTConfig(kind=kind, sparsity=0.5))
    ids = torch.arange(24).reshape(2, 12) % 128
    for dense in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_sparse"):
            qa = ckpt.from_pretrained(BertForQuestionAnswering, tmp_path, dense=dense)
        assert type(qa) is BertForQuestionAnswering
        report = caplog.text
        assert "were not used when initializing BertForQuestionAnswering" in report
        assert "cls.predictions.bias" in report and "cls.seq_relationship.weight" in report
        assert "newly initialized: ['qa_outputs.bias', 'qa_outputs.weight']" in report
        if dense:
            assert not sparse_modules(qa)
            assert _ift_types(qa) == _ift_types(model)  # the Sparse-IFT structure stays, with dense layers
        else:
            _assert_same_masks(model, qa)
        with torch.no_grad():
            torch.testing.assert_close(qa.bert(ids).last_hidden_state, model.bert(ids).last_hidden_state)
            assert torch.isfinite(qa(ids).start_logits).all()
        assert qa.config.sparse_ift["config"]["kind"] == kind  # saving the fine-tuned model keeps the record


@pytest.mark.parametrize("kind", KINDS)
def test_gpt2_lm_checkpoint_into_sequence_classification(tmp_path, caplog, kind):
    model = _trained_ift(GPT2LMHeadModel, tiny_gpt2_config(), kind)
    ckpt.save_pretrained(model, tmp_path)
    ids = torch.arange(16).reshape(2, 8) % 128
    for dense in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_sparse"):
            clf = ckpt.from_pretrained(GPT2ForSequenceClassification, tmp_path, dense=dense, num_labels=3,
                                       dtype=torch.float64)
        assert type(clf) is GPT2ForSequenceClassification
        assert clf.config.num_labels == 3 and tuple(clf.score.weight.shape) == (3, model.config.n_embd)
        assert {p.dtype for p in clf.parameters()} == {torch.float64}
        assert "newly initialized: ['score.weight']" in caplog.text
        if dense:
            assert not sparse_modules(clf) and _ift_types(clf) == _ift_types(model)
        else:
            _assert_same_masks(model, clf)
        with torch.no_grad():  # float64 against the float32 original: equal to float32 precision
            torch.testing.assert_close(clf.transformer(ids).last_hidden_state.float(),
                                       model.transformer(ids).last_hidden_state, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["wide", "parallel"])
def test_base_model_and_head_model_prefixes_map_both_ways(tmp_path, kind):
    base = _trained_ift(BertModel, tiny_bert_config(), kind)
    ckpt.save_pretrained(base, tmp_path / "base")
    qa = ckpt.from_pretrained(BertForQuestionAnswering, tmp_path / "base")
    _assert_same_masks(base, qa, add="bert.")
    pre = _trained_ift(BertForPreTraining, tiny_bert_config(), kind)
    ckpt.save_pretrained(pre, tmp_path / "pre")
    bare = ckpt.from_pretrained(BertModel, tmp_path / "pre")
    _assert_same_masks(pre, bare, strip="bert.")


def test_plain_sparse_checkpoint_takes_config_kwargs(tmp_path):
    torch.manual_seed(0)
    model = sparsify_(GPT2LMHeadModel(tiny_gpt2_config()), SparsityConfig(sparsity=0.5, seed=0))
    ckpt.save_pretrained(model, tmp_path)
    clf = ckpt.from_pretrained(GPT2ForSequenceClassification, tmp_path, num_labels=4)
    assert clf.config.num_labels == 4 and tuple(clf.score.weight.shape) == (4, 32)
    _assert_same_masks(model, clf)


def _plain_ift_dir(tmp_path, kind="parallel"):
    model = _trained_ift(BertForPreTraining, tiny_bert_config(), kind)
    model.save_pretrained(tmp_path)
    return model, tmp_path / "model.safetensors"


def test_base_model_weights_must_fit(tmp_path):
    _, weights = _plain_ift_dir(tmp_path)
    state = load_file(str(weights))
    query = next(k for k in state if k.endswith("attention.self.query.branches.1.weight"))
    save_file({k: v for k, v in state.items() if k != query}, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing weights .*branches.1.weight"):
        from_pretrained_sparse_ift(BertForQuestionAnswering, tmp_path, masks="nonzero")
    state["bert.encoder.layer.0.attention.self.query.branches.7.weight"] = state[query].clone()
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected weights .*branches.7.weight"):
        from_pretrained_sparse_ift(BertForQuestionAnswering, tmp_path, masks="nonzero")


def test_pretraining_head_of_another_head_class_is_dropped(tmp_path):
    # BertForMaskedLM has a `cls` head too: NSP weights of the pre-training head are unused, not an error.
    from transformers import BertForMaskedLM

    model, _ = _plain_ift_dir(tmp_path, "doped")
    mlm = from_pretrained_sparse_ift(BertForMaskedLM, tmp_path, masks="nonzero")
    torch.testing.assert_close(mlm.cls.predictions.transform.dense.weight, model.cls.predictions.transform.dense.weight)


def test_dtype_auto_and_bad_dtype(tmp_path):
    _plain_ift_dir(tmp_path, "factorized")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == "float32"
    model = from_pretrained_sparse_ift(BertForQuestionAnswering, tmp_path, masks="nonzero", dtype="auto")
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype='float17'"):
        from_pretrained_sparse_ift(BertForQuestionAnswering, tmp_path, masks="nonzero", dtype="float17")
