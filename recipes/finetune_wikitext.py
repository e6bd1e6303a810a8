"""WikiText-103 / WikiText-2 fine-tuning of a (sparse) GPT-2 checkpoint, reporting perplexity.

Sparse-IFT paper (Saxena et al. 2023, arXiv:2303.11525), App. C.2: the pre-trained model is fine-tuned on WikiText with the causal-LM loss;
perplexity = exp(mean evaluation loss) over packed blocks of ``--max_seq_length`` tokens. ``--sparse_finetune``
keeps the masks fixed (from a dense checkpoint: magnitude masks from the ``sparsity:`` section first);
``--dense_finetune`` densifies first (SPDF). Either works from an hf_sparse checkpoint or a plain dense one, and a
Sparse-IFT checkpoint is rebuilt with its transformation. Fine-pruning: ``--dynamic.algorithm
movement|soft_movement|gmp`` with a ``sparsity:`` target prunes a dense checkpoint while fine-tuning (Sanh et al.
2020, arXiv:2005.07683); ``--teacher_model_name_or_path`` adds knowledge distillation from a dense teacher.

Launch::

    accelerate launch recipes/finetune_wikitext.py --config recipes/configs/wikitext-gpt2.yaml \\
        --model_name_or_path out/gpt2-small-sparse-wide-s0.5 --dense_finetune

Data: ``Salesforce/wikitext`` (``wikitext-103-raw-v1`` by default) from the Hub, or ``--train_files`` /
``--validation_files`` (raw WikiText text files, split into articles at their `` = Title = `` headings). Results in ``output_dir/results.json``.
"""

from __future__ import annotations

import logging
import os
import sys

import datasets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    check_output_dir, check_sequence_length, check_sparsity_fits, data_card_info, hold_out, load_for_finetuning,
    load_teacher, make_trainer, parse_args, resolve_tokenizer, run_recipe, save_final, setup_logging, static_config,
    train_and_evaluate_lm, training_stats,
)

import hf_sparse  # noqa: E402
from hf_sparse.data import load_documents, tokenize_and_pack  # noqa: E402
from hf_sparse.data.corpus import WIKITEXT_TITLE  # noqa: E402

logger = logging.getLogger("hf_sparse.recipes.finetune_wikitext")

DEFAULTS = dict(
    dataset_name="Salesforce/wikitext", dataset_config_name="wikitext-103-raw-v1", max_seq_length=1024,
    learning_rate=1e-4, adam_epsilon=1e-8, weight_decay=0.1, max_grad_norm=1.0, warmup_steps=0.05,
    lr_scheduler_type="linear", num_train_epochs=1.0, per_device_train_batch_size=8, per_device_eval_batch_size=8,
    logging_steps=50, save_strategy="no", output_dir="out/wikitext", seed=0,
)


def _join_articles(batch, column: str) -> dict:
    # WikiText is one line per row; an article starts at a top-level " = Title = " heading. Joining lines into
    # articles puts EOS between articles rather than between lines. (Articles split across map batches of 10,000
    # lines become two documents: harmless for packing.)
    articles, current = [], []
    for line in batch[column]:
        if WIKITEXT_TITLE.match(line.rstrip("\n")) and current:
            articles.append("".join(current))
            current = []
        current.append(line if line.endswith("\n") else line + "\n")
    if current:
        articles.append("".join(current))
    return {"text": [a for a in articles if a.strip()]}


def wikitext_articles(lines: datasets.Dataset, column: str = "text", num_proc=None) -> datasets.Dataset:
    """WikiText lines (one per row, as the Hub dataset and the raw files hold them) grouped into articles."""
    return lines.map(_join_articles, batched=True, batch_size=10000, remove_columns=lines.column_names,
                     fn_kwargs={"column": column}, num_proc=num_proc, desc="Grouping WikiText articles")


def load_raw(data_args) -> datasets.DatasetDict:
    """WikiText articles for train and validation (a ``text`` column).

    Local text files are split at their `` = Title = `` headings (`hf_sparse.data.load_documents`; other text
    files at blank lines, see ``--wikitext_articles``); JSON lines give one document per line.
    """
    workers = data_args.preprocessing_num_workers
    if data_args.train_files:
        load = dict(text_column=data_args.text_column, cache_dir=data_args.cache_dir,
                    wikitext_articles=data_args.wikitext_articles)
        train = load_documents(data_args.train_files, **load)
        if data_args.validation_files:
            valid = load_documents(data_args.validation_files, **load)
        else:
            train, valid = hold_out(train, data_args, shuffle=False)
        return datasets.DatasetDict(train=train, validation=valid)
    ds = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.cache_dir)
    return datasets.DatasetDict({k: wikitext_articles(ds[k], data_args.text_column, workers)
                                 for k in ("train", "validation")})


#: Sections this script refuses, with the reason (every other section is supported).
UNSUPPORTED = {"ift": "a Sparse-IFT checkpoint is rebuilt from its config.json; build one with pretrain_gpt2.py"}


def main(argv=None) -> dict:
    from transformers import AutoModelForCausalLM, default_data_collator

    model_args, data_args, training_args, sparse = parse_args(argv, DEFAULTS, script="finetune_wikitext",
                                                              unsupported=UNSUPPORTED)
    setup_logging(training_args)
    check_output_dir(training_args)
    # The model and tokenizer load before any data (a few seconds), so their errors come first.
    tokenizer = resolve_tokenizer(model_args, "gpt2", None, training_args.output_dir, training_args.main_process_first)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer of {model_args.tokenizer_name or model_args.model_name_or_path!r} has no EOS "
                         "token to separate articles; use a GPT-2 BPE tokenizer (--tokenizer_name).")
    model, sparsity_config = load_for_finetuning(AutoModelForCausalLM, model_args, sparse)
    teacher, distillation_config = load_teacher(AutoModelForCausalLM, model_args)
    check_sparsity_fits(model, sparsity_config)
    seq = data_args.max_seq_length
    check_sequence_length(model, seq)
    raw = load_raw(data_args)
    with training_args.main_process_first(desc="tokenize and pack"):
        train = tokenize_and_pack(raw["train"], tokenizer, seq,
                                  num_proc=data_args.preprocessing_num_workers)
        valid = tokenize_and_pack(raw["validation"], tokenizer, seq,
                                  num_proc=data_args.preprocessing_num_workers)
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples is not None:
        valid = valid.select(range(min(len(valid), data_args.max_eval_samples)))
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"The {'training' if len(train) == 0 else 'validation'} text is shorter than one block of "
                         f"max_seq_length={seq} tokens; give more text or lower --max_seq_length.")
    logger.info("WikiText: %d training and %d validation blocks of %d tokens.", len(train), len(valid), seq)

    trainer = make_trainer(model, training_args, bool(hf_sparse.sparse_modules(model)) or sparsity_config is not None,
                           sparsity_config, static_config(sparse["dynamic"]), train_dataset=train, eval_dataset=valid,
                           processing_class=tokenizer, data_collator=default_data_collator,
                           regularizer=sparse["regularizer"], teacher=teacher, distillation_config=distillation_config)
    metrics = train_and_evaluate_lm(trainer, training_args)
    trainer.log_metrics("eval", metrics)
    stats = training_stats(trainer, seq)
    save_final(trainer, tokenizer, training_args.output_dir, sparse, stats, metrics,
               task=("text-generation", data_args.dataset_name if not data_args.train_files else "local WikiText"),
               card_info={"base_model": model_args.model_name_or_path, **data_card_info(data_args, False)})
    return metrics


if __name__ == "__main__":
    run_recipe(main)
