"""Model cards: YAML header through huggingface_hub, real numbers in the body, no placeholders, packaged template."""

import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import BertConfig, BertForPreTraining

import hf_sparse
from hf_sparse import DynamicSparsityConfig, SparsityConfig, sparsify_
from hf_sparse import checkpoint as ckpt
from hf_sparse.algorithms.topk import TopKAlgorithm
from hf_sparse.checkpoint import card as mc
from hf_sparse.checkpoint.citations import PAPERS, papers_for

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


# --- citations, intended use, limitations, data, dated results, settings that apply --------------------------------


@hf_sparse.register_algorithm
class CardTopKVariant(TopKAlgorithm):
    """A user algorithm: a top-k subclass (keeps the topk_* rows) that also uses a GMP field."""

    name = "test_card_topk_variant"
    card_fields = ("gmp_initial_density",)
    papers = ("nvidia_sparse_training", "gmp")


def _card(tmp_path, dynamic=None, **kwargs):
    path = ckpt.save_pretrained(tiny_sparse_bert(), tmp_path / "ck", dynamic_config=dynamic, **kwargs)
    return (path / "README.md").read_text(), ckpt.read_sparsity_config(path)


def _setting_rows(text, heading="## Training algorithm"):
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ") and "---" not in line}


def test_dynsparse_card_cites_its_paper_and_lists_only_its_settings(tmp_path):
    text, _ = _card(tmp_path, DynamicSparsityConfig(algorithm="dynsparse", num_updates=160, prune_ratio=0.5))
    rows = _setting_rows(text)
    assert {"num_updates", "prune_ratio", "prune_schedule", "end_fraction"} <= rows
    assert not any(r.startswith(("topk_", "gmp_")) for r in rows)  # settings of other algorithms are left off
    assert "## Citation" in text and "Dietrich et al. 2021, arXiv:2108.06277" in text
    assert "@article{dietrich2021towards," in text and "eprint        = {2108.06277}" in text
    assert "```bibtex" in text and "rigl" not in text.split("## Citation")[1].lower()
    for heading in ("## Intended use", "## Limitations", "## Training data"):
        assert heading in text
    assert "masked-dense" in text and "wall-clock" in text  # no speed-up without the kernels
    assert "Not recorded with this checkpoint." in text and "training data were not recorded" in text


def test_each_algorithm_keeps_its_own_settings(tmp_path):
    topk, _ = _card(tmp_path / "topk", DynamicSparsityConfig(algorithm="topk", topk_exploitation="FIX"))
    assert {"topk_exploitation", "topk_fix_fraction"} <= _setting_rows(topk)
    assert "gmp_initial_density" not in _setting_rows(topk) and "no arXiv id" in topk
    gmp, _ = _card(tmp_path / "gmp", DynamicSparsityConfig(algorithm="gmp"))
    assert "gmp_initial_density" in _setting_rows(gmp) and not any(r.startswith("topk_") for r in _setting_rows(gmp))
    assert "arXiv:1710.01878" in gmp
    static, _ = _card(tmp_path / "static", DynamicSparsityConfig(algorithm="static"))
    assert not {"num_updates", "update_interval", "prune_ratio", "prune_schedule"} & _setting_rows(static)
    # A registered user algorithm: its base class's fields, the fields it declares, the papers it names.
    user, _ = _card(tmp_path / "user", DynamicSparsityConfig(algorithm="test_card_topk_variant"))
    assert {"topk_exploitation", "gmp_initial_density"} <= _setting_rows(user)
    assert "arXiv:1710.01878" in user


def test_papers_for_records():
    assert papers_for({"dynamic_config": {"algorithm": "rigl"}, "ift_config": {"kind": "wide"}, "modules": []}) == [
        "rigl", "sparse_ift"]
    assert papers_for({"dynamic_config": {"algorithm": "set", "apply_sparse_lr": True}, "modules": [],
                       "card": {"papers": ["cerebras_upper_bounds"]}}) == ["set", "dynsparse", "cerebras_upper_bounds"]
    nm = {"structure": {"kind": "nm_transposable"}}
    assert papers_for({"modules": [nm]}) == ["nvidia_sparse_training"]
    assert papers_for({"dynamic_config": {"algorithm": "not_registered_here"}, "modules": []}) == []
    ids = {"dynsparse": "2108.06277", "sparse_ift": "2303.11525", "rigl": "1911.11134", "set": "1707.04780",
           "gmp": "1710.01878", "movement": "2005.07683"}
    for key, arxiv in ids.items():
        assert f"arXiv:{arxiv}" in PAPERS[key].cite and f"eprint        = {{{arxiv}}}" in PAPERS[key].bibtex
    for key in ("nvidia_sparse_training", "cerebras_upper_bounds"):
        assert "no arXiv id" in PAPERS[key].cite and "eprint" not in PAPERS[key].bibtex


