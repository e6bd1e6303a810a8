"""Recipes: YAML + command-line parsing (fast), and each recipe end to end through ``accelerate launch`` (slow).

End-to-end runs use tiny configs and a few steps: the shared real data where it exists (skipped otherwise) and a
synthetic-data variant that always runs. One pre-training runs with two gloo processes.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_bert_config

import hf_sparse
from hf_sparse.cli.quickstart_run import synthetic_documents, synthetic_squad, write_synthetic_jsonl, write_synthetic_text

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(REPO / "recipes"))
common = importlib.import_module("common")


# --- parsing -----------------------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_defaults_then_command_line_overrides(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "\n".join([
        "model_preset: bert-mini", "max_seq_length: 96", "learning_rate: 0.0003", "use_cpu: true",
        "train_files: [a.txt, b.txt]", "output_dir: out/x",
        "sparsity:", "  sparsity: 0.9", "  structure: block", "  block_size: 8",
        "dynamic:", "  algorithm: dynsparse", "  num_updates: 160", "  prune_ratio: 0.5",
    ]))
    m, d, t, s = common.parse_args(
        ["--config", cfg, "--learning_rate", "1e-4", "--sparsity.block_size", "16", "--dynamic.algorithm", "rigl",
         "--ift.kind", "wide", "--ift.sparsity", "0.5", "--sparsity.target_modules", ".*query", ".*key"],
        defaults={"learning_rate": 2e-4, "warmup_steps": 7, "max_seq_length": 128},
    )
    assert m.model_preset == "bert-mini"
    assert d.max_seq_length == 96 and d.train_files == ["a.txt", "b.txt"]  # YAML beats the script default
    assert t.learning_rate == 1e-4  # the command line beats YAML
    assert t.warmup_steps == 7  # script default, untouched
    assert t.output_dir == "out/x" and t.use_cpu is True
    assert (s["sparsity"].sparsity, s["sparsity"].structure, s["sparsity"].block_size) == (0.9, "block", 16)
    assert s["sparsity"].target_modules == [".*query", ".*key"]
    assert (s["dynamic"].algorithm, s["dynamic"].num_updates, s["dynamic"].prune_ratio) == ("rigl", 160, 0.5)
    assert s["ift"].kind == "wide" and s["ift"].sparsity == 0.5  # a section given only on the command line
    assert s["regularizer"] is None


def test_bad_options_raise_naming_them(tmp_path):
    with pytest.raises(ValueError, match="learnin_rate"):
        common.parse_args(["--config", _write(tmp_path / "a.yaml", "learnin_rate: 1\n")])
    with pytest.raises(ValueError, match="sparsity"):
        common.parse_args(["--config", _write(tmp_path / "b.yaml", "sparsity: 0.9\n")])
    with pytest.raises(ValueError, match="--not_an_option"):
        common.parse_args(["--not_an_option", "3", "--train_files", "a.txt"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        common.parse_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="1.5"):
        common.parse_args(["--sparsity.sparsity", "1.5", "--train_files", "a.txt"])
    with pytest.raises(ValueError, match="mutually exclusive"):
        common.parse_args(["--sparse_finetune", "--dense_finetune", "--train_files", "a.txt"])
    with pytest.raises(ValueError, match="No data"):
        common.parse_args([])
    with pytest.raises(ValueError, match="max_seq_length=4"):
        common.parse_args(["--train_files", "a.txt", "--max_seq_length", "4"])
    _, d, _, _ = common.parse_args(["--config", _write(tmp_path / "c.yaml", "train_files: one.txt\n")])
    assert d.train_files == ["one.txt"]


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(path):
    script = ("finetune_squad" if "squad" in path.stem else "finetune_wikitext" if "wikitext" in path.stem
              else "pretrain_bert" if "bert" in path.stem else "pretrain_gpt2")
    module = importlib.import_module(script)  # parsed as the recipe parses it: its defaults and options only
    m, d, t, s = common.parse_args(["--config", str(path), "--bf16", "false"], module.DEFAULTS, script=script,
                                   unsupported=getattr(module, "UNSUPPORTED", None))
    name = path.stem
    if name == "bert-medium-dynsparse-s0.9":  # seed 000: n=160, pr=0.5, LR 2e-4, 10k warm-up, eps 1e-6
        assert (s["dynamic"].num_updates, s["dynamic"].prune_ratio, s["sparsity"].sparsity) == (160, 0.5, 0.9)
        assert (t.learning_rate, t.warmup_steps, t.adam_epsilon, t.weight_decay) == (2e-4, 10000, 1e-6, 0.01)
    if name == "bert-medium-dynsparse-block16-s0.9":
        assert (s["sparsity"].structure, s["sparsity"].block_size, s["dynamic"].num_updates) == ("block", 16, 80)
    if name == "bert-medium-dynsparse-s0.99":
        assert (s["sparsity"].sparsity, s["dynamic"].prune_ratio) == (0.99, 0.75)
    if name.startswith("bert-medium-topk"):
        assert s["dynamic"].algorithm == "topk" and s["dynamic"].topk_exploitation.lower() in name
    if name == "gpt2-small-sparse-wide-s0.5":  # seed 004: AdamW eps 1e-8, wd 0.1, cosine to 10%, LR 6e-4
        assert (s["ift"].kind, s["ift"].sparsity, s["dynamic"].algorithm) == ("wide", 0.5, "rigl")
        assert (t.learning_rate, t.adam_epsilon, t.weight_decay, t.max_grad_norm) == (6e-4, 1e-8, 0.1, 1.0)
        assert t.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and d.max_seq_length == 2048


def test_trained_tokenizers_when_no_name_is_given(tmp_path):
    from transformers import TrainingArguments

    texts = lambda: iter([[" ".join(d) for d in synthetic_documents(50, seed=1)]])  # noqa: E731
    args = TrainingArguments(str(tmp_path), use_cpu=True)
    m = common.ModelArguments(tokenizer_vocab_size=300)
    bert = common.resolve_tokenizer(m, "bert", texts, str(tmp_path / "b"), args.main_process_first)
    assert (tmp_path / "b" / "tokenizer" / "vocab.txt").is_file()
    assert bert.mask_token == "[MASK]" and len(bert) <= 300
    ids = bert("The grey otter lives near the river.")["input_ids"]
    assert ids[0] == bert.cls_token_id and bert.unk_token_id not in ids
    gpt = common.resolve_tokenizer(common.ModelArguments(tokenizer_vocab_size=400), "gpt2", texts,
                                   str(tmp_path / "g"), args.main_process_first)
    assert gpt.eos_token == "<|endoftext|>" and len(gpt) <= 400
    text = "The grey otter lives near the river."
    assert gpt.decode(gpt(text)["input_ids"]) == text  # byte-level: lossless


def test_load_for_finetuning_modes(tmp_path):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    dense_dir, sparse_dir = str(tmp_path / "dense"), str(tmp_path / "sparse")
    BertForQuestionAnswering(tiny_bert_config()).save_pretrained(dense_dir)
    model = BertForQuestionAnswering(tiny_bert_config())
    hf_sparse.sparsify_(model, hf_sparse.SparsityConfig(sparsity=0.75, seed=0))
    hf_sparse.save_pretrained(model, sparse_dir)
    none = {"sparsity": None}
    s75 = {"sparsity": hf_sparse.SparsityConfig(sparsity=0.75, init="truncated_normal")}

    def load(path, **flags):
        return common.load_for_finetuning(BertForQuestionAnswering, common.ModelArguments(path, **flags), none)

    with pytest.raises(ValueError, match="sparse_finetune"):
        load(sparse_dir)  # a sparse checkpoint needs a choice
    with pytest.raises(ValueError, match="needs a sparsity config"):
        load(dense_dir, sparse_finetune=True)
    m, cfg = load(sparse_dir, sparse_finetune=True)
    assert cfg is None and all(torch.equal(m.weight_mask, model.get_submodule(n).weight_mask)
                               for n, m in hf_sparse.sparse_modules(m).items())
    m, cfg = load(sparse_dir, dense_finetune=True)
    assert cfg is None and not hf_sparse.sparse_modules(m)
    margs = common.ModelArguments(dense_dir, sparse_finetune=True)
    m, cfg = common.load_for_finetuning(BertForQuestionAnswering, margs, s75)
    # From a dense checkpoint the weights are pre-trained: keep them, magnitude masks.
    assert (cfg.sparsity, cfg.init, cfg.mask_init) == (0.75, "keep", "magnitude")
    m, cfg = load(dense_dir)
    assert cfg is None and not hf_sparse.sparse_modules(m)


def test_synthetic_squad_answers_are_spans():
    raw = synthetic_squad(3, seed=4)
    qas = [(p["context"], qa) for a in raw["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert len(qas) == 27 and len({qa["id"] for _, qa in qas}) == 27
    for context, qa in qas:
        ans = qa["answers"][0]
        assert context[ans["answer_start"] : ans["answer_start"] + len(ans["text"])] == ans["text"]


# --- end to end through accelerate launch --------------------------------------------------------------------------
def _launch(script: str, args, tmp_path: Path, output_dir: Path, num_processes: int = 1) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no"]
    # On a CPU-only machine `--multi_gpu` with the recipe's use_cpu=True starts gloo processes; `--cpu
    # --num_processes 2` would start only one.
    if num_processes > 1:
        cmd += ["--multi_gpu", "--num_processes", str(num_processes)]
    else:
        cmd += ["--cpu", "--num_processes", "1"]
    cmd += [str(REPO / "recipes" / script), *map(str, args), "--output_dir", str(output_dir), "--use_cpu", "true",
            "--report_to", "none", "--disable_tqdm", "true"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HOME": str(tmp_path / "hf_home")}  # no user accelerate config, an empty datasets cache
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    return json.loads((output_dir / "results.json").read_text())


def _masks(directory: Path) -> dict:
    return load_file(str(directory / "sparsity_masks.safetensors"))


def _squad_split(source: Path, tmp_path: Path, train_articles=(0, 2), eval_articles=(2, 3)):
    raw = json.loads(source.read_text(encoding="utf-8"))
    paths = []
    for name, (a, b) in (("train", train_articles), ("eval", eval_articles)):
        path = tmp_path / f"squad-{name}.json"  # split by article: no context is shared between train and eval
        path.write_text(json.dumps({"version": raw.get("version"), "data": raw["data"][a:b]}), encoding="utf-8")
        paths.append(path)
    return paths


def _check_bert(res: dict, ckpt: Path, world_size: int = 1):
    m = res["metrics"]
    assert m["world_size"] == world_size and math.isfinite(m["eval_mlm_loss"]) and 0 < m["eval_nsp_loss"] < 5
    assert res["training_stats"]["step"] == 4 and res["training_stats"]["train_flops"] > 0
    info = json.loads((ckpt / "sparsity_config.json").read_text())
    assert info["training_stats"]["dof"] >= info["training_stats"]["density"] > 0
    assert (ckpt / "vocab.txt").is_file() or (ckpt / "tokenizer.json").is_file()
    card = (ckpt / "README.md").read_text()
    assert "type: mlm_loss" in card and "type: nsp_loss" in card and "type: world_size" not in card


@pytest.mark.slow
def test_bert_then_squad_on_shared_data(shared_data, tmp_path):
    bert = tmp_path / "bert"
    res = _launch("pretrain_bert.py", ["--config", "recipes/configs/tiny-bert-dynsparse.yaml"], tmp_path, bert)
    _check_bert(res, bert)
    train, dev = _squad_split(shared_data / "squad" / "squad-v1.1-dev-articles-00-23.json", tmp_path)
    squad = tmp_path / "squad"
    res = _launch("finetune_squad.py", ["--config", "recipes/configs/tiny-squad.yaml", "--model_name_or_path", bert,
                                        "--sparse_finetune", "--train_files", train, "--validation_files", dev],
                  tmp_path, squad)
    m = res["metrics"]
    assert 0.0 <= m["eval_exact_match"] <= m["eval_f1"] <= 100.0 and m["eval_examples"] == 16
    before, after = _masks(bert), _masks(squad)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    reloaded = hf_sparse.from_pretrained(__import__("transformers").BertForQuestionAnswering, str(squad))
    assert len(hf_sparse.sparse_modules(reloaded)) == 12


@pytest.mark.slow
def test_gpt2_two_processes_then_wikitext_on_shared_data(shared_data, tmp_path):
    gpt = tmp_path / "gpt2"
    res = _launch("pretrain_gpt2.py", ["--config", "recipes/configs/tiny-gpt2-wide.yaml"], tmp_path, gpt,
                  num_processes=2)
    m = res["metrics"]
    assert m["world_size"] == 2 and res["training_stats"]["world_size"] == 2
    assert m["eval_perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    info = json.loads((gpt / "sparsity_config.json").read_text())
    assert info["ift_config"]["kind"] == "wide" and info["dynamic_config"]["algorithm"] == "rigl"
    assert res["training_stats"]["train_flops"] < res["training_stats"]["dense_train_flops"]
    wiki = tmp_path / "wiki"
    res = _launch("finetune_wikitext.py", ["--config", "recipes/configs/tiny-wikitext.yaml", "--model_name_or_path",
                                           gpt, "--dense_finetune"], tmp_path, wiki)
    assert math.isfinite(res["metrics"]["eval_perplexity"])
    assert not (wiki / "sparsity_config.json").exists() and (wiki / "model.safetensors").is_file()  # SPDF: dense


@pytest.mark.slow
def test_bert_then_squad_on_synthetic_data_with_trained_tokenizer(tmp_path):
    text = write_synthetic_text(str(tmp_path / "corpus.txt"), 60, seed=0)
    bert = tmp_path / "bert"
    res = _launch("pretrain_bert.py", ["--config", "recipes/configs/tiny-bert-dynsparse.yaml", "--tokenizer_name",
                                       "none", "--tokenizer_vocab_size", "300", "--train_files", text,
                                       "--validation_files", text, "--max_eval_samples", "16"], tmp_path, bert)
    _check_bert(res, bert)
    squad = tmp_path / "squad"
    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text(json.dumps(synthetic_squad(4, seed=1)))
    dev.write_text(json.dumps(synthetic_squad(1, seed=2)))
    res = _launch("finetune_squad.py", ["--config", "recipes/configs/tiny-squad.yaml", "--model_name_or_path", bert,
                                        "--dense_finetune", "--train_files", train, "--validation_files", dev],
                  tmp_path, squad)
    assert 0.0 <= res["metrics"]["eval_f1"] <= 100.0 and res["metrics"]["eval_examples"] == 9
    assert not (squad / "sparsity_config.json").exists()
    # predictions.json is the official evaluation script's input: scoring it gives the reported EM / F1.
    predictions = json.loads((squad / "predictions.json").read_text())
    nbest = json.loads((squad / "nbest_predictions.json").read_text())
    questions = {qa["id"]: qa for a in json.loads(dev.read_text())["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert predictions.keys() == questions.keys() == nbest.keys()
    assert all(nbest[i][0]["text"] == predictions[i] for i in predictions)
    from hf_sparse.data import compute_squad

    scores = compute_squad([{"id": i, "prediction_text": t} for i, t in predictions.items()],
                           [{"id": i, "answers": {"text": [a["text"] for a in qa["answers"]], "answer_start": []}}
                            for i, qa in questions.items()])
    assert scores["f1"] == pytest.approx(res["metrics"]["eval_f1"])


@pytest.mark.slow
def test_gpt2_then_wikitext_on_synthetic_data_dense_to_sparse(tmp_path):
    jsonl = write_synthetic_jsonl(str(tmp_path / "pile.jsonl"), 80, seed=0)
    gpt = tmp_path / "gpt2"
    res = _launch("pretrain_gpt2.py", ["--model_preset", "gpt2-test", "--train_files", jsonl,
                                       "--tokenizer_name", "none", "--tokenizer_vocab_size", "400",
                                       "--max_seq_length", "32", "--max_steps", "2", "--per_device_train_batch_size",
                                       "4", "--warmup_steps", "1", "--save_strategy", "no",
                                       "--validation_split_percentage", "10"], tmp_path, gpt)
    assert math.isfinite(res["metrics"]["eval_loss"]) and not (gpt / "sparsity_config.json").exists()  # dense
    lines = []
    for i, doc in enumerate(synthetic_documents(30, seed=3)):
        lines += [" ", f" = Synthetic article {i} = ", " ", " " + " ".join(doc) + " "]
    wikitext = _write(tmp_path / "wiki.txt", "\n".join(lines) + "\n")
    wiki = tmp_path / "wiki"
    res = _launch("finetune_wikitext.py", ["--config", "recipes/configs/tiny-wikitext.yaml", "--train_files",
                                           wikitext, "--max_seq_length", "32", "--model_name_or_path", gpt,
                                           "--sparse_finetune", "--sparsity.sparsity", "0.5"], tmp_path, wiki)
    assert math.isfinite(res["metrics"]["eval_perplexity"])
    info = json.loads((wiki / "sparsity_config.json").read_text())  # a dense checkpoint became sparse (magnitude)
    assert info["sparsity_config"]["sparsity"] == 0.5 and info["sparsity_config"]["mask_init"] == "magnitude"
    assert res["training_stats"]["density"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_quickstart_command(tmp_path, capsys):
    from hf_sparse.cli import main

    assert main(["quickstart", "--output_dir", str(tmp_path), "--pretrain_steps", "30", "--finetune_steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "masks fixed: True" in out
    from transformers import BertForPreTraining

    model = hf_sparse.from_pretrained(BertForPreTraining, str(tmp_path / "bert-tiny-dynsparse"))
    assert hf_sparse.sparsity_report(model).density == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("name", ["group_lasso", "l1"])
def test_make_trainer_wires_regularizers(tmp_path, name):
    import datasets
    from transformers import BertForMaskedLM, TrainingArguments, default_data_collator

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    ids = torch.randint(5, 128, (8, 16))
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True)
    reg = hf_sparse.RegularizerConfig(name=name, strength=1e-2)
    trainer = common.make_trainer(model, args, True, hf_sparse.SparsityConfig(sparsity=0.5, block_size=4,
                                  structure="block"), hf_sparse.DynamicSparsityConfig(algorithm="static"),
                                  mean_loss=True, regularizer=reg, train_dataset=ds,
                                  data_collator=default_data_collator)
    assert isinstance(trainer, hf_sparse.SparseTrainer) and not trainer.model_accepts_loss_kwargs
    assert any(isinstance(c, hf_sparse.RegularizerCallback) for c in trainer.callback_handler.callbacks)
    assert [r.config.name for r in trainer.regularizers] == [name]
    batch = {k: v for k, v in default_data_collator([ds[0], ds[1]]).items()}
    model.eval()  # no dropout: the two losses differ only by the penalty
    plain = model(**batch).loss
    with_penalty = trainer.compute_loss(model, batch)
    # Only the coupled L1 adds a loss term; Group Lasso acts on the weights after each optimizer step.
    assert (with_penalty > plain) if name == "l1" else torch.equal(with_penalty, plain)
    before = {n: m.weight.detach().clone() for n, m in hf_sparse.sparse_modules(model).items()}
    trainer.train()
    assert all(not torch.equal(before[n], m.weight) for n, m in hf_sparse.sparse_modules(model).items())


def test_plugins_register_user_algorithms_before_configs_are_built(tmp_path, monkeypatch):
    (tmp_path / "my_sparse_plugin.py").write_text(
        "import hf_sparse\n"
        "@hf_sparse.register_algorithm\n"
        "class PluginRegrowth(hf_sparse.algorithms.DynSparseAlgorithm):\n"
        "    name = 'plugin_regrowth'\n"
        "    defaults = {'update_interval': 7, 'prune_ratio': 0.2, 'end_fraction': 0.9}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="plugin_regrowth.*not registered"):
        common.parse_args(["--dynamic.algorithm", "plugin_regrowth", "--train_files", "a.txt"])
    _, _, _, s = common.parse_args(["--plugins", "my_sparse_plugin", "--dynamic.algorithm", "plugin_regrowth",
                                    "--train_files", "a.txt"])
    assert s["dynamic"].algorithm == "plugin_regrowth" and s["dynamic"].update_interval == 7


def test_pretrain_bert_builds_sparse_ift_bert(tmp_path, monkeypatch):
    """An ift: section pre-trains a Sparse-IFT BERT (it used to be ignored: a plain BERT with dense FLOPs)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    pretrain_bert = importlib.import_module("pretrain_bert")
    text = write_synthetic_text(str(tmp_path / "corpus.txt"), 40, seed=0)
    out = tmp_path / "parallel"
    metrics = pretrain_bert.main([
        "--model_preset", "bert-test", "--tokenizer_name", "none", "--tokenizer_vocab_size", "200", "--train_files",
        text, "--validation_files", text, "--max_seq_length", "32", "--max_steps", "2", "--warmup_steps", "1",
        "--per_device_train_batch_size", "4", "--max_eval_samples", "8", "--save_strategy", "no", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(out),
        "--ift.kind", "parallel", "--ift.sparsity", "0.5", "--dynamic.algorithm", "static"])
    assert math.isfinite(metrics["eval_mlm_loss"])
    info = json.loads((out / "sparsity_config.json").read_text())
    assert info["ift_config"]["kind"] == "parallel" and info["ift_config"]["sparsity"] == 0.5
    stats = info["training_stats"]
    assert 0 < stats["train_flops"] < stats["dense_train_flops"]  # two 50%-sparse branches per layer
    from transformers import BertForPreTraining

    model = hf_sparse.from_pretrained(BertForPreTraining, str(out))
    assert hf_sparse.get_sparse_ift_config(model).kind == "parallel"
    card = (out / "README.md").read_text()
    assert "## Training data" in card and "corpus.txt" in card.split("## Training data", 1)[1]
    with pytest.raises(ValueError, match="either an ift: section .* or a sparsity: section"):
        pretrain_bert.build_model(common.ModelArguments(model_preset="bert-test"),
                                  {"ift": hf_sparse.SparseIFTConfig(kind="wide", sparsity=0.5),
                                   "sparsity": hf_sparse.SparsityConfig(sparsity=0.5)}, 100, 0)


