"""Model cards: YAML header through huggingface_hub, real numbers in the body, no placeholders, packaged template."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jinja2
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import BertConfig, BertForPreTraining

from hf_sparse import SparsityConfig, sparsify_
from hf_sparse import checkpoint as ckpt
from hf_sparse.checkpoint import card as mc

REPO = Path(__file__).resolve().parents[1]


def tiny_sparse_bert():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=32))
    return sparsify_(model, SparsityConfig(sparsity=0.75, structure="block", block_size=8, seed=0))


FULL_CARD = {
    "base_model": "google/bert_uncased_L-4_H-256_A-4",
    "datasets": ["wikimedia/wikipedia"],
    "language": "en",
    "license": "apache-2.0",
    "model_name": "bert-mini-s75",
    "repo_id": "org/bert-mini-s75",
    "eval_results": [{"task_type": "question-answering", "dataset_type": "rajpurkar/squad",
                      "dataset_name": "SQuAD v1.1", "metric_type": "f1", "metric_value": 81.25}],
}


def test_full_card_has_metadata_and_real_numbers(tmp_path):
    model = tiny_sparse_bert()
    ckpt.save_pretrained(model, tmp_path, card_info=FULL_CARD,
                         dynamic_config={"algorithm": "rigl", "update_interval": 100, "drop_fraction": 0.3},
                         training_stats={"step": 1000, "dof": 0.4375, "train_flops": 2.5e12,
                                         "dense_train_flops": 1.0e13})
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert {"hf_sparse", "sparse", "dynamic-sparsity", "structured-sparsity"} <= set(data.tags)
    assert data.base_model == FULL_CARD["base_model"] and data.datasets == ["wikimedia/wikipedia"]
    assert data.metrics == ["f1"] and data.eval_results[0].metric_value == 81.25
    text = card.text
    # 12 modules, 4 of 16 blocks of 8x8 (query: 4*64 of 1024; intermediate 64x32: 8 of 32 blocks -> 512 of 2048)
    assert "| `bert.encoder.layer.*.attention.self.query` | 2 | 32x32 | block 8x8 (l1) | 0.2500 | 0.2500 | 512 / 2048 |" in text
    assert "| `bert.encoder.layer.*.intermediate.dense` | 2 | 64x32 | block 8x8 (l1) | 0.2500 | 0.2500 | 1024 / 4096 |" in text
    assert "| **all sparse modules** | 12 |" in text and "4096 / 16384" in text
    assert "| block_size | 8 |" in text and "| n |" not in text and "| init_std |" not in text  # only what applies
    assert "Training algorithm: rigl" in text and "| drop_fraction | 0.3 |" in text
    assert "| explored degrees of freedom (DOF) | 0.4375 |" in text
    assert "| training FLOPs / dense | 0.2500 |" in text
    assert "| question-answering | SQuAD v1.1 | f1 | 81.25 |" in text
    assert 'hf_sparse.from_pretrained(BertForPreTraining, "org/bert-mini-s75")' in text
    assert 'BertForPreTraining.from_pretrained("org/bert-mini-s75")' in text
    assert "dense=True" in text
    for pattern in mc.PLACEHOLDER_PATTERNS:
        assert pattern not in card.content


def test_minimal_card_omits_unknown_sections(tmp_path):
    ckpt.save_pretrained(tiny_sparse_bert(), tmp_path / "ck")
    card = ModelCard.load(tmp_path / "ck" / "README.md")
    assert "static-sparsity" in card.data.tags and "dynamic-sparsity" not in card.data.tags
    assert card.data.base_model is None and card.data.eval_results is None
    for heading in ("## Evaluation", "## Training statistics", "## Training algorithm", "## Sparse Iso-FLOP"):
        assert heading not in card.text
    assert "static sparsity" in card.text and str(tmp_path / "ck") in card.text
    for pattern in mc.PLACEHOLDER_PATTERNS:
        assert pattern not in card.content


def test_card_rerender_matches_saved(tmp_path):
    ckpt.save_pretrained(tiny_sparse_bert(), tmp_path, card_info=FULL_CARD)
    record = ckpt.read_sparsity_config(tmp_path)
    assert str(mc.render_model_card(record)) == (tmp_path / "README.md").read_text()


def test_bad_eval_result_rejected_before_writing(tmp_path):
    with pytest.raises(ValueError, match="eval_results"):
        ckpt.save_pretrained(tiny_sparse_bert(), tmp_path / "ck", card_info={"eval_results": [{"metric": 1}]})
    assert not (tmp_path / "ck").exists()


def test_missing_template_variable_is_an_error(tmp_path):
    ckpt.save_pretrained(tiny_sparse_bert(), tmp_path)
    record = ckpt.read_sparsity_config(tmp_path)
    bad = tmp_path / "bad.md"
    bad.write_text("---\n{{ card_data }}\n---\n{{ not_a_variable }}\n")
    with pytest.raises(jinja2.UndefinedError):
        mc.render_model_card(record, bad)


def test_module_groups_counts():
    modules = [
        {"name": f"h.{i}.attn.c_attn", "shape": [8, 24], "active": a, "numel": 192, "target_density": 0.5,
         "structure": {"kind": "nm", "block_size": 1, "norm": "l1", "n": 2, "m": 4}} for i, a in enumerate((96, 96))
    ]
    (g,) = mc.module_groups(modules)
    assert g == {"group": "h.*.attn.c_attn", "count": 2, "shapes": "8x24", "structures": "2:4", "target": "0.5000",
                 "density": "0.5000", "active": 192, "numel": 384}


def test_template_is_package_data():
    assert mc.DEFAULT_TEMPLATE.is_file() and mc.DEFAULT_TEMPLATE.parent.parent.name == "hf_sparse"
    assert '"model_cards/*.md"' in (REPO / "pyproject.toml").read_text()


@pytest.mark.slow
def test_wheel_ships_template(tmp_path):
    if not (REPO / "README.md").exists():
        pytest.skip("README.md (required by pyproject's readme) is not in this checkout")
    src = tmp_path / "src"
    shutil.copytree(REPO / "hf_sparse", src / "hf_sparse", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hf_sparse/model_cards/sparse_model.md" in names
    assert "hf_sparse/data/squad_v1/squad_v1.py" in names  # the offline evaluate module for SQuAD EM / F1