def test_training_data_and_dated_results(tmp_path):
    today = datetime.now(timezone.utc).date().isoformat()
    results = [{"task_type": "question-answering", "dataset_type": "rajpurkar/squad", "dataset_name": "SQuAD v1.1",
                "metric_type": "f1", "metric_value": 81.25, "date": "2026-11-30"},
               {"task_type": "question-answering", "dataset_type": "rajpurkar/squad", "dataset_name": "SQuAD v1.1",
                "metric_type": "exact_match", "metric_value": 72.5}]
    text, record = _card(tmp_path, card_info={
        "datasets": ["rajpurkar/squad"], "training_data": ["rajpurkar/squad (plain_text, train)"],
        "eval_data": ["dev-v1.1.json"], "eval_results": results, "papers": ["sparse_ift"],
        "limitations": "Two optimizer steps on synthetic data: a smoke-test model."},
        training_stats={"step": 2, "tokens": 1024})
    assert "## Training data\n\n- rajpurkar/squad (plain_text, train)\n" in text
    assert "Evaluation data:\n\n- dev-v1.1.json\n" in text
    assert "| question-answering | SQuAD v1.1 | f1 | 81.25 | 2026-11-30 |" in text
    assert f"| question-answering | SQuAD v1.1 | exact_match | 72.5 | {today} |" in text
    assert record["card"]["eval_results"][1]["date"] == today  # stamped at save time: a re-render is identical
    assert str(mc.render_model_card(record)) == (tmp_path / "ck" / "README.md").read_text()
    assert "Trained for 2 optimizer steps (1,024 training tokens)" in text and "smoke-test model" in text
    assert "training data were not recorded" not in text and "arXiv:2303.11525" in text
    assert ModelCard(text).data.datasets == ["rajpurkar/squad"]


@pytest.mark.parametrize("card_info, match", [
    ({"training_dataset": ["x"]}, "unknown keys \\['training_dataset'\\]"),
    ({"training_data": "wiki.txt"}, "must be a list of strings"),
    ({"papers": ["attention_is_all_you_need"]}, "unknown papers"),
    ({"eval_results": [{**FULL_CARD["eval_results"][0], "date": "yesterday"}]}, "not an ISO date"),
])
def test_bad_card_info_rejected_before_writing(tmp_path, card_info, match):
    with pytest.raises(ValueError, match=match):
        ckpt.save_pretrained(tiny_sparse_bert(), tmp_path / "ck", card_info=card_info)
    assert not (tmp_path / "ck").exists()


def test_dict_settings_render_readably(tmp_path):
    ckpt.save_pretrained(tiny_sparse_bert(), tmp_path)
    record = ckpt.read_sparsity_config(tmp_path)
    record["sparsity_config"]["sparsity_pattern"] = {r".*attention\.self\.(query|key)": 0.5, r".*output\.dense": 0.8}
    text = mc.render_model_card(record).text
    assert r"| sparsity_pattern | `.*attention\.self\.(query\|key)`: 0.5; `.*output\.dense`: 0.8 |" in text


def test_training_command_is_shown_only_when_given(tmp_path):
    command = "hf-sparse reproduce --suite cpu --reference reproduction/reference_checkpoint"
    text, record = _card(tmp_path, card_info={"training_command": command})
    assert f"Trained with `{command}`." in text.split("## Sparsity", 1)[0]  # in the summary, at the top
    assert record["card"]["training_command"] == command
    assert str(mc.render_model_card(record)) == (tmp_path / "ck" / "README.md").read_text()
    plain, _ = _card(tmp_path / "plain")
    assert "Trained with" not in plain
    with pytest.raises(ValueError, match="training_command"):
        ckpt.save_pretrained(tiny_sparse_bert(), tmp_path / "bad", card_info={"training_command": ["hf-sparse"]})
