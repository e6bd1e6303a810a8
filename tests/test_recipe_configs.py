"""The shipped recipe configs carry the papers' hyperparameters, each with a comment naming its source.

Every config under ``recipes/configs/`` is parsed exactly as its recipe parses it (the script's defaults, then the
YAML). The values the papers fix are checked against numbers typed here from the papers, not from the configs:
DynSparse BERT (Dietrich et al. 2021, arXiv:2108.06277, App. A), the NVIDIA sparse-training study (Algorithm 1,
Sec. 4), Sparse-IFT (Saxena et al. 2023, arXiv:2303.11525, App. B.2 / C.2, Table 18) and Cerebras-GPT 111M
(Dey et al. 2023, arXiv:2304.03208, as replicated by Singh et al. 2024).
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path

import pytest

import hf_sparse
from hf_sparse.config.registry import ALGORITHM_REGISTRY

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"
sys.path.insert(0, str(REPO / "recipes"))
common = importlib.import_module("common")

ALL = sorted(CONFIGS.glob("*.yaml"))
PAPER = [p for p in ALL if not p.stem.startswith("tiny-")]
# Keys whose value a paper fixes (or whose absence from the paper must be said): each needs a comment on its line.
SOURCED_KEYS = {
    "learning_rate", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "warmup_steps",
    "lr_scheduler_type", "per_device_train_batch_size", "max_steps", "num_train_epochs", "max_seq_length",
    "num_updates", "update_interval", "prune_ratio", "end_fraction", "apply_sparse_lr", "block_size", "block_norm",
    "topk_fix_fraction", "topk_reset_interval", "topk_regularize_beta", "topk_ste_scale", "regrow_pruned", "kind",
}


def script_for(path: Path) -> str:
    stem = path.stem
    if "squad" in stem:
        return "finetune_squad"
    if "wikitext" in stem:
        return "finetune_wikitext"
    return "pretrain_bert" if "bert" in stem else "pretrain_gpt2"


def parse(path: Path):
    defaults = importlib.import_module(script_for(path)).DEFAULTS
    return common.parse_args(["--config", str(path), "--bf16", "false"], defaults)


def test_every_config_is_listed():
    assert len(PAPER) >= 16 and {p.stem for p in ALL} >= {"bert-medium-dynsparse-s0.9", "gpt2-small-sparse-wide-s0.5"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_config_loads_as_its_recipe_loads_it(path):
    m, d, t, s = parse(path)
    assert t.output_dir  # a TrainingArguments was built
    if s["dynamic"] is not None:
        assert s["dynamic"].algorithm in ALGORITHM_REGISTRY.names()


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_values_carry_a_source_comment(path):
    text = path.read_text(encoding="utf-8")
    header = text.split("\n", 1)[0]
    assert re.search(r"arXiv:\d{4}\.\d{5}|Dey et al\.|Dietrich et al\.", text[:1200]), f"{path.name}: no paper cited"
    assert header.startswith("# ")
    missing = []
    for line in text.splitlines():
        match = re.match(r"\s*([a-z_0-9]+):\s*(\S.*)?$", line)
        if match and match.group(1) in SOURCED_KEYS and match.group(2) and "#" not in match.group(2):
            missing.append(match.group(1))
    assert not missing, f"{path.name}: no source comment on {missing}"


@pytest.mark.parametrize("path", [p for p in ALL if p.stem.startswith("tiny-")], ids=lambda p: p.stem)
def test_tiny_configs_say_they_are_smoke_tests(path):
    assert "Smoke-test config" in path.read_text(encoding="utf-8")[:400]


# --- DynSparse BERT-Medium (Dietrich et al. 2021, App. A) ---------------------------------------------------------
BERT = [p for p in PAPER if p.stem.startswith("bert-medium")]


@pytest.mark.parametrize("path", BERT, ids=lambda p: p.stem)
def test_bert_medium_app_a_values(path):
    m, d, t, s = parse(path)
    assert m.model_preset == "bert-medium" and d.max_seq_length == 128
    # App. A: Adam (0.9, 0.999), eps 1e-6, weight decay 0.01, 10000 warm-up steps, linear decay, dense LR 2e-4.
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay) == (0.9, 0.999, 1e-6, 0.01)
    assert (t.learning_rate, t.warmup_steps, str(t.lr_scheduler_type.value)) == (2e-4, 10000, "linear")
    assert (t.num_train_epochs, t.max_steps) == (10, -1)  # "10 epochs, phase I"
    if s["sparsity"] is not None:
        assert s["sparsity"].init == "truncated_normal" and s["sparsity"].init_std == 0.02  # App. A, Fig. 9


@pytest.mark.parametrize("stem, sparsity, n, pr, table_lr", [
    ("bert-medium-dynsparse-s0.9", 0.9, 160, 0.5, 0.00128),  # Tables A.2 / A.3; best LR of Table A.14
    ("bert-medium-dynsparse-block16-s0.9", 0.9, 80, 0.5, 0.00128),  # Tables A.4 / A.5; Eq. 3 as in Fig. 13 (right)
    ("bert-medium-dynsparse-s0.99", 0.99, 160, 0.75, 0.001837),  # Table A.6
    ("bert-medium-rigl-s0.9", 0.9, 160, 0.5, 0.00128),  # Fig. 11 ablation under the same schedule
])
def test_dynsparse_schedule_and_eq3_learning_rate(stem, sparsity, n, pr, table_lr):
    _, _, t, s = parse(CONFIGS / f"{stem}.yaml")
    dyn = s["dynamic"]
    assert (s["sparsity"].sparsity, dyn.num_updates, dyn.prune_ratio, dyn.prune_schedule) == (sparsity, n, pr, "cosine")
    assert dyn.end_fraction == 1.0 and s["sparsity"].mask_init == "random"
    assert dyn.apply_sparse_lr is True
    # The learning rate the run trains with: Eq. 3 on the dense base LR, as SparsityCallback applies it.
    lr = hf_sparse.sparse_lr(t.learning_rate, s["sparsity"].sparsity)
    assert math.isclose(lr, table_lr, rel_tol=1e-3), (stem, lr)


def test_block16_uses_l1_block_norm():
    _, _, _, s = parse(CONFIGS / "bert-medium-dynsparse-block16-s0.9.yaml")
    assert (s["sparsity"].structure, s["sparsity"].block_size, s["sparsity"].block_norm) == ("block", 16, "l1")


def test_static_bert_uses_the_eq3_rule_it_was_fitted_on():
    _, _, t, s = parse(CONFIGS / "bert-medium-static-s0.9.yaml")
    assert s["dynamic"].algorithm == "static" and s["dynamic"].apply_sparse_lr is True
    assert 0.0008 < hf_sparse.sparse_lr(t.learning_rate, 0.9) < 0.0016  # between Table A.10's grid points


def test_rigl_configs_regrow_like_the_rigl_paper():
    for stem in ("bert-medium-rigl-s0.9", "gpt2-small-sparse-wide-s0.5", "gpt2-small-sparse-wide-s0.75"):
        _, _, _, s = parse(CONFIGS / f"{stem}.yaml")
        assert s["dynamic"].algorithm == "rigl" and s["dynamic"].regrow_pruned is True, stem


# --- NVIDIA top-k (Algorithm 1, Sec. 4) ------------------------------------------------------------------------
@pytest.mark.parametrize("mode, field, value", [
    ("FIX", "topk_fix_fraction", 0.5), ("RESET", "topk_reset_interval", 1000),
    ("REGULARIZE", "topk_regularize_beta", 0.0002),
])
def test_topk_rewires_every_step_with_the_papers_exploitation_values(mode, field, value):
    _, _, t, s = parse(CONFIGS / f"bert-medium-topk-{mode.lower()}-s0.9.yaml")
    dyn = s["dynamic"]
    assert (dyn.algorithm, dyn.topk_exploitation, dyn.update_interval) == ("topk", mode, 1)  # r = 1
    assert getattr(dyn, field) == value and dyn.topk_ste_scale == 1.0
    assert dyn.apply_sparse_lr is False and t.learning_rate == 2e-4  # dense recipe unchanged (App. B.5)


# --- GPT-3 Small (Sparse-IFT App. C.2.2, Table 18) ---------------------------------------------------------------
GPT3 = [p for p in PAPER if p.stem.startswith("gpt2-small")]
PROCESSES_GPT = 8  # the comment's "x 8 processes"


@pytest.mark.parametrize("path", GPT3, ids=lambda p: p.stem)
def test_gpt3_small_table_18_values(path):
    m, d, t, s = parse(path)
    assert m.model_preset == "gpt3-small" and d.max_seq_length == 2048
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay, t.max_grad_norm) == (0.9, 0.999, 1e-8, 0.1, 1.0)
    assert t.learning_rate == 6e-4 and t.per_device_train_batch_size * PROCESSES_GPT == 256
    tokens_per_step = 256 * 2048
    assert t.warmup_steps == round(375e6 / tokens_per_step)  # 375M warm-up tokens
    assert t.max_steps == int(2.5e9 / tokens_per_step)  # 2.5B training tokens
    assert str(t.lr_scheduler_type.value) == "cosine_with_min_lr" and t.lr_scheduler_kwargs == {"min_lr_rate": 0.1}


@pytest.mark.parametrize("stem, sparsity", [("gpt2-small-sparse-wide-s0.5", 0.5), ("gpt2-small-sparse-wide-s0.75", 0.75)])
def test_sparse_wide_uses_rigl_defaults_of_sparse_ift(stem, sparsity):
    _, _, _, s = parse(CONFIGS / f"{stem}.yaml")
    assert (s["ift"].kind, s["ift"].sparsity) == ("wide", sparsity)
    dyn = s["dynamic"]  # App. B.2: alpha 0.3, Delta T 100, cosine for 75% of the run
    assert (dyn.algorithm, dyn.update_interval, dyn.prune_ratio, dyn.prune_schedule, dyn.end_fraction) == (
        "rigl", 100, 0.3, "cosine", 0.75)


def test_cerebras_gpt_111m_values():
    m, d, t, _ = parse(CONFIGS / "cerebras-gpt-111m-s0.5.yaml")
    assert m.model_preset == "cerebras-gpt-111m" and d.max_seq_length == 2048
    assert (t.learning_rate, t.adam_beta2, t.adam_epsilon) == (6e-4, 0.95, 1e-8)
    assert t.per_device_train_batch_size * PROCESSES_GPT == 120  # batch 120 sequences
    assert 2.2e9 <= t.max_steps * 120 * 2048 < 2.25e9  # 2.2B tokens (9037 steps)


def test_finetuning_configs():
    _, _, t, _ = parse(CONFIGS / "squad-bert.yaml")
    assert t.num_train_epochs == 2  # Sparse-IFT App. C.2.1
    _, _, t, _ = parse(CONFIGS / "wikitext-gpt2.yaml")
    assert t.num_train_epochs == 10 and t.per_device_train_batch_size * PROCESSES_GPT == 32  # App. C.2.2
    assert t.learning_rate in (5e-3, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
