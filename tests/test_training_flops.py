"""Training FLOPs accumulated by SparseTrainer / SparsityCallback from real batch shapes and densities."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.flops import count
from hf_sparse.patching import sparsify_
from hf_sparse.flops import StepFlopsAccumulator
from hf_sparse.trainer import SparseTrainer, SparsityCallback


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32))


def rows(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": (ids := torch.randint(5, 64, (length,), generator=g)), "labels": ids.clone()}
            for _ in range(n)]


def targs(out, **kw):
    base = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.mark.parametrize("seq_len,batch", [(1, 1), (7, 3), (16, 5)])
def test_accumulator_matches_count_for_any_shape(seq_len, batch):
    model = tiny_bert()
    sparsify_(model, SparsityConfig(sparsity=0.8))
    acc = StepFlopsAccumulator(model)
    acc.add_batch(batch, seq_len)
    step = acc.end_step_(world_size=2)
    c = count(model, seq_len=seq_len, batch_size=batch)
    assert step["sparse"] == pytest.approx(2 * c.sparse_train, rel=1e-12)
    assert step["dense"] == pytest.approx(2 * c.dense_train, rel=1e-12)
    assert acc.tokens == 2 * batch * seq_len and acc.steps == 1


def test_accumulator_pooled_head_gpt2_and_refresh():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64))
    acc = StepFlopsAccumulator(model)
    acc.add_batch(3, 5)
    assert acc.pending_flops()["dense"] == pytest.approx(count(model, seq_len=5, batch_size=3).dense_train)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=16))
    acc = StepFlopsAccumulator(gpt)
    sparsify_(gpt, SparsityConfig(sparsity=0.5))
    acc.add_batch(2, 9)
    assert acc.pending_flops()["sparse"] == pytest.approx(count(gpt, 9, 2).dense_train)  # stale until refresh
    acc.refresh_(gpt)
    assert acc.pending_flops()["sparse"] == pytest.approx(count(gpt, 9, 2).sparse_train)


def test_sparse_trainer_logs_flops_with_grad_accumulation(tmp_path):
    model = tiny_bert()
    trainer = SparseTrainer(model=model, args=targs(tmp_path, gradient_accumulation_steps=2),
                            train_dataset=rows(64, 12), sparsity_config=SparsityConfig(sparsity=0.75),
                            dynamic_config=DynamicSparsityConfig(algorithm="static"))
    trainer.train()
    per_step = 2 * count(model, seq_len=12, batch_size=4).sparse_train  # two micro-batches per step
    dense_per_step = 2 * count(model, seq_len=12, batch_size=4).dense_train
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4]
    for h in logged:
        assert h["sparsity/train_flops"] == pytest.approx(h["step"] * per_step, rel=1e-12)
        assert h["sparsity/dense_train_flops"] == pytest.approx(h["step"] * dense_per_step, rel=1e-12)
    assert trainer.training_stats()["tokens"] == 4 * 2 * 4 * 12


def test_gmp_densities_change_the_count_and_resume_keeps_total(tmp_path):
    dyn = DynamicSparsityConfig(algorithm="gmp", update_interval=1, end_fraction=1.0)
    sp = SparsityConfig(sparsity=0.9)
    trainer = SparseTrainer(model=tiny_bert(), args=targs(tmp_path, max_steps=4, save_strategy="steps", save_steps=2),
                            train_dataset=rows(32, 8), sparsity_config=sp, dynamic_config=dyn)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    increments = [b["sparsity/train_flops"] - a["sparsity/train_flops"] for a, b in zip(logged, logged[1:])]
    dense_inc = logged[0]["sparsity/dense_train_flops"]
    # GMP starts dense and prunes: each step is cheaper than the previous one, the first costs the dense price.
    assert logged[0]["sparsity/train_flops"] == pytest.approx(dense_inc)
    assert all(b < a for a, b in zip([dense_inc] + increments, increments))
    total = trainer.sparsity_callback.flops.sparse_total
    resumed = SparseTrainer(model=tiny_bert(), args=targs(tmp_path, max_steps=4, save_strategy="no"),
                            train_dataset=rows(32, 8), sparsity_config=sp, dynamic_config=dyn)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.sparsity_callback.flops.sparse_total == pytest.approx(total, rel=1e-9)
    assert resumed.sparsity_callback.flops.steps == 4


def test_vanilla_trainer_with_callback_gets_flops(tmp_path):
    model = tiny_bert()
    cb = SparsityCallback(SparsityConfig(sparsity=0.5), DynamicSparsityConfig(algorithm="static"))
    # Evaluation after every step: its forwards (eval mode, no grad) must not count as training FLOPs.
    trainer = Trainer(model=model, args=targs(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1),
                      train_dataset=rows(16, 6), eval_dataset=rows(8, 10, seed=1), callbacks=[cb])
    trainer.train()
    assert any("eval_loss" in h for h in trainer.state.log_history)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged[-1]["sparsity/train_flops"] == pytest.approx(2 * count(model, 6, 4).sparse_train, rel=1e-12)
    assert cb.flops.sparse_total == pytest.approx(2 * count(model, 6, 4).sparse_train, rel=1e-12)


def test_frozen_layers_cost_dense_forward_and_input_gradient():
    model = tiny_bert()
    sparsify_(model, SparsityConfig(sparsity=0.75))
    zero = StepFlopsAccumulator(model)
    from hf_sparse.patching import sparse_modules

    for m in sparse_modules(model).values():
        m.set_inactive_mode_("frozen")
    frozen = StepFlopsAccumulator(model)
    c = count(model, seq_len=8, batch_size=2)
    weights = [m for m in c.modules if m.name in sparse_modules(model)]
    extra = sum(2 * m.dense_forward - 2 * m.sparse_forward for m in weights)  # fwd + input grad now dense
    for acc in (zero, frozen):
        acc.add_batch(2, 8)
    assert zero.pending_flops()["sparse"] == pytest.approx(c.sparse_train)
    assert frozen.pending_flops()["sparse"] == pytest.approx(c.sparse_train + extra)
    assert frozen.pending_flops()["dense"] == pytest.approx(c.dense_train)
