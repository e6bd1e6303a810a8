"""SparseTrainer.save_model: full hf_sparse checkpoints for the user, raw weights + masks in checkpoint-N."""

import json

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, TrainingArguments

import hf_sparse.checkpoint as ckpt
from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import STATE_META_NAME
from hf_sparse.patching import sparse_modules
from hf_sparse.trainer import SparseTrainer


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32))


def dataset(n=16, length=8):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(5, 64, (length,), generator=g)), "labels": ids.clone()}
            for _ in range(n)]


def make_trainer(out, dynamic, **kw):
    base = dict(output_dir=str(out), max_steps=6, per_device_train_batch_size=4, learning_rate=5e-3,
                logging_steps=2, save_strategy="steps", save_steps=3, report_to=[], use_cpu=True,
                disable_tqdm=True, seed=0)
    base.update(kw)
    return SparseTrainer(model=tiny_bert(), args=TrainingArguments(**base), train_dataset=dataset(),
                         sparsity_config=SparsityConfig(sparsity=0.75), dynamic_config=dynamic)


def test_save_model_writes_full_sparse_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path / "run", DynamicSparsityConfig(algorithm="set", update_interval=2))
    trainer.train()
    final = tmp_path / "final"
    trainer.save_model(str(final))
    for name in ("config.json", "model.safetensors", ckpt.SPARSITY_CONFIG_NAME, "sparsity_masks.safetensors",
                 "README.md", "training_args.bin"):
        assert (final / name).is_file(), name
    record = json.loads((final / ckpt.SPARSITY_CONFIG_NAME).read_text())
    assert record["dynamic_config"]["algorithm"] == "set"
    stats = record["training_stats"]
    assert stats["step"] == 6 and stats["num_updates"] == trainer.controller.num_updates
    assert abs(stats["dof"] - trainer.controller.last_metrics["sparsity/dof"]) < 1e-12
    assert stats["train_flops"] > 0 and stats["dense_train_flops"] > stats["train_flops"]
    assert "training FLOPs" in (final / "README.md").read_text()
    loaded = ckpt.from_pretrained(BertForMaskedLM, final)
    trained = sparse_modules(trainer.model)
    for name, m in sparse_modules(loaded).items():
        assert torch.equal(m.weight_mask, trained[name].weight_mask), name
        assert torch.equal(m.weight, trained[name].weight.detach()), name


def test_intermediate_checkpoint_keeps_raw_weights_and_masks(tmp_path):
    # top-k keeps values for non-participating weights: the Trainer checkpoint must keep them for resume.
    trainer = make_trainer(tmp_path, DynamicSparsityConfig(algorithm="topk", update_interval=1,
                                                           topk_reset_interval=100))
    trainer.train()
    cdir = tmp_path / "checkpoint-3"
    assert (cdir / STATE_META_NAME).is_file() and (cdir / "optimizer.pt").is_file()
    record, masks = ckpt.read_checkpoint(cdir)  # checksums of the in-place write hold
    assert record["training_stats"]["step"] == 3
    weights = load_file(str(cdir / "model.safetensors"))
    leaked = sum(int(torch.count_nonzero(weights[f"{n}.weight"][~masks[n]])) for n in masks)
    assert leaked > 0, "raw weights (non-participating values) are kept in Trainer checkpoints"


def test_checkpoint_dir_loads_with_from_pretrained(tmp_path):
    trainer = make_trainer(tmp_path, DynamicSparsityConfig(algorithm="set", update_interval=2))
    trainer.train()
    model = ckpt.from_pretrained(BertForMaskedLM, tmp_path / "checkpoint-6")
    trained = sparse_modules(trainer.model)
    for name, m in sparse_modules(model).items():
        assert torch.equal(m.weight_mask, trained[name].weight_mask), name
    # Resuming from that directory still works (raw weights + controller state).
    again = make_trainer(tmp_path, DynamicSparsityConfig(algorithm="set", update_interval=2), max_steps=8)
    again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert again.state.global_step == 8
    assert again.sparsity_callback.flops.steps == 8


def test_vanilla_trainer_with_callback_checkpoints_hold_masks(tmp_path):
    from transformers import Trainer

    from hf_sparse.trainer import SparsityCallback

    model = tiny_bert()
    cb = SparsityCallback(SparsityConfig(sparsity=0.75), DynamicSparsityConfig(algorithm="set", update_interval=2))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, save_steps=2,
                             save_strategy="steps", report_to=[], use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=dataset(), callbacks=[cb]).train()
    record, masks = ckpt.read_checkpoint(tmp_path / "checkpoint-4")
    assert record["training_stats"]["step"] == 4 and record["training_stats"]["train_flops"] > 0
    for name, m in sparse_modules(model).items():
        assert torch.equal(masks[name], m.weight_mask), name
    assert (tmp_path / "checkpoint-4" / "optimizer.pt").is_file()
    ckpt.from_pretrained(BertForMaskedLM, tmp_path / "checkpoint-2")