def test_data_card_info_names_hub_splits_and_local_files():
    hub = common.DataArguments(dataset_name="wikimedia/wikipedia,bookcorpus/bookcorpus",
                               dataset_config_name="20231101.en,")
    assert common.data_card_info(hub, held_out=True) == {
        "datasets": ["wikimedia/wikipedia", "bookcorpus/bookcorpus"],
        "training_data": ["wikimedia/wikipedia (20231101.en, train)", "bookcorpus/bookcorpus (train)"],
        "eval_data": ["1% of the training documents held out (wikimedia/wikipedia, bookcorpus/bookcorpus)"]}
    squad = common.DataArguments(dataset_name="rajpurkar/squad")
    assert common.data_card_info(squad, held_out=False)["eval_data"] == ["rajpurkar/squad (validation)"]
    local = common.DataArguments(train_files=["/data/train-v1.1.json"], validation_files=["/data/dev-v1.1.json"])
    assert common.data_card_info(local, held_out=False) == {"training_data": ["train-v1.1.json"],
                                                            "eval_data": ["dev-v1.1.json"]}


def test_make_trainer_names_the_causal_lm_loss_so_transformers_does_not_warn(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=8))
    assert model.loss_type is None  # transformers cannot map "GPT2LMHeadModel" to a loss and would warn
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    trainer = common.make_trainer(model, args, sparse_needed=False)
    assert trainer.model.loss_type == "ForCausalLM"
    ids = torch.randint(0, 32, (2, 8))
    model.eval()  # no dropout: both forward passes must see the same logits
    expected = torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1))
    assert torch.allclose(model(ids, labels=ids).loss, expected, atol=1e-6)  # the same causal-LM loss as before
