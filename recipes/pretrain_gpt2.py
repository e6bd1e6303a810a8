"""GPT-2 / GPT-3 Small / Cerebras-GPT pre-training on the Pile, dense, sparse or Sparse-IFT.

Defaults follow the Sparse-IFT paper (Saxena et al. 2023, arXiv:2303.11525), App. C.2.2, and Cerebras-GPT (Singh et al. 2024), Sec. 5: AdamW (0.9,
0.999), eps 1e-8, weight decay 0.1, gradient clipping 1.0, linear warm-up then cosine decay to 10% of the peak
LR 6e-4, context 2048 (``--max_seq_length``). Documents are tokenized with the GPT-2 BPE and packed into
fixed-length blocks with ``<|endoftext|>`` between documents. A ``sparsity:`` section trains the preset sparse
(static or with a ``dynamic:`` algorithm); an ``ift:`` section builds a Sparse-IFT model (wide, parallel,
factorized, doped) of the preset.

Launch::

    accelerate launch recipes/pretrain_gpt2.py --config recipes/configs/gpt2-small-sparse-wide-s0.5.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain_gpt2.py \\
        --config recipes/configs/gpt2-small-sparse-wide-s0.5.yaml --ift.sparsity 0.75

Reports validation loss and perplexity, logs training FLOPs, and saves a sparse checkpoint with its card.
"""

from __future__ import annotations

import logging
import os
import sys

import datasets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    GPT2_PRESETS, check_output_dir, check_sequence_length, check_sparsity_fits, data_card_info, fit_vocabulary_,
    hold_out, iter_texts, load_named_tokenizer, make_trainer, parse_args, preset_config, resolve_tokenizer,
    run_recipe, save_final, setup_logging, train_and_evaluate_lm, training_stats,
)

import hf_sparse  # noqa: E402
from hf_sparse.data import load_documents, tokenize_and_pack  # noqa: E402

logger = logging.getLogger("hf_sparse.recipes.pretrain_gpt2")

DEFAULTS = dict(
    model_preset="gpt3-small", dataset_name="monology/pile-uncopyrighted", tokenizer_name="gpt2",
    tokenizer_vocab_size=50257, max_seq_length=2048, learning_rate=6e-4, adam_beta1=0.9, adam_beta2=0.999,
    adam_epsilon=1e-8, weight_decay=0.1, max_grad_norm=1.0, warmup_steps=1000,
    lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
    per_device_train_batch_size=8, max_steps=50000, logging_steps=100, save_steps=5000, output_dir="out/gpt2", seed=0,
)


def load_raw_documents(data_args) -> datasets.DatasetDict:
    """Documents for train and validation from local JSON lines / text, or the Hub."""
    if data_args.train_files:
        load = dict(text_column=data_args.text_column, cache_dir=data_args.cache_dir,
                    wikitext_articles=data_args.wikitext_articles)
        train = load_documents(data_args.train_files, **load)
        valid = load_documents(data_args.validation_files, **load) if data_args.validation_files else None
    else:
        ds = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.cache_dir)
        train = ds["train"].select_columns([data_args.text_column])
        valid = ds["validation"].select_columns([data_args.text_column]) if "validation" in ds else None
        if data_args.text_column != "text":
            train = train.rename_column(data_args.text_column, "text")
            valid = valid.rename_column(data_args.text_column, "text") if valid is not None else None
    if valid is None:
        train, valid = hold_out(train, data_args, shuffle=True)
    return datasets.DatasetDict(train=train, validation=valid)


