"""The open registries: every registered algorithm runs through the controller and the Trainer (a new algorithm is
covered by adding nothing but its class), user classes plug in by name, and old files keep loading."""

import importlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2LMHeadModel, TrainingArguments

import hf_sparse
from hf_sparse.algorithms import DynSparseAlgorithm
from hf_sparse.config import ALGORITHM_REGISTRY, REGULARIZER_REGISTRY, DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import SparsityController
from hf_sparse.patching import sparse_modules
from hf_sparse.regularizers import Regularizer, effective_weight

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1_0"


@hf_sparse.register_algorithm
class ReverseMagnitudeRegrowth(DynSparseAlgorithm):
    """A user algorithm: re-allocate where the (dense) weight was smallest before it was zeroed: deterministic."""

    name = "test_reverse_regrowth"
    defaults = {"update_interval": 2, "prune_ratio": 0.25, "end_fraction": 1.0}

    def grow_scores(self, name, module, step, grad, shape):
        idx = torch.arange(torch.Size(shape).numel(), dtype=torch.float32, device=module.weight.device)
        return -idx.reshape(shape)  # lowest flat index first: a rule no built-in uses


@hf_sparse.register_regularizer
class SquaredPenalty(Regularizer):
    name = "test_squared"
    coupled = True

    def penalty(self, model, step=None):
        lam = self.strength_at(step)
        return lam * sum(effective_weight(m).pow(2).sum() for m in self.targets(model).values())


def tiny_bert():
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=16))


def options(name):
    # Only what a run of 6 steps needs: updates every 2 steps for every algorithm that updates masks.
    cls = ALGORITHM_REGISTRY.get(name)
    return {"update_interval": 2} if cls.updates_masks else {}


