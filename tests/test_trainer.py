"""SparseTrainer / SparsityCallback end to end on a tiny BERT (CPU), resume, and a 2-process gloo run."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import STATE_META_NAME, STATE_TENSORS_NAME
from hf_sparse.patching import sparse_modules
from hf_sparse.structure import num_active
from hf_sparse.trainer import SparseTrainer, SparsityCallback

REPO = Path(__file__).resolve().parents[1]


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(cfg)


def dataset(n=32, length=16):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(5, 64, (length,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def args(out, **kw):
    base = dict(output_dir=str(out), max_steps=30, per_device_train_batch_size=8, learning_rate=5e-3,
                logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                data_seed=0)
    base.update(kw)
    return TrainingArguments(**base)


def assert_exactly_sparse(model):
    for name, m in sparse_modules(model).items():
        expected = num_active(m.structure, m.weight.shape, m.target_density) * (
            m.structure.block_size**2 if m.structure.kind == "block" else 1
        )
        assert int(m.weight_mask.sum()) == expected, name
        assert bool((m.weight[~m.weight_mask] == 0).all()), name


def test_sparse_trainer_lowers_loss_and_stays_sparse(tmp_path):
    model = tiny_bert()
    sparsity = SparsityConfig(sparsity=0.75, structure="block", block_size=16, block_norm="l1")
    dynamic = DynamicSparsityConfig(algorithm="dynsparse", num_updates=6, prune_ratio=0.5, prune_schedule="cosine")
    trainer = SparseTrainer(model=model, args=args(tmp_path, save_strategy="steps", save_steps=15),
                            train_dataset=dataset(), sparsity_config=sparsity, dynamic_config=dynamic)
    assert sparse_modules(model), "SparseTrainer sparsifies at construction"
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.8 * losses[0]
    assert_exactly_sparse(model)
    updates = [h for h in trainer.state.log_history if "sparsity/dof" in h]
    assert len(updates) == 5 and updates[-1]["sparsity/dof"] > 0.25
    assert trainer.controller.num_updates == 5
    ckpt = tmp_path / "checkpoint-15"
    assert (ckpt / STATE_TENSORS_NAME).is_file() and (ckpt / STATE_META_NAME).is_file()
    assert json.loads((ckpt / STATE_META_NAME).read_text())["step"] == 15


def test_vanilla_trainer_with_callback(tmp_path):
    model = tiny_bert()
    cb = SparsityCallback(SparsityConfig(sparsity=0.9), DynamicSparsityConfig(algorithm="set", update_interval=3))
    trainer = Trainer(model=model, args=args(tmp_path, max_steps=10), train_dataset=dataset(), callbacks=[cb])
    assert sparse_modules(model)
    trainer.train()
    assert cb.controller is not None and cb.controller.total_steps == 10
    assert cb.controller.num_updates == 2  # steps 3 and 6 (end_fraction 0.75 -> last update at 7)
    assert cb.last_metrics["sparsity/density"] == pytest.approx(0.1, abs=1e-3)
    assert_exactly_sparse(model)


def test_total_steps_follow_epochs_and_accumulation(tmp_path):
    model = tiny_bert()
    cb = SparsityCallback(SparsityConfig(sparsity=0.5), DynamicSparsityConfig(algorithm="rigl", update_interval=1))
    a = args(tmp_path, max_steps=-1, num_train_epochs=2, per_device_train_batch_size=4,
             gradient_accumulation_steps=2)
    trainer = Trainer(model=model, args=a, train_dataset=dataset(16), callbacks=[cb])
    trainer.train()
    # 16 examples / (4 x 2 accumulation) = 2 optimizer steps per epoch, 2 epochs.
    assert cb.controller.total_steps == 4 and trainer.state.global_step == 4
    assert cb.controller.num_updates == 3  # steps 1, 2, 3 (end_fraction 0.75 of 4 = 3; never at T)
    assert_exactly_sparse(model)


def _run(out, resume=None, max_steps=12):
    model = tiny_bert()
    trainer = SparseTrainer(
        model=model, args=args(out, max_steps=max_steps, save_strategy="steps", save_steps=6),
        train_dataset=dataset(), sparsity_config=SparsityConfig(sparsity=0.8, seed=3, mask_init="random"),
        dynamic_config=DynamicSparsityConfig(algorithm="rigl", update_interval=4, end_fraction=1.0),
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def test_resume_from_mid_checkpoint_equals_uninterrupted(tmp_path):
    full_model, full = _run(tmp_path / "full")
    resumed_model, resumed = _run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-6"))
    assert resumed.controller.num_updates == full.controller.num_updates == 2
    full_sd, resumed_sd = full_model.state_dict(), resumed_model.state_dict()
    for name, m in sparse_modules(full_model).items():
        assert torch.equal(m.weight_mask, sparse_modules(resumed_model)[name].weight_mask), name
    for key in full_sd:
        assert torch.allclose(full_sd[key], resumed_sd[key], atol=1e-6), key
    assert_exactly_sparse(resumed_model)


def test_resume_without_controller_state_fails_clearly(tmp_path):
    _run(tmp_path / "full", max_steps=6)
    ckpt = tmp_path / "full" / "checkpoint-6"
    for name in (STATE_META_NAME, STATE_TENSORS_NAME):
        os.remove(ckpt / name)
    with pytest.raises(FileNotFoundError, match="no sparsity controller state"):
        _run(tmp_path / "again", resume=str(ckpt))


def test_fsdp_and_deepspeed_are_refused(monkeypatch):
    cb = SparsityCallback(SparsityConfig(sparsity=0.9))
    fake = types.SimpleNamespace(fsdp="full_shard", deepspeed=None)
    with pytest.raises(ValueError, match="FSDP"):
        cb.on_init_end(fake, None, None, model=tiny_bert())
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="DDP"):
        cb.on_init_end(types.SimpleNamespace(fsdp=None, deepspeed=None), None, None, model=None)


def test_apply_sparse_lr_scales_learning_rate_once(tmp_path):
    a = args(tmp_path, max_steps=2)
    dyn = DynamicSparsityConfig(algorithm="static", apply_sparse_lr=True)
    SparseTrainer(model=tiny_bert(), args=a, train_dataset=dataset(), sparsity_config=SparsityConfig(sparsity=0.5),
                  dynamic_config=dyn)
    from hf_sparse.lr_rule import sparse_lr

    assert a.learning_rate == pytest.approx(sparse_lr(5e-3, 0.5))
    SparseTrainer(model=tiny_bert(), args=a, train_dataset=dataset(), sparsity_config=SparsityConfig(sparsity=0.5),
                  dynamic_config=dyn)
    assert a.learning_rate == pytest.approx(sparse_lr(5e-3, 0.5))


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from safetensors.torch import save_file
    sys.path.insert(0, sys.argv[2])
    from tests.test_trainer import args, dataset, tiny_bert
    from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
    from hf_sparse.trainer import SparseTrainer

    out = sys.argv[1]
    model = tiny_bert()
    trainer = SparseTrainer(
        model=model, args=args(out, max_steps=8, per_device_train_batch_size=4),
        train_dataset=dataset(), sparsity_config=SparsityConfig(sparsity=0.8, mask_init="random"),
        # RigL: each rank sees different data, so equal masks need the all-reduced dense gradient.
        dynamic_config=DynamicSparsityConfig(algorithm="rigl", update_interval=2, end_fraction=1.0),
    )
    trainer.train()
    rank, world = dist.get_rank(), dist.get_world_size()
    masks = {n: m.weight_mask.to(torch.uint8).contiguous() for n, m in trainer.controller.modules.items()}
    save_file(masks, f"{out}/masks_rank{rank}.safetensors")
    info = {"world_size": world, "num_updates": trainer.controller.num_updates, "backend": dist.get_backend()}
    with open(f"{out}/info_rank{rank}.json", "w") as f:
        json.dump(info, f)
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_masks_equal(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path), str(REPO)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from safetensors.torch import load_file

    infos = [json.loads((tmp_path / f"info_rank{r}.json").read_text()) for r in range(2)]
    assert [i["world_size"] for i in infos] == [2, 2], "the run must really have two processes"
    assert infos[0]["backend"] == "gloo" and infos[0]["num_updates"] == infos[1]["num_updates"] == 3
    m0, m1 = (load_file(tmp_path / f"masks_rank{r}.safetensors") for r in range(2))
    assert set(m0) == set(m1) and len(m0) == 12
    for name in m0:
        assert torch.equal(m0[name], m1[name]), name


def test_callback_added_after_construction_sparsifies_at_train_start(tmp_path):
    model = tiny_bert()
    trainer = Trainer(model=model, args=args(tmp_path, max_steps=4), train_dataset=dataset())
    cb = SparsityCallback(SparsityConfig(sparsity=0.5, structure="nm"))
    trainer.add_callback(cb)
    assert not sparse_modules(model)
    trainer.train()
    assert sparse_modules(model) and cb.controller.algorithm.name == "static"
    assert_exactly_sparse(model)


def test_sparse_trainer_turns_off_ddp_mask_broadcast(tmp_path):
    trainer = SparseTrainer(model=tiny_bert(), args=args(tmp_path, max_steps=1), train_dataset=dataset(),
                            sparsity_config=SparsityConfig(sparsity=0.5))
    assert trainer.accelerator.ddp_handler.broadcast_buffers is False
