"""SQuAD v1.1 pre- and post-processing for extractive question answering.

* `load_squad_json`: the official JSON format (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``)
  flattened to the Hub dataset's columns (``id``, ``title``, ``context``, ``question``, ``answers``).
* `prepare_train_features` / `prepare_eval_features`: long contexts become several windows (``max_length``
  384, ``doc_stride`` 128, as in the Sparse-IFT paper's fine-tuning); answer token positions are found with
  array operations over each batch, not per-token loops.
* `postprocess_predictions`: best span per example from the start / end logits of all its windows (top
  ``n_best`` starts x ends, at most ``max_answer_length`` tokens), scored for every window at once.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple, Union

import datasets
import numpy as np
import torch


def load_squad_json(path: Union[str, os.PathLike]) -> datasets.Dataset:
    """Reads a SQuAD v1.1 JSON file into a dataset with the Hub ``squad`` dataset's columns.

    Example:
        >>> ds = load_squad_json("../shared/data/squad/squad-v1.1-dev-articles-00-23.json")
    """
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise ValueError(f"{path} is not in SQuAD format: expected a top-level 'data' list.")
    rows: Dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in raw["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(para["context"])
                rows["question"].append(qa["question"].lstrip())
                rows["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [int(a["answer_start"]) for a in qa["answers"]]})
    return datasets.Dataset.from_dict(rows)


def _tokenize_windows(batch, tokenizer, max_length: int, doc_stride: int):
    enc = tokenizer(
        [q.lstrip() for q in batch["question"]], batch["context"], truncation="only_second",
        max_length=max_length, stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
        padding="max_length",
    )
    # dtype=float turns the None of special tokens into NaN in one C-level conversion per window.
    seq_ids = np.array([enc.sequence_ids(i) for i in range(len(enc["input_ids"]))], dtype=float)
    return enc, seq_ids, np.array(enc.pop("offset_mapping")), np.array(enc.pop("overflow_to_sample_mapping"))


def prepare_train_features(batch, tokenizer, max_length: int = 384, doc_stride: int = 128) -> dict:
    """``datasets.map`` function (batched) producing windows with ``start_positions`` / ``end_positions``.

    Windows that do not contain the whole answer point both positions at the ``[CLS]`` token (index 0).
    """
    enc, seq_ids, offsets, sample = _tokenize_windows(batch, tokenizer, max_length, doc_stride)
    first = [batch["answers"][s] for s in sample]
    start_char = np.array([a["answer_start"][0] for a in first])
    end_char = start_char + np.array([len(a["text"][0]) for a in first])
    ctx = seq_ids == 1
    # Last context token starting at or before the answer start; first context token ending at or after its end.
    starts_ok = ctx & (offsets[:, :, 0] <= start_char[:, None])
    ends_ok = ctx & (offsets[:, :, 1] >= end_char[:, None])
    positions = np.arange(ctx.shape[1])
    start_tok = np.where(starts_ok, positions, -1).max(axis=1)
    end_tok = np.where(ends_ok, positions, ctx.shape[1]).min(axis=1)
    ctx_first = np.where(ctx, positions, ctx.shape[1]).min(axis=1)
    ctx_last = np.where(ctx, positions, -1).max(axis=1)
    inside = (offsets[np.arange(len(sample)), ctx_first, 0] <= start_char) & (
        offsets[np.arange(len(sample)), ctx_last, 1] >= end_char)
    enc["start_positions"] = np.where(inside, start_tok, 0).tolist()
    enc["end_positions"] = np.where(inside, end_tok, 0).tolist()
    return enc


def prepare_eval_features(batch, tokenizer, max_length: int = 384, doc_stride: int = 128) -> dict:
    """``datasets.map`` function (batched) producing windows with ``example_id`` and context-only offsets.

    Offsets of non-context tokens are ``[-1, -1]`` so post-processing can never pick them.
    """
    enc, seq_ids, offsets, sample = _tokenize_windows(batch, tokenizer, max_length, doc_stride)
    offsets = np.where((seq_ids == 1)[:, :, None], offsets, -1)
    enc["offset_mapping"] = offsets.tolist()
    enc["example_id"] = [batch["id"][s] for s in sample]
    return enc


def postprocess_predictions(
    examples: datasets.Dataset,
    features: datasets.Dataset,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> Dict[str, str]:
    """Turns window logits into one answer string per example id.

    Args:
        examples: The examples (``id``, ``context``).
        features: Their windows from `prepare_eval_features` (``example_id``, ``offset_mapping``), in the same
            order as the logits.
        start_logits, end_logits: ``[n_windows, seq_len]`` arrays.
        n_best: Start and end candidates considered per window.
        max_answer_length: Longest answer, in tokens.

    Returns:
        ``{example_id: answer_text}``; an empty string when no valid span exists.
    """
    start = torch.as_tensor(np.asarray(start_logits), dtype=torch.float32)
    end = torch.as_tensor(np.asarray(end_logits), dtype=torch.float32)
    offsets = torch.as_tensor(np.asarray(features["offset_mapping"]), dtype=torch.long)  # [F, L, 2]
    k = min(n_best, start.shape[1])
    s_val, s_idx = start.topk(k, dim=1)
    e_val, e_idx = end.topk(k, dim=1)
    scores = s_val[:, :, None] + e_val[:, None, :]  # [F, k, k]
    length = e_idx[:, None, :] - s_idx[:, :, None] + 1
    in_ctx = offsets[:, :, 0] >= 0
    valid = (length >= 1) & (length <= max_answer_length)
    valid &= in_ctx.gather(1, s_idx)[:, :, None] & in_ctx.gather(1, e_idx)[:, None, :]
    scores = scores.masked_fill(~valid, float("-inf")).flatten(1)
    best_score, best = scores.max(dim=1)
    best_s = s_idx.gather(1, (best // k)[:, None]).squeeze(1)
    best_e = e_idx.gather(1, (best % k)[:, None]).squeeze(1)

    contexts = dict(zip(examples["id"], examples["context"]))
    chosen: Dict[str, Tuple[float, int, int]] = {}
    rows = torch.arange(len(best_s))
    char_start = offsets[rows, best_s, 0].tolist()
    char_end = offsets[rows, best_e, 1].tolist()
    for ex_id, score, cs, ce in zip(features["example_id"], best_score.tolist(), char_start, char_end):
        if score > chosen.get(ex_id, (float("-inf"),))[0]:  # one comparison per window, not per token
            chosen[ex_id] = (score, cs, ce)
    answers: Dict[str, str] = {ex_id: "" for ex_id in contexts}
    for ex_id, (score, cs, ce) in chosen.items():
        if score > float("-inf"):
            answers[ex_id] = contexts[ex_id][cs:ce]
    return answers


def to_metric_format(answers: Dict[str, str], examples: datasets.Dataset) -> Tuple[List[dict], List[dict]]:
    """Predictions and references in the ``evaluate`` SQuAD metric's format."""
    predictions = [{"id": i, "prediction_text": answers.get(i, "")} for i in examples["id"]]
    references = [{"id": i, "answers": a} for i, a in zip(examples["id"], examples["answers"])]
    return predictions, references