@pytest.mark.parametrize("name", list(ALGORITHM_REGISTRY.names()))
def test_every_registered_algorithm_runs_under_the_controller(name):
    model = tiny_bert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    dyn = DynamicSparsityConfig(algorithm=name, **options(name))
    ctrl = SparsityController(model, opt, SparsityConfig(sparsity=0.75, seed=0), dyn, total_steps=6)
    before = {n: m.weight_mask.clone() for n, m in ctrl.modules.items()}
    for step in range(1, 7):
        ids = torch.randint(0, 50, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step(), opt.zero_grad()
        ctrl.step(step)
    ctrl.audit()  # exact counts and structure after every update
    changed = any(not torch.equal(before[n], m.weight_mask) for n, m in ctrl.modules.items())
    assert changed == ALGORITHM_REGISTRY.get(name).updates_masks
    assert ctrl.num_updates == (sum(ctrl.is_update_step(s) for s in range(1, 7)))
    assert ctrl.state_dict()["meta"]["algorithm"] == name


@pytest.mark.parametrize("name", list(ALGORITHM_REGISTRY.names()))
def test_every_registered_algorithm_runs_under_sparse_trainer(name, tmp_path):
    model = tiny_bert()
    data = [{"input_ids": torch.randint(0, 50, (8,))} for _ in range(12)]
    data = [{**d, "labels": d["input_ids"].clone()} for d in data]
    args = TrainingArguments(str(tmp_path), max_steps=6, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", use_cpu=True, learning_rate=1e-2)
    trainer = hf_sparse.SparseTrainer(
        model=model, args=args, train_dataset=data, sparsity_config=SparsityConfig(sparsity=0.75, seed=0),
        dynamic_config=DynamicSparsityConfig(algorithm=name, **options(name)),
    )
    trainer.train()
    assert trainer.controller.algorithm.name == name
    trainer.save_model(str(tmp_path / "final"))
    record = json.loads((tmp_path / "final" / "sparsity_config.json").read_text())
    assert record["dynamic_config"]["algorithm"] == name
    loaded = hf_sparse.from_pretrained(BertForMaskedLM, str(tmp_path / "final"))
    for n, m in sparse_modules(model).items():
        assert torch.equal(sparse_modules(loaded)[n].weight_mask, m.weight_mask)


def test_user_algorithm_takes_its_defaults_and_its_rule():
    cfg = DynamicSparsityConfig(algorithm="test_reverse_regrowth")
    assert (cfg.update_interval, cfg.prune_ratio, cfg.end_fraction) == (2, 0.25, 1.0)
    assert "test_reverse_regrowth" in hf_sparse.config.ALGORITHMS
    model = tiny_bert()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights never move: only the rule decides
    ctrl = SparsityController(model, opt, SparsityConfig(sparsity=0.75, seed=0), cfg, total_steps=6)
    name, module = next(iter(ctrl.modules.items()))
    old = module.weight_mask.clone()
    ctrl.step(1), ctrl.step(2)
    added = (module.weight_mask & ~old).reshape(-1).nonzero().squeeze(1)
    inactive_before = (~old).reshape(-1).nonzero().squeeze(1)
    # The k re-allocated weights are the k lowest flat indices among those inactive before the update.
    assert torch.equal(added, inactive_before[: added.numel()]) and added.numel() > 0


def test_unknown_names_fail_on_construction_listing_the_registered_ones():
    with pytest.raises(ValueError, match="'dynsparse'.*'test_reverse_regrowth'"):
        DynamicSparsityConfig(algorithm="magic")
    with pytest.raises(ValueError, match="'group_lasso'.*'test_squared'"):
        hf_sparse.RegularizerConfig(name="magic")


def test_registering_a_clashing_name_or_a_wrong_class_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        @hf_sparse.register_algorithm
        class Clash(DynSparseAlgorithm):
            name = "rigl"
    with pytest.raises(TypeError, match="SparsityAlgorithm subclass"):
        hf_sparse.register_algorithm(int)
    with pytest.raises(ValueError, match="non-empty string"):
        @hf_sparse.register_regularizer
        class Nameless(Regularizer):
            pass


def test_user_regularizer_by_name_through_sparse_trainer(tmp_path):
    assert "test_squared" in REGULARIZER_REGISTRY
    reg = hf_sparse.build_regularizer(name="test_squared", strength=10.0)
    data = [{"input_ids": torch.randint(0, 50, (8,))} for _ in range(8)]
    data = [{**d, "labels": d["input_ids"].clone()} for d in data]
    norms = {}
    for with_reg in (False, True):
        model = tiny_bert()
        args = TrainingArguments(str(tmp_path / str(with_reg)), max_steps=4, per_device_train_batch_size=2,
                                 report_to=[], save_strategy="no", use_cpu=True, learning_rate=1e-2,
                                 weight_decay=0.0, seed=0, data_seed=0)
        trainer = hf_sparse.SparseTrainer(model=model, args=args, train_dataset=data,
                                          sparsity_config=SparsityConfig(sparsity=0.5, seed=0),
                                          regularizers=[reg] if with_reg else None)
        trainer.train()
        norms[with_reg] = sum(effective_weight(m).detach().pow(2).sum() for m in sparse_modules(model).values())
    assert norms[True] < norms[False]  # the coupled penalty reached the loss


def test_sparse_trainer_trains_a_dense_model_with_a_decoupled_regularizer(tmp_path):
    data = [{"input_ids": torch.randint(0, 50, (8,))} for _ in range(4)]
    data = [{**d, "labels": d["input_ids"].clone()} for d in data]
    norms = {}
    for strength in (0.0, 5.0):
        model = tiny_bert()
        args = TrainingArguments(str(tmp_path / str(strength)), max_steps=2, per_device_train_batch_size=2,
                                 report_to=[], save_strategy="no", use_cpu=True, learning_rate=0.1,
                                 weight_decay=0.0, seed=0, data_seed=0)
        reg = hf_sparse.build_regularizer(name="weight_decay", strength=strength)
        trainer = hf_sparse.SparseTrainer(model=model, args=args, train_dataset=data, regularizers=[reg])
        assert trainer.sparsity_callback is None and trainer.controller is None
        trainer.train()
        assert not sparse_modules(model)
        norms[strength] = float(model.bert.encoder.layer[0].intermediate.dense.weight.norm())
    # Decoupled decay w <- w (1 - lr * lambda) after each of the 2 steps: a factor (1 - 0.1 * 5)^2 = 0.25 on the
    # decayed part, far beyond what two SGD-sized Adam steps change.
    assert norms[5.0] < 0.5 * norms[0.0]
    with pytest.raises(TypeError, match="Regularizer instances"):
        hf_sparse.SparseTrainer(model=tiny_bert(), args=args, train_dataset=data, regularizers=["l1"])


@pytest.mark.parametrize("name, cls", [("bert-dynsparse-block", BertForMaskedLM), ("gpt2-gmp", GPT2LMHeadModel)])
def test_checkpoints_written_before_the_layout_move_still_load(name, cls):
    directory = FIXTURES / name
    record = hf_sparse.checkpoint.read_sparsity_config(directory)
    dyn = DynamicSparsityConfig.from_dict(record["dynamic_config"])
    model = hf_sparse.from_pretrained(cls, str(directory))
    modules = sparse_modules(model)
    masks = hf_sparse.checkpoint.load_masks(directory / "sparsity_masks.safetensors",
                                            {n: m.weight_mask.shape for n, m in modules.items()})
    assert set(masks) == set(modules)
    for n, m in modules.items():
        assert torch.equal(m.weight_mask, masks[n])
        assert int(m.weight_mask.sum()) == int(record["modules"][[r["name"] for r in record["modules"]].index(n)]
                                               ["active"])
    # The controller state of the old run restores into a controller built from the saved configs.
    sparsity = SparsityConfig.from_dict(record["sparsity_config"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = SparsityController(model, opt, sparsity, dyn, total_steps=8, reset_optimizer_state=False)
    ctrl.load_state(directory)
    assert ctrl.algorithm.name == dyn.algorithm and ctrl.step_count > 0


def test_every_old_public_name_and_module_path_still_imports():
    old_names = json.loads((FIXTURES / "all_names.json").read_text())
    for name in old_names:
        assert getattr(hf_sparse, name) is not None, name
    assert set(old_names) <= set(hf_sparse.__all__)
    for path in ("config", "structure", "algorithms", "controller", "checkpoint", "metrics", "flops", "ift",
                 "kernels", "regularizers", "data", "patching", "layers", "trainer"):
        module = importlib.import_module(f"hf_sparse.{path}")
        assert getattr(hf_sparse, path) is module
    from hf_sparse.checkpoint import CheckpointError, from_pretrained, save_pretrained  # noqa: F401
    from hf_sparse.controller import STATE_META_NAME, SparsityController, sparsify_for_training_  # noqa: F401
    from hf_sparse.metrics import ThresholdSparsityTracker, lagged_correlation, pretraining_advantage  # noqa: F401
    from hf_sparse.structure import MaskStructure, make_generator, random_mask, select_mask  # noqa: F401
    from hf_sparse.trainer import SparseTrainer, SparsityCallback  # noqa: F401
    assert hf_sparse.export is hf_sparse.checkpoint.export and callable(hf_sparse.export)
