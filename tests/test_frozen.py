"""inactive="frozen": inactive weights take part in the forward pass with frozen values and never train."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertForMaskedLM

import hf_sparse.checkpoint as ckpt
from hf_sparse.cli.checkpoint import check_stored_weights
from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import SparsityController, sparsify_for_training_
from hf_sparse.checkpoint import export
from hf_sparse.layers import SparseLinear
from hf_sparse.patching import find_target_modules, sparse_modules


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32))


def test_layer_forward_and_gradient():
    torch.manual_seed(0)
    dense = nn.Linear(6, 4)
    mask = torch.rand(4, 6) < 0.5
    ref = nn.Linear(6, 4)
    ref.load_state_dict(dense.state_dict())
    layer = SparseLinear.from_dense(dense, mask)
    with pytest.raises(ValueError, match="'bogus'"):
        layer.set_inactive_mode_("bogus")
    layer.set_inactive_mode_("frozen")
    x = torch.randn(5, 6)
    out = layer(x)
    expected = ref(x)
    assert torch.allclose(out, expected)  # every weight (frozen ones too) is used
    out.square().sum().backward()
    expected.square().sum().backward()
    assert torch.equal(layer.weight.grad[~mask], torch.zeros(int((~mask).sum())))
    assert torch.allclose(layer.weight.grad[mask], ref.weight.grad[mask])
    # The input gradient flows through the frozen weights too (they are part of the function).
    x1 = torch.randn(2, 6, requires_grad=True)
    layer(x1).sum().backward()
    assert torch.allclose(x1.grad, ref.weight.sum(0).expand(2, 6))
    layer.set_inactive_mode_("zero")
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, ref.weight * mask, ref.bias))


def test_controller_keeps_initial_values_and_optimizer_does_not_move_them():
    model = tiny_bert()
    original = {n: m.weight.detach().clone() for n, m in find_target_modules(model, SparsityConfig(sparsity=0.8)).items()}
    dyn = DynamicSparsityConfig(algorithm="static", inactive="frozen")
    sparsify_for_training_(model, SparsityConfig(sparsity=0.8), dyn)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    controller = SparsityController(model, opt, dynamic_config=dyn)
    modules = controller.modules
    for name, m in modules.items():
        assert m.inactive_mode == "frozen"
        assert torch.equal(m.weight.detach(), original[name])  # nothing zeroed
    ids = torch.randint(5, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    for step in range(1, 4):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        controller.step(step)
    for name, m in modules.items():
        w = m.weight.detach()
        assert torch.equal(w[~m.weight_mask], original[name][~m.weight_mask]), name  # weight decay undone
        assert not torch.equal(w[m.weight_mask], original[name][m.weight_mask]), name


def test_reallocated_weights_resume_from_frozen_value():
    model = tiny_bert()
    dyn = DynamicSparsityConfig(algorithm="dynsparse", update_interval=1, prune_ratio=0.5, inactive="frozen")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    controller = SparsityController(model, opt, SparsityConfig(sparsity=0.75), dyn, total_steps=4)
    before = {n: (m.weight.detach().clone(), m.weight_mask.clone()) for n, m in controller.modules.items()}
    controller.step(1)
    moved = 0
    for name, m in controller.modules.items():
        w0, mask0 = before[name]
        added = m.weight_mask & ~mask0
        moved += int(added.sum())
        assert torch.equal(m.weight.detach()[added], w0[added]), name  # kept value, not zero
        assert torch.equal(m.weight.detach(), w0), name  # no weight was zeroed by the update
    assert moved > 0


def test_checkpoint_round_trip_keeps_frozen_weights(tmp_path):
    model = tiny_bert()
    dyn = DynamicSparsityConfig(algorithm="static", inactive="frozen")
    SparsityController(model, None, SparsityConfig(sparsity=0.8), dyn)
    ckpt.save_pretrained(model, tmp_path / "c", dynamic_config=dyn)
    record = json.loads((tmp_path / "c" / ckpt.SPARSITY_CONFIG_NAME).read_text())
    assert {r["inactive_mode"] for r in record["modules"]} == {"frozen"}
    stored = load_file(str(tmp_path / "c" / "model.safetensors"))
    found = sparse_modules(model)
    for name, m in found.items():
        assert torch.equal(stored[f"{name}.weight"], m.weight.detach())  # full weights: the effective ones
    rec, masks = ckpt.read_checkpoint(tmp_path / "c")
    assert check_stored_weights(tmp_path / "c", rec, masks) == len(found)
    loaded = ckpt.from_pretrained(BertForMaskedLM, tmp_path / "c")
    ids = torch.randint(5, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    model.eval(), loaded.eval()
    assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-6)
    assert all(m.inactive_mode == "frozen" for m in sparse_modules(loaded).values())
    dense = ckpt.from_pretrained(BertForMaskedLM, tmp_path / "c", dense=True).eval()
    assert torch.allclose(dense(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-6)
    with pytest.raises(ValueError, match="frozen"):
        export(model, tmp_path / "x", format="compressed")


def test_zero_mode_checkpoint_still_rejects_leaks(tmp_path):
    model = tiny_bert()
    SparsityController(model, None, SparsityConfig(sparsity=0.8))
    ckpt.save_pretrained(model, tmp_path / "c")
    record = json.loads((tmp_path / "c" / ckpt.SPARSITY_CONFIG_NAME).read_text())
    assert {r["inactive_mode"] for r in record["modules"]} == {"zero"}
    path = tmp_path / "c" / "model.safetensors"
    from safetensors.torch import save_file

    tensors = load_file(str(path))
    name = record["modules"][0]["name"]
    mask = ckpt.read_checkpoint(tmp_path / "c")[1][name]
    tensors[f"{name}.weight"][~mask] = 1.0
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ckpt.CheckpointError, match="non-zero"):
        ckpt.from_pretrained(BertForMaskedLM, tmp_path / "c", verify_checksums=False)


def test_sparse_trainer_frozen_run_saves_and_reloads(tmp_path):
    from transformers import TrainingArguments

    from hf_sparse.trainer import SparseTrainer

    model = tiny_bert()
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(5, 64, (8,), generator=g)), "labels": ids.clone()} for _ in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                             save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, disable_tqdm=True)
    dyn = DynamicSparsityConfig(algorithm="dynsparse", update_interval=2, inactive="frozen")
    trainer = SparseTrainer(model=model, args=args, train_dataset=data, sparsity_config=SparsityConfig(sparsity=0.75),
                            dynamic_config=dyn)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    ids = torch.randint(5, 64, (2, 8), generator=g)
    model.eval()
    for directory in (tmp_path / "final", tmp_path / "checkpoint-2"):
        loaded = ckpt.from_pretrained(BertForMaskedLM, directory).eval()
        assert all(m.inactive_mode == "frozen" for m in sparse_modules(loaded).values())
    final = ckpt.from_pretrained(BertForMaskedLM, tmp_path / "final").eval()
    assert torch.allclose(final(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    assert any(int(torch.count_nonzero(m.weight.detach()[~m.weight_mask])) for m in sparse_modules(model).values())
