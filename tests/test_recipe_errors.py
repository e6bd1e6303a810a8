"""Recipes on bad input: one clear error line (two with the --debug hint), exit status 1, nothing in --output_dir,
checks before data preparation; per-script options and --help; the tokenizer loads silently; predictions files.

Most cases run a script's ``main`` in this process through `preflight.run_recipe` (a second or two each); three
go through the real ``accelerate launch`` entry point (slow).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
common = importlib.import_module("common")
arguments = importlib.import_module("arguments")
preflight = importlib.import_module("preflight")
pretrain_bert = importlib.import_module("pretrain_bert")
pretrain_gpt2 = importlib.import_module("pretrain_gpt2")
finetune_squad = importlib.import_module("finetune_squad")
finetune_wikitext = importlib.import_module("finetune_wikitext")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "the", "otter", "river", "lives", "near", "what",
         "where", "does", "grey", "city", "north", "south", "a", "of"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv(preflight.DEBUG_ENV, raising=False)


def _fail(module, argv, capsys) -> List[str]:
    """Runs a recipe expecting a reported error; returns its stderr lines (checked: 2 lines, no traceback)."""
    with pytest.raises(SystemExit) as exc:
        preflight.run_recipe(module.main, [str(a) for a in argv])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"{module.__name__}.py:")]
    assert len(lines) == 2 and "--debug" in lines[1], err
    return lines


def _vocab_dir(tmp_path) -> Path:
    path = tmp_path / "vocab"
    path.mkdir(exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return path


def _qa_checkpoint(tmp_path) -> Path:
    from transformers import BertConfig, BertForQuestionAnswering

    ckpt = tmp_path / "qa"
    BertForQuestionAnswering(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64)).save_pretrained(ckpt)
    (ckpt / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return ckpt


def _squad(path: Path, context="the grey otter lives near the river .", start=4, qid="q1",
           question="where does the otter live ?") -> Path:
    answer = {"text": "otter"} if start is None else {"text": "otter", "answer_start": start}
    data = {"data": [{"title": "Otters", "paragraphs": [
        {"context": context, "qas": [{"id": qid, "question": question, "answers": [answer]}]}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


BERT_TINY = ["--model_preset", "bert-test", "--tokenizer_name", "none", "--tokenizer_vocab_size", "300",
             "--max_steps", "1", "--use_cpu", "true", "--report_to", "none", "--max_seq_length", "32"]


# --- the bad inputs -------------------------------------------------------------------------------------
def test_empty_training_file_names_the_file(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    out = tmp_path / "out"
    lines = _fail(pretrain_bert, [*BERT_TINY, "--train_files", empty, "--output_dir", out], capsys)
    assert str(empty) in lines[0] and "empty" in lines[0]
    assert not out.exists()


def test_block_that_does_not_fit_is_refused_before_data(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "never-read.txt"  # would fail data loading: the model check must come first
    lines = _fail(pretrain_bert, [*BERT_TINY, "--model_preset", "bert-mini", "--sparsity.structure", "block",
                                  "--sparsity.block_size", "48", "--train_files", missing, "--output_dir", out],
                  capsys)
    assert "block_size=48" in lines[0] and "(256, 256)" in lines[0] and "query" in lines[0]
    assert not out.exists()


def test_squad_training_answer_without_answer_start(tmp_path, capsys):
    ckpt, out = _qa_checkpoint(tmp_path), tmp_path / "out"
    train = _squad(tmp_path / "train.json", start=None, qid="no-start-7")
    dev = _squad(tmp_path / "dev.json")
    lines = _fail(finetune_squad, ["--model_name_or_path", ckpt, "--train_files", train, "--validation_files", dev,
                                   "--max_seq_length", "32", "--doc_stride", "8", "--output_dir", out,
                                   "--use_cpu", "true", "--report_to", "none"], capsys)
    assert str(train) in lines[0] and "'no-start-7'" in lines[0] and "answer_start" in lines[0]
    assert not out.exists()


def test_squad_eval_entry_with_null_context(tmp_path, capsys):
    from hf_sparse.data import load_squad_json

    bad = tmp_path / "dev.json"
    bad.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [
        {"context": None, "qas": [{"id": "null-ctx-3", "question": "what ?", "answers": [{"text": "x"}]}]}]}]}))
    with pytest.raises(ValueError, match=r"dev.json: question id 'null-ctx-3' .*'context' must be a non-empty"):
        load_squad_json(bad, require_answer_start=False)
    ckpt, out = _qa_checkpoint(tmp_path), tmp_path / "out"
    lines = _fail(finetune_squad, ["--model_name_or_path", ckpt, "--train_files", _squad(tmp_path / "t.json"),
                                   "--validation_files", bad, "--max_seq_length", "32", "--doc_stride", "8",
                                   "--output_dir", out, "--use_cpu", "true"], capsys)
    assert "null-ctx-3" in lines[0] and not out.exists()
    # Evaluation answers need no answer_start (scored on their text); training answers do.
    assert load_squad_json(_squad(tmp_path / "e.json", start=None), require_answer_start=False)[0]["answers"] == {
        "text": ["otter"], "answer_start": [-1]}


def test_config_overrides_set_none_defaults_and_name_bad_keys():
    from transformers import GPT2Config

    cfg = arguments.apply_config_overrides(GPT2Config(), "n_inner=512, n_positions=256,scale_attn_weights=false")
    assert (cfg.n_inner, cfg.n_positions, cfg.scale_attn_weights) == (512, 256, False)
    assert arguments.apply_config_overrides(GPT2Config(), "activation_function=relu").activation_function == "relu"
    with pytest.raises(ValueError, match="'n_innr'.*did you mean n_inner"):
        arguments.apply_config_overrides(GPT2Config(), "n_innr=5")
    with pytest.raises(ValueError, match="n_positions='many' is not a number"):
        arguments.apply_config_overrides(GPT2Config(), "n_positions=many")
    with pytest.raises(ValueError, match="'n_inner' is not key=value"):
        arguments.apply_config_overrides(GPT2Config(), "n_inner")
    before = GPT2Config()
    with pytest.raises(ValueError):
        arguments.apply_config_overrides(before, "n_layer=3,n_head=x")
    assert before.n_layer == GPT2Config().n_layer  # checked before anything changes


def test_jsonl_without_text_names_file_and_option(tmp_path, capsys):
    from hf_sparse.data import load_documents

    jsonl = tmp_path / "crawl.jsonl"
    jsonl.write_text("\n".join(json.dumps({"content": f"doc {i}."}) for i in range(3)) + "\n")
    with pytest.raises(ValueError, match=r"crawl.jsonl: no 'text' field .*\['content'\].*--text_column"):
        load_documents(str(jsonl))
    assert load_documents(str(jsonl), text_column="content")["text"] == ["doc 0.", "doc 1.", "doc 2."]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        load_documents(str(broken))
    out = tmp_path / "out"
    lines = _fail(pretrain_gpt2, ["--model_preset", "gpt2-test", "--tokenizer_name", "none", "--max_seq_length",
                                  "16", "--train_files", jsonl, "--output_dir", out, "--use_cpu", "true"], capsys)
    assert "crawl.jsonl" in lines[0] and "--text_column" in lines[0] and not out.exists()


# --- options, sections, output directory, --debug --------------------------------------------------------------
def test_each_script_shows_and_accepts_only_its_options(capsys):
    helps = {}
    for script in ("pretrain_bert", "pretrain_gpt2", "finetune_squad", "finetune_wikitext"):
        module = importlib.import_module(script)
        with pytest.raises(SystemExit):
            arguments.parse_args(["--help"], module.DEFAULTS, script=script,
                                 unsupported=getattr(module, "UNSUPPORTED", None))
        helps[script] = capsys.readouterr().out
    assert helps["finetune_squad"].startswith("usage: finetune_squad.py")
    for opt in ("--mlm_probability", "--model_preset", "--text_column", "--ift.kind", "--masked_mlm_head"):
        assert opt not in helps["finetune_squad"]
    assert "--doc_stride" in helps["finetune_squad"] and "--sparse_finetune" in helps["finetune_squad"]
    assert "--mlm_probability" in helps["pretrain_bert"] and "--ift.kind" in helps["pretrain_bert"]
    assert "--doc_stride" not in helps["pretrain_bert"] and "--sparse_finetune" not in helps["pretrain_gpt2"]
    assert "--mlm_probability" not in helps["pretrain_gpt2"] and "--ift.kind" not in helps["finetune_wikitext"]
    with pytest.raises(ValueError, match="--mlm_probability is an option of pretrain_bert.py, not of finetune_squad"):
        arguments.parse_args(["--mlm_probability", "0.2", "--train_files", "a"], script="finetune_squad")
    with pytest.raises(ValueError, match="finetune_squad.py does not support --ift"):
        arguments.parse_args(["--ift.kind", "wide", "--train_files", "a"], script="finetune_squad",
                             unsupported=finetune_squad.UNSUPPORTED)


def test_unsupported_yaml_section_and_foreign_yaml_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train_files: [a.txt]\nift:\n  kind: wide\n  sparsity: 0.5\n")
    with pytest.raises(ValueError, match="does not support an 'ift:' section"):
        arguments.parse_args(["--config", str(cfg)], script="finetune_wikitext",
                             unsupported=finetune_wikitext.UNSUPPORTED)
    cfg.write_text("train_files: [a.txt]\ndoc_stride: 64\n")
    with pytest.raises(ValueError, match="'doc_stride' is an option of finetune_squad.py, not of pretrain_gpt2.py"):
        arguments.parse_args(["--config", str(cfg)], script="pretrain_gpt2")
    cfg.write_text("train_files: [a.txt\n")
    with pytest.raises(ValueError, match="c.yaml: not valid YAML"):
        arguments.parse_args(["--config", str(cfg)])
    with pytest.raises(ValueError, match="invalid float value: 'fast'"):
        arguments.parse_args(["--learning_rate", "fast", "--train_files", "a"], script="pretrain_gpt2")


def test_finished_output_dir_is_refused_and_created_dir_removed(tmp_path, capsys):
    done = tmp_path / "done"
    done.mkdir()
    (done / "results.json").write_text("{}")
    lines = _fail(pretrain_bert, [*BERT_TINY, "--train_files", "x.txt", "--output_dir", done], capsys)
    assert "already holds a finished run (results.json)" in lines[0]
    assert (done / "results.json").is_file()  # an existing directory is never removed

    def failing_main(argv):
        margs, dargs, targs, sparse = common.parse_args(argv)
        common.check_output_dir(targs)
        os.makedirs(targs.output_dir)  # e.g. a trained tokenizer written before a later error
        raise RuntimeError("late failure")

    out = tmp_path / "fresh"
    with pytest.raises(SystemExit):
        preflight.run_recipe(failing_main, ["--train_files", "a.txt", "--output_dir", str(out)])
    assert "RuntimeError: late failure" in capsys.readouterr().err and not out.exists()


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch):
    argv = [*BERT_TINY, "--train_files", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        preflight.run_recipe(pretrain_bert.main, [*argv, "--debug"])
    monkeypatch.setenv(preflight.DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        preflight.run_recipe(pretrain_bert.main, argv)
    # TrainingArguments' own --debug (with a value) is left alone.
    assert arguments.strip_debug_flag(["--debug", "underflow_overflow", "--x"]) == (
        ["--debug", "underflow_overflow", "--x"], False)
    assert arguments.strip_debug_flag(["--x", "1", "--debug"]) == (["--x", "1"], True)


# --- one plausible bad input per recipe, found by trying ------------------------------------------------------------
def test_bert_gpt_preset_mixup(tmp_path, capsys):
    lines = _fail(pretrain_bert, [*BERT_TINY, "--model_preset", "gpt2-test", "--train_files", "x.txt",
                                  "--output_dir", tmp_path / "o"], capsys)
    assert "'gpt2-test' is not a BERT preset" in lines[0] and "pretrain_gpt2.py" in lines[0]


def test_gpt2_text_shorter_than_one_block(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("One short line.\n\nAnother short line.\n", encoding="utf-8")
    lines = _fail(pretrain_gpt2, ["--model_preset", "gpt2-test", "--tokenizer_name", "none", "--tokenizer_vocab_size",
                                  "300", "--max_seq_length", "128", "--train_files", short, "--validation_files",
                                  short, "--output_dir", tmp_path / "o", "--use_cpu", "true"], capsys)
    assert "shorter than one block of max_seq_length=128" in lines[0] and not (tmp_path / "o").exists()


def test_squad_question_longer_than_the_window_allows(tmp_path, capsys):
    ckpt = _qa_checkpoint(tmp_path)
    long_q = " ".join(["where"] * 30) + " ?"
    train = _squad(tmp_path / "train.json", qid="long-q", question=long_q)
    lines = _fail(finetune_squad, ["--model_name_or_path", ckpt, "--train_files", train, "--validation_files",
                                   _squad(tmp_path / "dev.json"), "--max_seq_length", "48", "--doc_stride", "16",
                                   "--output_dir", tmp_path / "o", "--use_cpu", "true"], capsys)
    assert "'long-q' has 31 tokens" in lines[0] and "--doc_stride" in lines[0]


def test_wikitext_checkpoint_path_typo(tmp_path, capsys):
    lines = _fail(finetune_wikitext, ["--model_name_or_path", tmp_path / "gpt2-typo", "--train_files", "w.txt",
                                      "--output_dir", tmp_path / "o", "--use_cpu", "true"], capsys)
    assert "gpt2-typo' is not a directory" in lines[0]


# --- tokenizer, predictions -------------------------------------------------------------------------------------
def test_local_tokenizer_directories_load_silently(tmp_path, caplog):
    from transformers import GPT2Tokenizer

    bert_dir = _vocab_dir(tmp_path)
    gpt_dir = tmp_path / "bpe"
    gpt_dir.mkdir()
    (gpt_dir / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}))
    (gpt_dir / "merges.txt").write_text("#version: 0.2\na b\n")
    with caplog.at_level(logging.DEBUG):
        bert = common.load_named_tokenizer(common.ModelArguments(tokenizer_name=str(bert_dir)), "bert")
        gpt = common.load_named_tokenizer(common.ModelArguments(tokenizer_name=str(gpt_dir)), "gpt2")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "okenizer" in r.getMessage()]
    assert bert("the otter")["input_ids"] == [2, 6, 7, 3] and isinstance(gpt, GPT2Tokenizer)
    assert common.load_named_tokenizer(common.ModelArguments(), "bert") is None
    no_files = tmp_path / "no_tokenizer"
    no_files.mkdir()
    with pytest.raises(FileNotFoundError, match="no_tokenizer' has no tokenizer files"):
        common.load_named_tokenizer(common.ModelArguments(tokenizer_name=str(no_files)), "bert")


def test_nbest_and_predictions_files(tmp_path):
    import datasets
    from hf_sparse.data import nbest_predictions, postprocess_predictions

    examples = datasets.Dataset.from_dict({"id": ["a", "b"], "context": ["red fox jumps", "blue sky"]})
    # Window 0 (example a): context tokens 1..3 = "red", "fox", "jumps"; window 1 (example b): 1..2.
    offsets = [[[-1, -1], [0, 3], [4, 7], [8, 13]], [[-1, -1], [0, 4], [5, 8], [-1, -1]]]
    features = datasets.Dataset.from_dict({"example_id": ["a", "b"], "offset_mapping": offsets})
    start = torch.tensor([[9.0, 2.0, 1.0, 0.0], [9.0, 0.0, 3.0, 0.0]])
    end = torch.tensor([[9.0, 0.0, 2.0, 1.0], [9.0, 0.0, 1.0, 0.0]])
    nbest = nbest_predictions(examples, features, start.numpy(), end.numpy(), n_best=3, max_answer_length=2)
    # a: spans (start, end) with 1 <= length <= 2 in the context: (1,2) 4.0, (2,2) 3.0, (2,3) 2.0, (1,1) 2.0 ...
    assert [c["text"] for c in nbest["a"]][:2] == ["red fox", "fox"]
    assert nbest["a"][0]["start_logit"] == 2.0 and nbest["a"][0]["end_logit"] == 2.0
    assert sum(c["probability"] for c in nbest["a"]) == pytest.approx(1.0)
    assert nbest["b"][0]["text"] == "sky" and len(nbest["a"]) == 3
    best = postprocess_predictions(examples, features, start.numpy(), end.numpy(), n_best=3, max_answer_length=2)
    assert best == {k: v[0]["text"] for k, v in nbest.items()}
    finetune_squad.write_predictions(str(tmp_path), best, nbest)
    assert json.loads((tmp_path / "predictions.json").read_text()) == {"a": "red fox", "b": "sky"}
    assert json.loads((tmp_path / "nbest_predictions.json").read_text())["b"][0]["text"] == "sky"


# --- the real accelerate launch entry point (slow) ------------------------------------------------------------------
def _accelerate(script: str, args, tmp_path: Path) -> subprocess.CompletedProcess:
    # --quiet: accelerate's single-process launcher otherwise adds its own CalledProcessError traceback.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--cpu", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "recipes" / script), *map(str, args), "--use_cpu", "true", "--report_to", "none"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(tmp_path / "hf_home")}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _launch_fails(script: str, args, tmp_path: Path) -> str:
    proc = _accelerate(script, args, tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{script}:")]
    assert len(lines) == 2, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_launch_empty_training_file(tmp_path):
    empty, out = tmp_path / "empty.txt", tmp_path / "out"
    empty.write_text("")
    line = _launch_fails("pretrain_bert.py", [*BERT_TINY, "--train_files", empty, "--output_dir", out], tmp_path)
    assert str(empty) in line and "empty" in line and not out.exists()


@pytest.mark.slow
def test_launch_block_size_that_does_not_fit(tmp_path):
    out = tmp_path / "out"
    line = _launch_fails("pretrain_bert.py", [*BERT_TINY, "--model_preset", "bert-mini", "--sparsity.structure",
                                              "block", "--sparsity.block_size", "48", "--train_files",
                                              tmp_path / "not-read.txt", "--output_dir", out], tmp_path)
    assert "block_size=48" in line and not out.exists()


@pytest.mark.slow
def test_launch_squad_answer_without_start(tmp_path):
    ckpt, out = _qa_checkpoint(tmp_path), tmp_path / "out"
    line = _launch_fails("finetune_squad.py", ["--model_name_or_path", ckpt, "--train_files",
                                               _squad(tmp_path / "train.json", start=None, qid="q-no-start"),
                                               "--validation_files", _squad(tmp_path / "dev.json"),
                                               "--max_seq_length", "32", "--doc_stride", "8", "--output_dir", out],
                         tmp_path)
    assert "'q-no-start'" in line and "answer_start" in line and not out.exists()
