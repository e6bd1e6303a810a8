"""BERT phase-1 pre-training (MLM + NSP, sequence length 128), dense, static sparse or dynamic sparse.

Follows the DynSparse BERT paper (Dietrich et al. 2021, arXiv:2108.06277), App. A: Adam (0.9, 0.999), eps 1e-6, weight decay 0.01, gradient
clipping 1.0, 10,000 linear warm-up steps then linear decay, LR 2e-4 (Medium) / 1e-4 (Base), 15% whole-word
masking with at most 20 predictions, 50% random next segments. The MLM head runs only at masked positions
(`hf_sparse.BertForPreTrainingMasked`; ``--masked_mlm_head false`` for the transformers default).

Launch (any option of the YAML can be overridden on the command line)::

    accelerate launch recipes/pretrain_bert.py --config recipes/configs/bert-medium-dynsparse-s0.9.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain_bert.py \\
        --config recipes/configs/bert-medium-dynsparse-s0.9.yaml --sparsity.sparsity 0.99 --dynamic.prune_ratio 0.75

An ``ift:`` section pre-trains a Sparse-IFT BERT (wide / parallel / factorized / doped) of the preset instead.

Data: Wikipedia + BookCorpus from the Hub by default (``--dataset_name``), or ``--train_files`` (text with one
sentence per line and blank lines between documents, WikiText files split at their article titles, or JSON lines
with ``text`` / ``--text_column``). Reports validation MLM and
NSP loss in ``output_dir/results.json`` and saves a sparse checkpoint with its model card in ``output_dir``.
"""

from __future__ import annotations

import logging
import math
import os
import sys

import datasets
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    BERT_PRESETS, check_output_dir, check_sequence_length, check_sparsity_fits, data_card_info, fit_vocabulary_,
    hold_out, load_named_tokenizer, make_trainer, parse_args, preset_config, resolve_tokenizer, run_recipe,
    save_final, setup_logging, training_stats,
)

import hf_sparse  # noqa: E402
from hf_sparse.data import (  # noqa: E402
    WholeWordMaskCollator, create_nsp_examples, load_documents, looks_like_wikitext, split_sentences,
    tokenize_sentences,
)

logger = logging.getLogger("hf_sparse.recipes.pretrain_bert")

#: Paper defaults (Dietrich et al. 2021, arXiv:2108.06277, App. A; Medium). YAML and the command line override them.
DEFAULTS = dict(
    model_preset="bert-medium", dataset_name="wikimedia/wikipedia,bookcorpus/bookcorpus",
    dataset_config_name="20231101.en,", tokenizer_name="bert-base-uncased", max_seq_length=128,
    learning_rate=2e-4, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-6, weight_decay=0.01,
    max_grad_norm=1.0, warmup_steps=10000, lr_scheduler_type="linear", per_device_train_batch_size=256,
    max_steps=100000, logging_steps=100, save_steps=10000, output_dir="out/bert", seed=0,
)


#: Consecutive BookCorpus sentences per pseudo-document.
BOOK_CHUNK = 256


def _group_sentences(batch) -> dict:
    return {"text": [" ".join(t.strip() for t in batch["text"] if t and t.strip())]}


def load_raw_documents(data_args) -> datasets.DatasetDict:
    """Documents (``text`` column) for train and validation, from local files or the Hub."""
    if data_args.train_files:
        load = dict(text_column=data_args.text_column, cache_dir=data_args.cache_dir,
                    wikitext_articles=data_args.wikitext_articles)
        train = load_documents(data_args.train_files, **load)
        valid = load_documents(data_args.validation_files, **load) if data_args.validation_files else None
    else:
        names = [n for n in data_args.dataset_name.split(",") if n]
        configs = (data_args.dataset_config_name or "").split(",") + [""] * len(names)
        parts = []
        for n, c in zip(names, configs):
            part = datasets.load_dataset(n, c or None, split="train", cache_dir=data_args.cache_dir)
            part = part.select_columns([data_args.text_column])
            if data_args.text_column != "text":
                part = part.rename_column(data_args.text_column, "text")
            if "bookcorpus" in n.lower():
                # BookCorpus rows are single sentences without book boundaries: consecutive sentences form
                # pseudo-documents, so next-sentence pairs come from running text.
                part = part.map(_group_sentences, batched=True, batch_size=BOOK_CHUNK, desc="Grouping sentences",
                                num_proc=data_args.preprocessing_num_workers)
            parts.append(part)
        train = datasets.concatenate_datasets(parts)
        valid = None
    if valid is None:
        train, valid = hold_out(train, data_args, shuffle=True)
    return datasets.DatasetDict(train=train, validation=valid)


