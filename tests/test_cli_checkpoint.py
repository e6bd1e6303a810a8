"""hf-sparse inspect / densify / card on a saved checkpoint."""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForPreTraining

from hf_sparse import SparsityConfig, sparse_modules, sparsify_
from hf_sparse import checkpoint as ckpt
from hf_sparse.checkpoint import masks as mask_io
from hf_sparse.cli import COMMANDS, main
from hf_sparse.checkpoint.masks import CheckpointError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=32)).eval()
    sparsify_(model, SparsityConfig(sparsity=0.75, structure="block", block_size=8, seed=0))
    path = ckpt.save_pretrained(model, tmp_path / "ck", training_stats={"step": 42})
    (path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return path, model


def test_commands_registered():
    assert {"demo", "inspect", "densify", "card", "bench-inference"} <= set(COMMANDS)


def test_inspect_table(saved, capsys):
    path, _ = saved
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("bert.encoder.layer.0.intermediate.dense "))
    # 64x32 weight, 8 of 32 blocks of 8x8 active: 512 weights, 1024 forward FLOPs per token
    assert line.split() == ["bert.encoder.layer.0.intermediate.dense", "linear", "64x32", "block", "8x8", "(l1)",
                            "0.2500", "0.2500", "512", "1,024"]
    assert "12 sparse modules, 4096 / 16384 weights active (density 0.2500, sparsity 0.7500)" in out
    assert "8,192 vs dense 32,768 (0.2500)" in out and "training step: 42" in out
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["modules"]) == 12 and data["modules"][0]["active"] == 256 and data["training_stats"]["step"] == 42


def test_inspect_rejects_corruption(saved, capsys):
    path, _ = saved
    (path / "sparsity_masks.safetensors").write_bytes(b"garbage")
    assert main(["inspect", str(path)]) == 2
    assert "sparsity_masks.safetensors" in capsys.readouterr().err


def test_inspect_checks_stored_zero_pattern(saved):
    path, model = saved
    tensors = load_file(str(path / "model.safetensors"))
    key = "bert.encoder.layer.1.output.dense.weight"
    mask = sparse_modules(model)["bert.encoder.layer.1.output.dense"].weight_mask
    tensors[key][~mask] = 1.0
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    record = json.loads((path / "sparsity_config.json").read_text())
    record["files"]["model.safetensors"] = mask_io.file_sha256(path / "model.safetensors")
    (path / "sparsity_config.json").write_text(json.dumps(record))
    from hf_sparse.cli.checkpoint import check_stored_weights

    rec, masks = ckpt.read_checkpoint(path)
    with pytest.raises(CheckpointError, match="model.safetensors: module 'bert.encoder.layer.1.output.dense' has"):
        check_stored_weights(path, rec, masks)


def test_densify(saved, tmp_path, capsys):
    path, model = saved
    out = tmp_path / "dense"
    assert main(["densify", str(path), str(out)]) == 0
    assert {"sparsity_config.json", "sparsity_masks.safetensors", "README.md"}.isdisjoint(os.listdir(out))
    assert (out / "vocab.txt").exists() and (out / "config.json").exists()
    dense = BertForPreTraining.from_pretrained(out).eval()
    assert not sparse_modules(dense)
    ids = torch.arange(8).reshape(1, 8)
    with torch.no_grad():
        assert torch.equal(dense(input_ids=ids).prediction_logits, model(input_ids=ids).prediction_logits)
    with pytest.raises(CheckpointError, match="not an hf_sparse checkpoint"):
        ckpt.from_pretrained(BertForPreTraining, out)
    assert main(["densify", str(path), str(path)]) == 2


def test_card_rerender(saved, tmp_path, capsys):
    path, _ = saved
    os.remove(path / "README.md")
    results = tmp_path / "eval.json"
    results.write_text(json.dumps([{"task_type": "fill-mask", "dataset_type": "Salesforce/wikitext",
                                    "dataset_name": "WikiText-103", "metric_type": "perplexity",
                                    "metric_value": 12.5}]))
    assert main(["card", str(path), "--base_model", "prajjwal1/bert-mini", "--dataset", "Salesforce/wikitext",
                 "--eval_results", str(results)]) == 0
    card = ModelCard.load(path / "README.md")
    assert card.data.base_model == "prajjwal1/bert-mini" and card.data.datasets == ["Salesforce/wikitext"]
    assert "| fill-mask | WikiText-103 | perplexity | 12.5 |" in card.text
    # the inputs persist, and the checkpoint still loads (the card is not part of the checksummed files)
    assert ckpt.read_sparsity_config(path)["card"]["base_model"] == "prajjwal1/bert-mini"
    # results given without a date are stamped with the day they were added, and the card shows it
    date = ckpt.read_sparsity_config(path)["card"]["eval_results"][0]["date"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and f"| 12.5 | {date} |" in card.text
    assert sparse_modules(ckpt.from_pretrained(BertForPreTraining, path))
    assert main(["card", str(path), "--stdout"]) == 0
    assert "prajjwal1/bert-mini" in capsys.readouterr().out


@pytest.mark.slow
def test_console_entry_point(saved):
    path, _ = saved
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "hf_sparse", "inspect", str(path)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "12 sparse modules" in res.stdout


def test_bench_inference_on_a_checkpoint(saved, capsys):
    path, _ = saved
    assert main(["bench-inference", str(path), "--batch_size", "2", "--seq_len", "8", "--repeats", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dense_seconds"] > 0 and result["sparse_seconds"] > 0
    assert result["max_abs_diff"] < 1e-4  # the converted model computes what the masked model computes
    assert result["methods"]  # one chosen representation per layer kind
    assert main(["bench-inference", str(path), "--seq_len", "0"]) == 2