def build_model(model_args, sparse, vocab_size: int, eos_token_id, seq_len: int):
    """The preset (or checkpoint), made sparse by a Sparse-IFT transformation when ``ift`` is given."""
    from transformers import GPT2LMHeadModel

    if model_args.model_name_or_path:
        if sparse["ift"] is not None:
            raise ValueError("An ift: section builds a new model from a preset; drop --model_name_or_path "
                             f"({model_args.model_name_or_path!r}) or the ift section.")
        return GPT2LMHeadModel.from_pretrained(model_args.model_name_or_path)
    if model_args.model_preset not in GPT2_PRESETS:
        raise ValueError(f"--model_preset {model_args.model_preset!r} is not a GPT preset; pretrain_gpt2.py takes "
                         f"{', '.join(GPT2_PRESETS)} (BERT presets: pretrain_bert.py).")
    config = preset_config(model_args, vocab_size, bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    if config.n_positions < seq_len:
        raise ValueError(f"max_seq_length={seq_len} exceeds the preset's n_positions={config.n_positions}; lower "
                         "--max_seq_length or set --config_overrides n_positions=N.")
    if sparse["ift"] is not None:
        if sparse["sparsity"] is not None:
            raise ValueError("Give either an ift: section (Sparse-IFT sparsifies the model itself) or a sparsity: "
                             "section, not both.")
        return hf_sparse.apply_sparse_ift(GPT2LMHeadModel, config, sparse["ift"])
    return GPT2LMHeadModel(config)


def main(argv=None) -> dict:
    from transformers import default_data_collator, set_seed

    model_args, data_args, training_args, sparse = parse_args(argv, DEFAULTS, script="pretrain_gpt2")
    setup_logging(training_args)
    check_output_dir(training_args)
    seq = data_args.max_seq_length
    # Everything that needs no data is checked first: tokenizer, model (shapes, structure fit, positions).
    tokenizer = load_named_tokenizer(model_args, "gpt2")
    if tokenizer is not None and tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer {model_args.tokenizer_name or model_args.model_name_or_path!r} has no EOS "
                         "token to separate documents; use a GPT-2 BPE tokenizer.")
    set_seed(training_args.seed)
    model = build_model(model_args, sparse, len(tokenizer) if tokenizer else model_args.tokenizer_vocab_size,
                        tokenizer.eos_token_id if tokenizer else 0, seq)
    check_sparsity_fits(model, sparse["sparsity"])
    check_sequence_length(model, seq)

    raw = load_raw_documents(data_args)
    if tokenizer is None:
        tokenizer = resolve_tokenizer(model_args, "gpt2", lambda: iter_texts(raw["train"]), training_args.output_dir,
                                      training_args.main_process_first)
        fit_vocabulary_(model, tokenizer)
    with training_args.main_process_first(desc="tokenize and pack"):
        train = tokenize_and_pack(raw["train"], tokenizer, seq, num_proc=data_args.preprocessing_num_workers)
        valid = tokenize_and_pack(raw["validation"], tokenizer, seq, num_proc=data_args.preprocessing_num_workers)
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples is not None:
        valid = valid.select(range(min(len(valid), data_args.max_eval_samples)))
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"The {'training' if len(train) == 0 else 'validation'} text is shorter than one block of "
                         f"max_seq_length={seq} tokens; give more text or lower --max_seq_length.")
    logger.info("GPT-2 pre-training: %d training and %d validation blocks of %d tokens.", len(train), len(valid), seq)

    sparse_needed = bool(hf_sparse.sparse_modules(model)) or sparse["sparsity"] is not None
    trainer = make_trainer(model, training_args, sparse_needed,
                           sparse["sparsity"], sparse["dynamic"], train_dataset=train, eval_dataset=valid,
                           processing_class=tokenizer, data_collator=default_data_collator,
                           regularizer=sparse["regularizer"])
    metrics = train_and_evaluate_lm(trainer, training_args)
    stats = training_stats(trainer, seq)
    metrics["train_flops"] = stats["train_flops"]
    trainer.log_metrics("eval", metrics)
    save_final(trainer, tokenizer, training_args.output_dir, sparse, stats, metrics,
               task=("text-generation", data_args.dataset_name if not data_args.train_files else "local text"),
               card_info=data_card_info(data_args, held_out=True))
    return metrics


if __name__ == "__main__":
    run_recipe(main)
