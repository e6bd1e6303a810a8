"""Kernels from the config: ``SparsityConfig.kernel_backend`` validation and round trips, ``enable_(model)``,
`enable_from_config_`'s policy, and `SparseTrainer` training a tiny block-sparse BERT through the Triton kernels
(Triton's CPU interpreter here) while dynamic sparse training moves the masks."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Must happen before Triton is imported anywhere in this process: triton.jit reads it when decorating.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments  # noqa: E402

import hf_sparse  # noqa: E402
from hf_sparse.config import DynamicSparsityConfig, SparsityConfig  # noqa: E402
from hf_sparse.config.sparsity import KERNEL_BACKENDS, TRITON_BLOCK_SIZES  # noqa: E402
from hf_sparse.kernels import BACKENDS, active_backends, disable_, enable_  # noqa: E402
from hf_sparse.kernels.dispatch import enable_from_config_  # noqa: E402
from hf_sparse.patching import get_sparsity_config, sparse_modules, sparsify_  # noqa: E402
from hf_sparse.structure import num_active  # noqa: E402
from hf_sparse.trainer import SparseTrainer, SparsityCallback  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = dict(sparsity=0.5, structure="block", block_size=16)


def _tiny_bert(config=None):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0))
    if config is not None:
        sparsify_(model, config)
    return model.to(DEVICE)


# --- the config field ----------------------------------------------------------------------------------------------
def test_kernel_backend_validation():
    assert SparsityConfig().kernel_backend is None
    assert SparsityConfig(**BLOCK, kernel_backend="triton").kernel_backend == "triton"
    assert SparsityConfig(structure="nm", sparsity=None, kernel_backend="semi_structured").kernel_backend
    assert SparsityConfig(structure="nm_transposable", sparsity=None, kernel_backend="semi_structured")
    with pytest.raises(ValueError, match="kernel_backend='cuda' is not supported; choose None or one of"):
        SparsityConfig(kernel_backend="cuda")
    with pytest.raises(ValueError, match="structure='unstructured', block_size=16"):
        SparsityConfig(sparsity=0.9, kernel_backend="triton")
    with pytest.raises(ValueError, match="block_size=8"):
        SparsityConfig(sparsity=0.9, structure="block", block_size=8, kernel_backend="triton")
    with pytest.raises(ValueError, match="2:4 structure.*got structure='block'"):
        SparsityConfig(**BLOCK, kernel_backend="semi_structured")
    with pytest.raises(ValueError, match="got structure='nm' 1:4"):
        SparsityConfig(structure="nm", n=1, m=4, sparsity=None, kernel_backend="semi_structured")


def test_config_constants_match_the_kernels():
    from hf_sparse.kernels import triton_blocksparse as tb

    assert TRITON_BLOCK_SIZES == tb.SUPPORTED_BLOCK_SIZES
    assert BACKENDS == KERNEL_BACKENDS == ("triton", "semi_structured")


def test_json_round_trip_and_old_configs():
    cfg = SparsityConfig(**BLOCK, kernel_backend="triton")
    again = SparsityConfig.from_json_string(cfg.to_json_string())
    assert again == cfg and again.kernel_backend == "triton"
    old = cfg.to_dict()
    del old["kernel_backend"]  # written before the field existed
    assert SparsityConfig.from_dict(old).kernel_backend is None
    bad = {**cfg.to_dict(), "kernel_backend": "tritonn"}
    with pytest.raises(ValueError, match="'tritonn'"):
        SparsityConfig.from_dict(bad)


def test_checkpoint_keeps_the_field_and_loading_does_not_enable(tmp_path):
    model = _tiny_bert(SparsityConfig(**BLOCK, kernel_backend="triton"))
    hf_sparse.save_pretrained(model, tmp_path / "ckpt")
    loaded = hf_sparse.from_pretrained(BertForMaskedLM, tmp_path / "ckpt")
    assert get_sparsity_config(loaded).kernel_backend == "triton"
    assert not active_backends(loaded)  # users load on CPU; enabling is explicit or at train start


def test_recipes_parse_dotted_kernel_backend():
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        common = importlib.import_module("common")
    finally:
        sys.path.remove(str(REPO / "recipes"))
    base = ["--train_files", "a.txt", "--sparsity.structure", "block", "--sparsity.sparsity", "0.9"]
    *_, sparse = common.parse_args(base + ["--sparsity.kernel_backend", "triton"])
    assert sparse["sparsity"].kernel_backend == "triton"
    *_, sparse = common.parse_args(base + ["--sparsity.kernel_backend", "none"])
    assert sparse["sparsity"].kernel_backend is None
    with pytest.raises(ValueError, match="'cuda'"):
        common.parse_args(base + ["--sparsity.kernel_backend", "cuda"])


# --- enable_(model) and enable_from_config_ --------------------------------------------------------------------------
def test_enable_uses_the_models_config():
    model = _tiny_bert(SparsityConfig(**BLOCK, kernel_backend="triton"))
    names = enable_(model, allow_interpreter=True)
    assert sorted(names) == sorted(sparse_modules(model)) and set(active_backends(model).values()) == {"triton"}
    assert sorted(disable_(model)) == sorted(names)
    with pytest.raises(ValueError, match="backend=None and the model has a SparsityConfig with kernel_backend=None"):
        enable_(_tiny_bert(SparsityConfig(**BLOCK)))
    with pytest.raises(ValueError, match="has no SparsityConfig"):
        enable_(_tiny_bert())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall back on a machine without CUDA")
def test_semi_structured_from_config_falls_back_with_reasons(caplog):
    model = _tiny_bert(SparsityConfig(structure="nm", sparsity=None, kernel_backend="semi_structured"))
    with caplog.at_level(logging.WARNING, logger="hf_sparse.kernels.dispatch"):
        assert enable_from_config_(model) == []
    assert len(caplog.records) == 6 and all("CUDA is not available" in r.getMessage() for r in caplog.records)


def test_interpreter_is_accepted_only_when_asked_for(monkeypatch, caplog):
    cfg = SparsityConfig(**BLOCK, kernel_backend="triton")
    model = _tiny_bert(cfg)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with caplog.at_level(logging.WARNING, logger="hf_sparse.kernels.dispatch"):
        assert sorted(enable_from_config_(model)) == sorted(sparse_modules(model))
    assert any("CPU interpreter" in r.getMessage() and "TRITON_INTERPRET=1" in r.getMessage() for r in caplog.records)
    assert enable_from_config_(model) == list(active_backends(model))  # already on: left alone
    disable_(model)
    if DEVICE == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(RuntimeError, match=r"kernel_backend='triton' cannot be used here: .*needs a CUDA GPU"):
            enable_from_config_(model)
        assert not active_backends(model)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_sparse.kernels.dispatch"):
            assert enable_from_config_(model, strict=False) == []  # inherited from a checkpoint: warn only
        assert any("needs a CUDA GPU" in r.getMessage() for r in caplog.records)


def test_non_block_model_is_a_clear_error():
    model = _tiny_bert(SparsityConfig(sparsity=0.5))  # already sparse, unstructured
    with pytest.raises(ValueError, match=r"kernel_backend='triton' cannot be used here: .*block structure"):
        enable_from_config_(model, SparsityConfig(**BLOCK, kernel_backend="triton"))
    assert not active_backends(model)


def test_no_kernel_backend_is_a_no_op():
    model = _tiny_bert(SparsityConfig(**BLOCK))
    assert enable_from_config_(model) == [] and enable_from_config_(_tiny_bert()) == []


# --- training ------------------------------------------------------------------------------------------------------
def _dataset(n=16, length=8):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": ids, "labels": ids.clone()} for ids in torch.randint(5, 64, (n, length), generator=g)]


def _args(out, **kw):
    return TrainingArguments(**{**dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=4,
                                       learning_rate=1e-2, logging_steps=2, save_strategy="no", report_to=[],
                                       use_cpu=DEVICE == "cpu", disable_tqdm=True, seed=0, data_seed=0), **kw})


def test_sparse_trainer_trains_through_triton_with_mask_updates(tmp_path, monkeypatch):
    from hf_sparse.kernels import triton_blocksparse as tb

    calls = []
    original = tb.BlockSparseLinearFunction.apply

    def spy(*args):
        calls.append(args[3].num_blocks)
        return original(*args)

    monkeypatch.setattr(tb.BlockSparseLinearFunction, "apply", spy)
    model = _tiny_bert()
    trainer = SparseTrainer(model=model, args=_args(tmp_path), train_dataset=_dataset(),
                            sparsity_config=SparsityConfig(**BLOCK, kernel_backend="triton"),
                            dynamic_config=DynamicSparsityConfig(algorithm="set", update_interval=2, prune_ratio=0.5,
                                                                 end_fraction=1.0))
    layers = sparse_modules(model)
    assert not active_backends(model)  # nothing before train start
    masks = {n: m.weight_mask.clone() for n, m in layers.items()}
    trainer.train()
    assert set(active_backends(model).values()) == {"triton"} and len(active_backends(model)) == len(layers) == 6
    assert len(calls) == 4 * len(layers)  # every sparse layer of every step's forward ran the Triton kernel
    assert trainer.controller.num_updates >= 1
    assert any(not torch.equal(masks[n], m.weight_mask) for n, m in layers.items())  # DST moved masks
    for name, m in layers.items():
        assert int(m.weight_mask.sum()) == num_active(m.structure, m.weight.shape, m.target_density) * 256, name
        assert not m.weight[~m.weight_mask].any(), name
        # The layout the kernel uses is the current mask's (it followed the updates through the version counter).
        layout = tb.layout_for(m)
        want = tb.BlockLayout.from_mask(m.weight_mask, 16)
        assert torch.equal(layout.col_idx, want.col_idx) and torch.equal(layout.row_ptr, want.row_ptr), name
    # The step after an update ran on the new layout: the spy saw the block count the masks have now.
    assert calls[-1] == tb.layout_for(layers[list(layers)[-1]]).num_blocks


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_trainer_without_cuda_or_interpreter_fails_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    model = _tiny_bert()
    callback = SparsityCallback(SparsityConfig(**BLOCK, kernel_backend="triton"))
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="kernel_backend='triton' cannot be used here.*needs a CUDA GPU"):
        trainer.train()
    assert trainer.state.global_step == 0 and not active_backends(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall back on a machine without CUDA")
def test_backend_inherited_from_the_model_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    """A checkpoint trained with kernel_backend='triton' can still be fine-tuned on a machine without CUDA."""
    monkeypatch.delenv("TRITON_INTERPRET")
    model = _tiny_bert(SparsityConfig(**BLOCK, kernel_backend="triton"))  # as from_pretrained would restore it
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_dataset(),
                      callbacks=[SparsityCallback()])
    with caplog.at_level(logging.WARNING, logger="hf_sparse.kernels.dispatch"):
        trainer.train()
    assert trainer.state.global_step == 1 and not active_backends(model)
    assert "kernel_backend='triton' cannot be used here" in caplog.text and "model's own config" in caplog.text


def test_triton_keeps_frozen_inactive_weights_on_the_masked_path(caplog):
    model = _tiny_bert(SparsityConfig(**BLOCK))
    enable_(model, "triton", allow_interpreter=True)
    layer = next(iter(sparse_modules(model).values()))
    with torch.no_grad():
        layer.weight.add_(~layer.weight_mask * 0.5)  # frozen inactive weights hold values that take part
    layer.set_inactive_mode_("frozen")
    x = torch.randn(3, 32, device=DEVICE)
    with caplog.at_level(logging.WARNING, logger="hf_sparse.kernels.dispatch"):
        got = layer(x)
    torch.testing.assert_close(got, type(layer).forward(layer, x))
    assert "inactive_mode='frozen'" in caplog.text
