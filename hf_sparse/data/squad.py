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


def _check_qa(path: str, where: str, qa, require_answer_start: bool, context: str) -> None:
    qid = qa.get("id") if isinstance(qa, dict) else None
    at = f"{path}: question id {qid!r} ({where})" if qid is not None else f"{path}: {where}"
    if not isinstance(qa, dict):
        raise ValueError(f"{at}: a question must be an object, got {type(qa).__name__}.")
    if not isinstance(qid, (str, int)):
        raise ValueError(f"{at}: the question has no 'id'; every question needs a unique id.")
    if not isinstance(qa.get("question"), str) or not qa["question"].strip():
        raise ValueError(f"{at}: 'question' must be a non-empty string, got {qa.get('question')!r}.")
    answers = qa.get("answers")
    if not isinstance(answers, list) or not answers:
        raise ValueError(f"{at}: 'answers' must be a non-empty list of {{'text', 'answer_start'}}, got {answers!r}.")
    for k, a in enumerate(answers, 1):
        if not isinstance(a, dict) or not isinstance(a.get("text"), str):
            raise ValueError(f"{at}: answer {k} has no 'text' string ({a!r}).")
        start = a.get("answer_start")
        if require_answer_start and (isinstance(start, bool) or not isinstance(start, int)):
            raise ValueError(f"{at}: answer {k} ({a['text']!r}) has no integer 'answer_start' (got {start!r}); "
                             "training answers need the character offset of the answer in the context.")
        if isinstance(start, int) and not 0 <= start <= len(context) - len(a["text"]):
            raise ValueError(f"{at}: answer {k} ({a['text']!r}) has answer_start={start} outside its context of "
                             f"{len(context)} characters.")


def _start(answer: dict) -> int:
    start = answer.get("answer_start")
    return start if isinstance(start, int) and not isinstance(start, bool) else -1


