"""The SQuAD recipe on a Sparse-IFT BERT pre-training checkpoint: sparse fine-tuning and dense fine-tuning (SPDF).

The Sparse-IFT paper (Saxena et al. 2023, arXiv:2303.11525) pre-trains a transformed BERT and fine-tunes it on
SQuAD. ``recipes/finetune_squad.py`` runs in this process (two optimizer steps on synthetic SQuAD data, a tiny
word-level tokenizer saved with the checkpoint): ``--sparse_finetune`` keeps the pre-training masks and the
transformation, ``--dense_finetune`` keeps the transformed structure with dense layers.
"""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForPreTraining, BertForQuestionAnswering, BertTokenizer

from conftest import tiny_bert_config

import hf_sparse
from hf_sparse.cli.quickstart_run import synthetic_squad
from hf_sparse.ift import from_pretrained_sparse_ift
from hf_sparse.ift.modules import IFT_MODULES

REPO = Path(__file__).resolve().parents[1]


def _squad_files(tmp_path: Path):
    train, dev = synthetic_squad(2, seed=1), synthetic_squad(1, seed=2)
    paths = tmp_path / "train.json", tmp_path / "dev.json"
    for path, raw in zip(paths, (train, dev)):
        path.write_text(json.dumps(raw), encoding="utf-8")
    texts = [t for raw in (train, dev) for a in raw["data"] for p in a["paragraphs"]
             for t in (p["context"], *(q["question"] for q in p["qas"]))]
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])})
    return paths, tokenizer


def _pretrained_ift(tmp_path: Path, kind: str, tokenizer) -> Path:
    torch.manual_seed(0)
    cfg = hf_sparse.SparseIFTConfig(kind=kind, sparsity=0.5)
    config = tiny_bert_config(vocab_size=len(tokenizer), max_position_embeddings=128)
    model = hf_sparse.apply_sparse_ift(BertForPreTraining, config, cfg)
    return hf_sparse.save_pretrained(model, tmp_path / "pretrained", ift_config=cfg, tokenizer=tokenizer)


def _finetune(tmp_path: Path, checkpoint: Path, mode: str, train: Path, dev: Path) -> Path:
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        import finetune_squad
    finally:
        sys.path.remove(str(REPO / "recipes"))
    out = tmp_path / "squad"
    metrics = finetune_squad.main([
        "--config", str(REPO / "recipes" / "configs" / "tiny-squad.yaml"), "--model_name_or_path", str(checkpoint),
        mode, "--train_files", str(train), "--validation_files", str(dev), "--output_dir", str(out),
        "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true",
    ])
    assert 0.0 <= metrics["eval_f1"] <= 100.0 and metrics["eval_examples"] == 9
    return out


def _ift_types(model):
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, tuple(IFT_MODULES.values()))})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parallel"])
def test_sparse_finetune_keeps_masks_and_transformation(tmp_path, kind):
    (train, dev), tokenizer = _squad_files(tmp_path)
    pre = _pretrained_ift(tmp_path, kind, tokenizer)
    out = _finetune(tmp_path, pre, "--sparse_finetune", train, dev)
    record = hf_sparse.checkpoint.read_sparsity_config(out)
    assert record["model_class"] == "BertForQuestionAnswering" and record["ift_config"]["kind"] == kind
    assert json.loads((out / "config.json").read_text())["sparse_ift"]["config"]["kind"] == kind
    before, after = load_file(str(pre / "sparsity_masks.safetensors")), load_file(str(out / "sparsity_masks.safetensors"))
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)  # static fine-tuning
    qa = hf_sparse.from_pretrained(BertForQuestionAnswering, out)
    assert len(hf_sparse.sparse_modules(qa)) == len(record["modules"])
    assert "Sparse Iso-FLOP Transformation" in (out / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["doped"])
def test_dense_finetune_keeps_the_transformed_structure_dense(tmp_path, kind):
    (train, dev), tokenizer = _squad_files(tmp_path)
    pre = _pretrained_ift(tmp_path, kind, tokenizer)
    out = _finetune(tmp_path, pre, "--dense_finetune", train, dev)
    assert not (out / "sparsity_config.json").exists() and (out / "model.safetensors").is_file()  # SPDF: dense
    qa = from_pretrained_sparse_ift(BertForQuestionAnswering, out, masks="dense")
    assert not hf_sparse.sparse_modules(qa) and _ift_types(qa) == [IFT_MODULES[kind].__name__]
    state = load_file(str(out / "model.safetensors"))
    assert "qa_outputs.weight" in state and not any(k.startswith("cls.") for k in state)
