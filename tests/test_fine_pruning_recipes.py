"""The fine-tuning recipes' fine-pruning and distillation options: ``--dynamic.algorithm movement|soft_movement|gmp``
on a dense checkpoint and ``--teacher_model_name_or_path`` / ``--distill_temperature`` / ``--distill_alpha``."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_bert_config

import hf_sparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
common = importlib.import_module("common")


def test_options_parse():
    m, _, _, s = common.parse_args(
        ["--model_name_or_path", "x", "--train_files", "t.json", "--dynamic.algorithm", "movement",
         "--sparsity.sparsity", "0.9",
         "--teacher_model_name_or_path", "teacher", "--distill_temperature", "3", "--distill_alpha", "0.9"],
        defaults={}, script="finetune_squad",
    )
    assert (m.teacher_model_name_or_path, m.distill_temperature, m.distill_alpha) == ("teacher", 3.0, 0.9)
    assert s["dynamic"].algorithm == "movement" and s["sparsity"].sparsity == 0.9
    m, _, _, s = common.parse_args(["--model_name_or_path", "x", "--train_files", "t.txt", "--dynamic.algorithm",
                                    "soft_movement"], defaults={},
                                   script="finetune_wikitext")
    assert m.teacher_model_name_or_path is None and s["dynamic"].algorithm == "soft_movement"
    with pytest.raises((ValueError, SystemExit)):
        common.parse_args(["--teacher_model_name_or_path", "t"], defaults={}, script="pretrain_bert")


def test_fine_pruning_keeps_its_algorithm_and_needs_a_target(tmp_path):
    from transformers import BertForQuestionAnswering

    for name in ("gmp", "movement", "soft_movement"):
        dyn = hf_sparse.DynamicSparsityConfig(algorithm=name)
        assert common.static_config(dyn) is dyn
    assert common.static_config(hf_sparse.DynamicSparsityConfig(algorithm="rigl")).algorithm == "static"

    torch.manual_seed(0)
    dense_dir = str(tmp_path / "dense")
    BertForQuestionAnswering(tiny_bert_config()).save_pretrained(dense_dir)
    movement = hf_sparse.DynamicSparsityConfig(algorithm="movement")
    margs = common.ModelArguments(dense_dir)  # no --sparse_finetune needed: fine-pruning implies it
    with pytest.raises(ValueError, match="needs the target sparsity"):
        common.load_for_finetuning(BertForQuestionAnswering, margs, {"sparsity": None, "dynamic": movement})
    sparse = {"sparsity": hf_sparse.SparsityConfig(sparsity=0.9), "dynamic": movement}
    model, cfg = common.load_for_finetuning(BertForQuestionAnswering, margs, sparse)
    assert (cfg.sparsity, cfg.init) == (0.9, "keep") and not hf_sparse.sparse_modules(model)
    with pytest.raises(ValueError, match="dense_finetune"):
        common.load_for_finetuning(BertForQuestionAnswering, common.ModelArguments(dense_dir, dense_finetune=True),
                                   sparse)


def test_teacher_is_loaded_and_wired(tmp_path):
    from transformers import BertForQuestionAnswering, TrainingArguments

    torch.manual_seed(1)
    teacher_dir = str(tmp_path / "teacher")
    BertForQuestionAnswering(tiny_bert_config()).save_pretrained(teacher_dir)
    margs = common.ModelArguments("x", teacher_model_name_or_path=teacher_dir, distill_alpha=0.9)
    teacher, cfg = common.load_teacher(__import__("transformers").AutoModelForQuestionAnswering, margs)
    assert isinstance(teacher, BertForQuestionAnswering) and (cfg.temperature, cfg.alpha) == (2.0, 0.9)
    assert common.load_teacher(BertForQuestionAnswering, common.ModelArguments("x")) == (None, None)
    with pytest.raises(FileNotFoundError, match="teacher_model_name_or_path"):
        common.load_teacher(BertForQuestionAnswering,
                            common.ModelArguments("x", teacher_model_name_or_path=str(tmp_path / "missing")))
    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to=[])
    # A dense run with a teacher still needs SparseTrainer (it owns the distillation loss).
    trainer = common.make_trainer(BertForQuestionAnswering(tiny_bert_config()), args, False, teacher=teacher,
                                  distillation_config=cfg)
    assert isinstance(trainer, hf_sparse.SparseTrainer) and trainer.distiller.teacher is teacher
    plain = common.make_trainer(BertForQuestionAnswering(tiny_bert_config()), args, False, teacher=None,
                                distillation_config=None)
    assert not isinstance(plain, hf_sparse.SparseTrainer)


@pytest.mark.slow
def test_squad_fine_pruning_with_teacher_under_accelerate_launch(shared_data, tmp_path):
    from transformers import BertForQuestionAnswering

    from hf_sparse.cli.quickstart_run import synthetic_squad
    from test_recipes import _launch

    tokenizer = shared_data / "tokenizers" / "bert-base-uncased"
    torch.manual_seed(0)
    dense = tmp_path / "dense"
    BertForQuestionAnswering(tiny_bert_config(vocab_size=30522, max_position_embeddings=128)).save_pretrained(dense)
    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text(json.dumps(synthetic_squad(4, seed=1)))
    dev.write_text(json.dumps(synthetic_squad(1, seed=2)))
    out = tmp_path / "pruned"
    res = _launch("finetune_squad.py", [
        "--config", "recipes/configs/tiny-squad.yaml", "--model_name_or_path", dense, "--tokenizer_name", tokenizer,
        "--train_files", train, "--validation_files", dev, "--max_steps", "4", "--sparsity.sparsity", "0.5",
        "--dynamic.algorithm", "movement", "--dynamic.end_fraction", "0.5", "--teacher_model_name_or_path", dense,
        "--distill_alpha", "0.9"], tmp_path, out)
    assert 0.0 <= res["metrics"]["eval_f1"] <= 100.0
    assert res["training_stats"]["density"] == pytest.approx(0.5, abs=0.01)
    info = json.loads((out / "sparsity_config.json").read_text())
    assert info["dynamic_config"]["algorithm"] == "movement"