def build_examples(docs: datasets.Dataset, tokenizer, data_args, seed: int, one_per_line: bool) -> datasets.Dataset:
    sentences = split_sentences(docs, one_sentence_per_line=one_per_line, num_proc=data_args.preprocessing_num_workers)
    ids = tokenize_sentences(sentences, tokenizer, num_proc=data_args.preprocessing_num_workers)
    return create_nsp_examples(ids, tokenizer, max_seq_length=data_args.max_seq_length,
                               short_seq_prob=data_args.short_seq_prob, nsp_probability=data_args.nsp_probability,
                               seed=seed, num_proc=data_args.preprocessing_num_workers)


@torch.no_grad()
def evaluate_mlm_nsp(trainer, eval_dataset, tokenizer, data_args) -> dict:
    """Validation MLM and NSP loss (per masked token / per example), with a fixed masking seed; all processes."""
    acc, args = trainer.accelerator, trainer.args
    model = acc.unwrap_model(trainer.model).eval()
    collator = WholeWordMaskCollator(tokenizer, data_args.mlm_probability, data_args.max_predictions,
                                     generator=torch.Generator().manual_seed(args.seed + 1))
    shard = eval_dataset.shard(num_shards=acc.num_processes, index=acc.process_index, contiguous=True)
    loader = torch.utils.data.DataLoader(shard, batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    sums = torch.zeros(4, dtype=torch.float64, device=acc.device)  # mlm sum, mlm count, nsp sum, nsp count
    for batch in loader:
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        labels, nsp = batch.pop("labels"), batch.pop("next_sentence_label")
        out = model(**batch, labels=labels)  # the masked head then projects only the labelled positions
        logits = out.prediction_logits[labels != -100] if out.prediction_logits.dim() == 3 else out.prediction_logits
        sums[0] += F.cross_entropy(logits.float(), labels[labels != -100], reduction="sum").double()
        sums[1] += int((labels != -100).sum())
        sums[2] += F.cross_entropy(out.seq_relationship_logits.float(), nsp, reduction="sum").double()
        sums[3] += nsp.numel()
    sums = acc.reduce(sums, reduction="sum")
    mlm, nsp_loss = float(sums[0] / sums[1].clamp_min(1)), float(sums[2] / sums[3].clamp_min(1))
    return {"eval_mlm_loss": mlm, "eval_nsp_loss": nsp_loss, "eval_mlm_perplexity": math.exp(min(mlm, 50.0)),
            "eval_examples": int(sums[3])}


def one_sentence_per_line(data_args) -> bool:
    """BERT's text format has one sentence per line; JSON lines, WikiText and Hub articles are split at sentence
    ends instead."""
    files = data_args.train_files
    if not files or any(str(f).endswith((".json", ".jsonl")) for f in files):
        return False
    if data_args.wikitext_articles == "auto":
        return not any(looks_like_wikitext(f) for f in files)
    return data_args.wikitext_articles == "false"


def build_model(model_args, sparse, vocab_size: int, pad_token_id: int):
    """The preset (or checkpoint); an ``ift:`` section makes it a Sparse-IFT BERT (Saxena et al. 2023,
    arXiv:2303.11525, pre-train BERT with Sparse Wide / Parallel), exactly as `pretrain_gpt2.py` does for GPT."""
    from transformers import BertForPreTraining

    cls = hf_sparse.BertForPreTrainingMasked if model_args.masked_mlm_head else BertForPreTraining
    if model_args.model_name_or_path:
        if sparse["ift"] is not None:
            raise ValueError("An ift: section builds a new model from a preset; drop --model_name_or_path "
                             f"({model_args.model_name_or_path!r}) or the ift section.")
        model = cls.from_pretrained(model_args.model_name_or_path)
    else:
        if model_args.model_preset not in BERT_PRESETS:
            raise ValueError(f"--model_preset {model_args.model_preset!r} is not a BERT preset; pretrain_bert.py "
                             f"takes {', '.join(BERT_PRESETS)} (GPT presets: pretrain_gpt2.py).")
        config = preset_config(model_args, vocab_size, max_position_embeddings=512, pad_token_id=pad_token_id)
        if sparse["ift"] is not None:
            if sparse["sparsity"] is not None:
                raise ValueError("Give either an ift: section (Sparse-IFT sparsifies the model itself) or a "
                                 "sparsity: section, not both.")
            model = hf_sparse.apply_sparse_ift(cls, config, sparse["ift"])
        else:
            model = cls(config)
    model.config.architectures = ["BertForPreTraining"]  # the masked head is a training detail, not a format
    return model


def main(argv=None) -> dict:
    from transformers import set_seed

    model_args, data_args, training_args, sparse = parse_args(argv, DEFAULTS, script="pretrain_bert")
    setup_logging(training_args)
    check_output_dir(training_args)
    # Everything that needs no data is checked first: tokenizer, model (shapes, structure fit, positions).
    tokenizer = load_named_tokenizer(model_args, "bert")
    set_seed(training_args.seed)
    model = build_model(model_args, sparse, len(tokenizer) if tokenizer else model_args.tokenizer_vocab_size,
                        tokenizer.pad_token_id if tokenizer else 0)
    check_sparsity_fits(model, sparse["sparsity"])
    check_sequence_length(model, data_args.max_seq_length)

    raw = load_raw_documents(data_args)
    if tokenizer is None:
        tokenizer = resolve_tokenizer(model_args, "bert", lambda: (b for b in _texts(raw["train"])),
                                      training_args.output_dir, training_args.main_process_first)
        fit_vocabulary_(model, tokenizer)
    one_per_line = one_sentence_per_line(data_args)
    with training_args.main_process_first(desc="BERT phase-1 examples"):
        train = build_examples(raw["train"], tokenizer, data_args, training_args.seed, one_per_line)
        valid = build_examples(raw["validation"], tokenizer, data_args, training_args.seed + 1, one_per_line)
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples is not None:
        valid = valid.select(range(min(len(valid), data_args.max_eval_samples)))
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"No {'training' if len(train) == 0 else 'validation'} sentence pairs could be built: the "
                         "documents are too short (at least two sentences each); give more text.")
    logger.info("BERT phase 1: %d training and %d validation sentence pairs.", len(train), len(valid))

    sparse_needed = bool(hf_sparse.sparse_modules(model)) or sparse["sparsity"] is not None
    trainer = make_trainer(
        model, training_args, sparse_needed, sparse["sparsity"], sparse["dynamic"], mean_loss=True,
        regularizer=sparse["regularizer"],
        train_dataset=train, processing_class=tokenizer,
        data_collator=WholeWordMaskCollator(tokenizer, data_args.mlm_probability, data_args.max_predictions),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = evaluate_mlm_nsp(trainer, valid, tokenizer, data_args)
    metrics["world_size"] = int(training_args.world_size)
    trainer.log_metrics("eval", metrics)
    stats = training_stats(trainer, data_args.max_seq_length)
    save_final(trainer, tokenizer, training_args.output_dir, sparse, stats, metrics,
               task=("fill-mask", data_args.dataset_name if not data_args.train_files else "local text"),
               card_info=data_card_info(data_args, held_out=True))
    return metrics


def _texts(ds):
    for start in range(0, len(ds), 1000):
        yield [t for t in ds[start : start + 1000]["text"] if t and t.strip()]


if __name__ == "__main__":
    run_recipe(main)