def load_squad_json(path: Union[str, os.PathLike], require_answer_start: bool = True) -> datasets.Dataset:
    """Reads a SQuAD v1.1 JSON file into a dataset with the Hub ``squad`` dataset's columns.

    Every question is checked first: a malformed entry raises ``ValueError`` naming the file, the question id and
    its article / paragraph, so no error surfaces later inside tokenisation.

    Args:
        path: The official JSON format, ``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``.
        require_answer_start: Training data: every answer needs its ``answer_start``. ``False`` (evaluation,
            scored on the answer texts) accepts answers without it (-1 in the dataset).

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON (with the line), not SQuAD-shaped, or a bad entry.

    Example:
        >>> ds = load_squad_json("../shared/data/squad/squad-v1.1-dev-articles-00-23.json")
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SQuAD file not found: {path!r}.")
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); expected the SQuAD v1.1 JSON format.") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise ValueError(f"{path} is not in SQuAD format: expected a top-level 'data' list.")
    rows: Dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for i, article in enumerate(raw["data"]):
        title = article.get("title", "") if isinstance(article, dict) else ""
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise ValueError(f"{path}: article {i} ({title!r}) has no 'paragraphs' list.")
        for j, para in enumerate(paragraphs):
            where = f"article {i} {title!r}, paragraph {j}"
            context = para.get("context") if isinstance(para, dict) else None
            qas = para.get("qas") if isinstance(para, dict) else None
            first = qas[0].get("id") if isinstance(qas, list) and qas and isinstance(qas[0], dict) else None
            if not isinstance(context, str) or not context.strip():
                at = f"question id {first!r} ({where})" if first is not None else where
                raise ValueError(f"{path}: {at}: 'context' must be a non-empty string, got {context!r}.")
            if not isinstance(qas, list):
                raise ValueError(f"{path}: {where}: 'qas' must be a list of questions, got {qas!r}.")
            for qa in qas:
                _check_qa(path, where, qa, require_answer_start, context)
                rows["id"].append(str(qa["id"]))
                rows["title"].append(title)
                rows["context"].append(context)
                rows["question"].append(qa["question"].lstrip())
                rows["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [_start(a) for a in qa["answers"]]})
    if not rows["id"]:
        raise ValueError(f"{path}: no questions found in 'data'.")
    duplicate = len(set(rows["id"])) < len(rows["id"])
    if duplicate:
        seen, dup = set(), None
        for qid in rows["id"]:
            if qid in seen:
                dup = qid
                break
            seen.add(qid)
        raise ValueError(f"{path}: question id {dup!r} occurs more than once; ids must be unique.")
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


def nbest_predictions(
    examples: datasets.Dataset,
    features: datasets.Dataset,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> Dict[str, List[dict]]:
    """The ``n_best`` highest-scoring valid spans of every example, for the n-best predictions file.

    Candidates are the same as `postprocess_predictions`' (top ``n_best`` starts x ends of every window, spans of
    1 to ``max_answer_length`` context tokens), ranked by start + end logit over all windows of the example;
    ``probability`` is the softmax of the scores over the kept candidates (the format of the original BERT
    ``nbest_predictions.json``).

    Returns:
        ``{example_id: [{"text", "probability", "start_logit", "end_logit"}, ...]}``, best first; an example
        without any valid span gets ``[{"text": "", "probability": 1.0, ...}]``.

    Example:
        >>> nbest = nbest_predictions(examples, features, start, end, n_best=5)
        >>> best = {i: c[0]["text"] for i, c in nbest.items()}   # postprocess_predictions' answers
    """
    start = torch.as_tensor(np.asarray(start_logits), dtype=torch.float32)
    end = torch.as_tensor(np.asarray(end_logits), dtype=torch.float32)
    offsets = torch.as_tensor(np.asarray(features["offset_mapping"]), dtype=torch.long)  # [F, L, 2]
    k = min(n_best, start.shape[1])
    s_val, s_idx = start.topk(k, dim=1)
    e_val, e_idx = end.topk(k, dim=1)
    length = e_idx[:, None, :] - s_idx[:, :, None] + 1
    in_ctx = offsets[:, :, 0] >= 0
    valid = (length >= 1) & (length <= max_answer_length)
    valid &= in_ctx.gather(1, s_idx)[:, :, None] & in_ctx.gather(1, e_idx)[:, None, :]
    scores = (s_val[:, :, None] + e_val[:, None, :]).masked_fill(~valid, float("-inf")).flatten(1)
    top_val, top = scores.topk(min(n_best, scores.shape[1]), dim=1)  # [F, n]: best candidates of each window
    si, ei = s_idx.gather(1, top // k), e_idx.gather(1, top % k)
    sl, el = s_val.gather(1, top // k), e_val.gather(1, top % k)
    rows = torch.arange(len(si))[:, None]
    cs, ce = offsets[rows, si, 0].tolist(), offsets[rows, ei, 1].tolist()

    contexts = dict(zip(examples["id"], examples["context"]))
    pool: Dict[str, list] = {ex_id: [] for ex_id in contexts}
    for f, ex_id in enumerate(features["example_id"]):
        for c, score in enumerate(top_val[f].tolist()):
            if score > float("-inf"):
                pool[ex_id].append((score, float(sl[f, c]), float(el[f, c]), cs[f][c], ce[f][c]))
    out: Dict[str, List[dict]] = {}
    for ex_id, cands in pool.items():
        cands = sorted(cands, key=lambda t: -t[0])[:n_best]
        if not cands:
            out[ex_id] = [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]
            continue
        probs = torch.tensor([c[0] for c in cands], dtype=torch.float64).softmax(0).tolist()
        out[ex_id] = [{"text": contexts[ex_id][c0:c1], "probability": p, "start_logit": a, "end_logit": b}
                      for (_, a, b, c0, c1), p in zip(cands, probs)]
    return out


def to_metric_format(answers: Dict[str, str], examples: datasets.Dataset) -> Tuple[List[dict], List[dict]]:
    """Predictions and references in the ``evaluate`` SQuAD metric's format."""
    predictions = [{"id": i, "prediction_text": answers.get(i, "")} for i in examples["id"]]
    references = [{"id": i, "answers": a} for i, a in zip(examples["id"], examples["answers"])]
    return predictions, references
