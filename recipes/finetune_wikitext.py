"""WikiText-103 / WikiText-2 fine-tuning of a (sparse) GPT-2 checkpoint, reporting perplexity.

Sparse-IFT paper (Saxena et al. 2023, arXiv:2303.11525), App. C.2: the pre-trained model is fine-tuned on WikiText with the causal-LM loss;
perplexity = exp(mean evaluation loss) over packed blocks of ``--max_seq_length`` tokens. ``--sparse_finetune``
keeps the masks fixed (from a dense checkpoint: magnitude masks from the ``sparsity:`` section first);
``--dense_finetune`` densifies first (SPDF). Either works from an hf_sparse checkpoint or a plain dense one, and a
Sparse-IFT checkpoint is rebuilt with its transformation.

Launch::

    accelerate launch recipes/finetune_wikitext.py --config recipes/configs/wikitext-gpt2.yaml \\
        --model_name_or_path out/gpt2-small-sparse-wide-s0.5 --dense_finetune

Data: ``Salesforce/wikitext`` (``wikitext-103-raw-v1`` by default) from the Hub, or ``--train_files`` /
``--validation_files`` (raw WikiText text files). Results in ``output_dir/results.json``.
"""

from __future__ import annotations

import logging
import os
import re
import sys

import datasets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    iter_texts, load_for_finetuning, make_trainer, parse_args, resolve_tokenizer, save_final, setup_logging,
    static_config,
    train_and_evaluate_lm, training_stats,
)

import hf_sparse  # noqa: E402
from hf_sparse.data import load_documents, tokenize_and_pack  # noqa: E402

logger = logging.getLogger("hf_sparse.recipes.finetune_wikitext")

DEFAULTS = dict(
    dataset_name="Salesforce/wikitext", dataset_config_name="wikitext-103-raw-v1", max_seq_length=1024,
    learning_rate=1e-4, adam_epsilon=1e-8, weight_decay=0.1, max_grad_norm=1.0, warmup_steps=0.05,
    lr_scheduler_type="linear", num_train_epochs=1.0, per_device_train_batch_size=8, per_device_eval_batch_size=8,
    logging_steps=50, save_strategy="no", output_dir="out/wikitext", seed=0,
)


_HEADING = re.compile(r"^ = [^=].* = $")


def _join_articles(batch, column: str) -> dict:
    # WikiText is one line per row; an article starts at a top-level " = Title = " heading. Joining lines into
    # articles puts EOS between articles rather than between lines. (Articles split across map batches of 10,000
    # lines become two documents: harmless for packing.)
    articles, current = [], []
    for line in batch[column]:
        if _HEADING.match(line.rstrip("\n")) and current:
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


def _load_lines(files, cache_dir) -> datasets.Dataset:
    if any(str(f).endswith((".json", ".jsonl")) for f in files):
        return load_documents(files, "text", cache_dir)
    missing = [str(f) for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"WikiText files not found: {missing}.")
    return datasets.load_dataset("text", data_files=[str(f) for f in files], split="train", keep_linebreaks=True,
                                 cache_dir=cache_dir)


def load_raw(data_args) -> datasets.DatasetDict:
    """WikiText articles for train and validation (a ``text`` column)."""
    workers = data_args.preprocessing_num_workers
    if data_args.train_files:
        train = wikitext_articles(_load_lines(data_args.train_files, data_args.cache_dir), num_proc=workers)
        if data_args.validation_files:
            valid = wikitext_articles(_load_lines(data_args.validation_files, data_args.cache_dir), num_proc=workers)
        else:
            held = max(1, int(len(train) * data_args.validation_split_percentage / 100))
            split = train.train_test_split(test_size=held, seed=0, shuffle=False)
            train, valid = split["train"], split["test"]
        return datasets.DatasetDict(train=train, validation=valid)
    ds = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.cache_dir)
    return datasets.DatasetDict({k: wikitext_articles(ds[k], data_args.text_column, workers)
                                 for k in ("train", "validation")})


def main(argv=None) -> dict:
    from transformers import AutoModelForCausalLM, default_data_collator

    model_args, data_args, training_args, sparse = parse_args(argv, DEFAULTS)
    setup_logging(training_args)
    raw = load_raw(data_args)
    tokenizer = resolve_tokenizer(model_args, "gpt2", lambda: iter_texts(raw["train"]),
                                  training_args.output_dir, training_args.main_process_first)
    model, sparsity_config = load_for_finetuning(AutoModelForCausalLM, model_args, sparse)
    seq = data_args.max_seq_length
    if seq > model.config.n_positions:
        raise ValueError(f"max_seq_length={seq} exceeds the model's n_positions={model.config.n_positions}.")
    with training_args.main_process_first(desc="tokenize and pack"):
        train = tokenize_and_pack(raw["train"], tokenizer, seq,
                                  num_proc=data_args.preprocessing_num_workers)
        valid = tokenize_and_pack(raw["validation"], tokenizer, seq,
                                  num_proc=data_args.preprocessing_num_workers)
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples is not None:
        valid = valid.select(range(min(len(valid), data_args.max_eval_samples)))
    logger.info("WikiText: %d training and %d validation blocks of %d tokens.", len(train), len(valid), seq)

    trainer = make_trainer(model, training_args, bool(hf_sparse.sparse_modules(model)) or sparsity_config is not None,
                           sparsity_config, static_config(sparse["dynamic"]), train_dataset=train, eval_dataset=valid,
                           processing_class=tokenizer, data_collator=default_data_collator,
                           regularizer=sparse["regularizer"])
    metrics = train_and_evaluate_lm(trainer, training_args)
    trainer.log_metrics("eval", metrics)
    stats = training_stats(trainer, seq)
    save_final(trainer, tokenizer, training_args.output_dir, sparse, stats, metrics,
               task=("text-generation", data_args.dataset_name if not data_args.train_files else "local WikiText"),
               card_info={"base_model": model_args.model_name_or_path})
    return metrics


if __name__ == "__main__":
    main()
