"""SQuAD v1.1 fine-tuning of a (sparse) BERT checkpoint, reporting exact match and F1.

Settings of the Sparse-IFT paper (Saxena et al. 2023, arXiv:2303.11525), App. C.2: max length 384, doc stride 128, n-best 20, max answer length
30. ``--sparse_finetune`` keeps the checkpoint's masks fixed (static sparse fine-tuning; from a dense checkpoint
it first makes magnitude masks from the ``sparsity:`` section); ``--dense_finetune`` densifies first (SPDF).
Either works from an hf_sparse checkpoint or a plain dense one. Fine-pruning: ``--dynamic.algorithm
movement|soft_movement|gmp`` with a ``sparsity:`` target prunes a dense checkpoint while fine-tuning (movement
pruning, Sanh et al. 2020, arXiv:2005.07683); ``--teacher_model_name_or_path`` adds knowledge distillation from a
dense teacher (``--distill_temperature``, ``--distill_alpha``).

Launch::

    accelerate launch recipes/finetune_squad.py --config recipes/configs/squad-bert.yaml \\
        --model_name_or_path out/bert-medium-dynsparse-s0.9 --sparse_finetune
    accelerate launch recipes/finetune_squad.py --config recipes/configs/squad-bert.yaml \
        --model_name_or_path bert-base-uncased --sparsity.sparsity 0.9 --dynamic.algorithm movement \
        --teacher_model_name_or_path out/bert-base-squad-dense

Data: ``rajpurkar/squad`` from the Hub, or ``--train_files train.json --validation_files dev.json`` in the official
JSON format. EM / F1 use ``evaluate``'s ``squad`` metric when it loads, else hf_sparse's offline copy of it (same
normalisation, same numbers). Results in ``output_dir/results.json``; the model is saved in ``output_dir`` with
``predictions.json`` ({question id: answer}, scored by the official ``evaluate-v1.1.py dev.json
predictions.json``) and ``nbest_predictions.json`` (the ``--n_best_size`` best spans with probabilities).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import datasets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    check_output_dir, check_sequence_length, check_sparsity_fits, data_card_info, load_for_finetuning, load_teacher,
    make_trainer, parse_args, resolve_tokenizer, run_recipe, save_final, setup_logging, static_config, training_stats,
)

import hf_sparse  # noqa: E402
from hf_sparse.data import (  # noqa: E402
    load_squad_json, load_squad_metric, nbest_predictions, postprocess_predictions, prepare_eval_features,
    prepare_train_features, to_metric_format,
)

logger = logging.getLogger("hf_sparse.recipes.finetune_squad")

DEFAULTS = dict(
    dataset_name="rajpurkar/squad", max_seq_length=384, doc_stride=128, n_best_size=20, max_answer_length=30,
    learning_rate=3e-5, num_train_epochs=2.0, per_device_train_batch_size=32, per_device_eval_batch_size=64,
    weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear", logging_steps=50, save_strategy="no",
    output_dir="out/squad", seed=0,
)


def _offline() -> bool:
    return any(os.environ.get(v, "0").lower() in ("1", "true") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_examples(data_args) -> datasets.DatasetDict:
    if data_args.train_files:
        if not data_args.validation_files:
            raise ValueError("Local SQuAD training files need --validation_files too (official JSON format).")
        for name in ("train_files", "validation_files"):
            if len(getattr(data_args, name)) > 1:
                raise ValueError(f"--{name}: give one SQuAD JSON file, got {getattr(data_args, name)}.")
        return datasets.DatasetDict(
            train=load_squad_json(data_args.train_files[0]),
            validation=load_squad_json(data_args.validation_files[0], require_answer_start=False))
    ds = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.cache_dir)
    return datasets.DatasetDict(train=ds["train"], validation=ds["validation"])


#: Sections this script refuses, with the reason (every other section is supported).
UNSUPPORTED = {"ift": "a Sparse-IFT checkpoint is rebuilt from its config.json; build one with pretrain_bert.py"}


def check_windows(data_args) -> None:
    """A window holds [CLS] question [SEP] context [SEP]: the stride must leave room for new context."""
    if data_args.doc_stride >= data_args.max_seq_length - 3:
        raise ValueError(f"doc_stride={data_args.doc_stride} must be less than max_seq_length="
                         f"{data_args.max_seq_length} minus the question (the paper setting is 384 / 128).")
    if data_args.n_best_size < 1 or data_args.max_answer_length < 1:
        raise ValueError(f"n_best_size={data_args.n_best_size} and max_answer_length={data_args.max_answer_length} "
                         "must be at least 1.")


def check_question_room(raw: datasets.DatasetDict, tokenizer, data_args) -> None:
    """Every question must leave more than ``doc_stride`` context tokens in a window (the tokenizer's own error
    for this names no question)."""
    for split, ds in raw.items():
        lengths = [len(ids) for ids in tokenizer([q.lstrip() for q in ds["question"]],
                                                 add_special_tokens=False)["input_ids"]]
        if not lengths:
            raise ValueError(f"The {split} data has no questions.")
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        room = data_args.max_seq_length - lengths[longest] - 3
        if room <= data_args.doc_stride:
            raise ValueError(f"{split} question id {ds[longest]['id']!r} has {lengths[longest]} tokens, leaving {room} "
                             f"context tokens per window of max_seq_length={data_args.max_seq_length}, not more than "
                             f"doc_stride={data_args.doc_stride}; raise --max_seq_length or lower --doc_stride.")


def write_predictions(output_dir: str, answers: dict, nbest: dict) -> None:
    """``predictions.json`` ({question id: answer}, the official evaluation script's input) and
    ``nbest_predictions.json`` ({question id: [{text, probability, start_logit, end_logit}]})."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    Path(output_dir, "predictions.json").write_text(json.dumps(answers, indent=2) + "\n", encoding="utf-8")
    Path(output_dir, "nbest_predictions.json").write_text(json.dumps(nbest, indent=2) + "\n", encoding="utf-8")


def main(argv=None) -> dict:
    from transformers import AutoModelForQuestionAnswering, default_data_collator

    model_args, data_args, training_args, sparse = parse_args(argv, DEFAULTS, script="finetune_squad",
                                                              unsupported=UNSUPPORTED)
    setup_logging(training_args)
    check_output_dir(training_args)
    check_windows(data_args)
    # Local SQuAD files are read and checked first (seconds); then the tokenizer and model, before a Hub download
    # and before any tokenisation.
    raw = load_examples(data_args) if data_args.train_files else None
    tokenizer = resolve_tokenizer(model_args, "bert", None, training_args.output_dir, training_args.main_process_first)
    model, sparsity_config = load_for_finetuning(AutoModelForQuestionAnswering, model_args, sparse)
    teacher, distillation_config = load_teacher(AutoModelForQuestionAnswering, model_args)
    check_sparsity_fits(model, sparsity_config)
    check_sequence_length(model, data_args.max_seq_length)
    raw = load_examples(data_args) if raw is None else raw
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(len(raw["train"]), data_args.max_train_samples)))
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(len(raw["validation"]), data_args.max_eval_samples)))
    check_question_room(raw, tokenizer, data_args)

    fn = dict(tokenizer=tokenizer, max_length=data_args.max_seq_length, doc_stride=data_args.doc_stride)
    with training_args.main_process_first(desc="SQuAD features"):
        train = raw["train"].map(prepare_train_features, batched=True, fn_kwargs=fn, desc="SQuAD train windows",
                                 remove_columns=raw["train"].column_names, num_proc=data_args.preprocessing_num_workers)
        features = raw["validation"].map(prepare_eval_features, batched=True, fn_kwargs=fn, desc="SQuAD eval windows",
                                         remove_columns=raw["validation"].column_names,
                                         num_proc=data_args.preprocessing_num_workers)
    logger.info("SQuAD: %d training windows, %d evaluation windows of %d examples.", len(train), len(features),
                len(raw["validation"]))

    trainer = make_trainer(model, training_args, bool(hf_sparse.sparse_modules(model)) or sparsity_config is not None,
                           sparsity_config, static_config(sparse["dynamic"]), mean_loss=True, train_dataset=train,
                           processing_class=tokenizer, data_collator=default_data_collator,
                           regularizer=sparse["regularizer"], teacher=teacher, distillation_config=distillation_config)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    predict_set = features.remove_columns(["example_id", "offset_mapping"])
    start_logits, end_logits = trainer.predict(predict_set).predictions[:2]
    post = dict(n_best=data_args.n_best_size, max_answer_length=data_args.max_answer_length)
    answers = postprocess_predictions(raw["validation"], features, start_logits, end_logits, **post)
    predictions, references = to_metric_format(answers, raw["validation"])
    scores = load_squad_metric(try_hub=not _offline()).compute(predictions=predictions, references=references)
    metrics = {"eval_exact_match": float(scores["exact_match"]), "eval_f1": float(scores["f1"]),
               "eval_examples": len(raw["validation"]), "world_size": int(training_args.world_size)}
    trainer.log_metrics("eval", metrics)
    stats = training_stats(trainer, data_args.max_seq_length)
    save_final(trainer, tokenizer, training_args.output_dir, sparse, stats, metrics,
               task=("question-answering", data_args.dataset_name if not data_args.train_files else "local SQuAD"),
               card_info={"base_model": model_args.model_name_or_path, **data_card_info(data_args, False)})
    if trainer.is_world_process_zero():
        nbest = nbest_predictions(raw["validation"], features, start_logits, end_logits, **post)
        write_predictions(training_args.output_dir, answers, nbest)
    return metrics


if __name__ == "__main__":
    run_recipe(main)
