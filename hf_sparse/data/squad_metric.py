"""SQuAD v1.1 exact match and F1 with the official answer normalisation.

The numbers equal the official evaluation script's (and ``evaluate.load("squad")``'s): answers are lower-cased,
stripped of punctuation and of the articles a / an / the, and whitespace is collapsed; a prediction scores the
maximum over the reference answers; EM and F1 are percentages averaged over questions.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import string
from typing import Dict, List, Sequence

logger = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, remove punctuation and articles, collapse whitespace (official SQuAD v1.1 rules).

    Example:
        >>> normalize_answer("The  Denver Broncos!")
        'denver broncos'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    """Token-level F1 between the normalised prediction and reference."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def compute_squad(predictions: Sequence[dict], references: Sequence[dict]) -> Dict[str, float]:
    """EM and F1 in percent, in the ``evaluate`` SQuAD metric's input format.

    Args:
        predictions: ``[{"id": ..., "prediction_text": ...}]``.
        references: ``[{"id": ..., "answers": {"text": [...], "answer_start": [...]}}]``.

    Returns:
        ``{"exact_match": float, "f1": float}``.

    Example:
        >>> compute_squad([{"id": "1", "prediction_text": "Denver Broncos"}],
        ...               [{"id": "1", "answers": {"text": ["the Denver Broncos"], "answer_start": [0]}}])
        {'exact_match': 100.0, 'f1': 100.0}
    """
    preds = {p["id"]: p["prediction_text"] for p in predictions}
    missing = [r["id"] for r in references if r["id"] not in preds]
    if missing:
        raise ValueError(f"No prediction for {len(missing)} question ids, e.g. {missing[:3]}.")
    if not references:
        raise ValueError("No references given.")
    em = f1 = 0.0
    for ref in references:
        truths: List[str] = ref["answers"]["text"]
        em += max(exact_match_score(preds[ref["id"]], t) for t in truths)
        f1 += max(f1_score(preds[ref["id"]], t) for t in truths)
    return {"exact_match": 100.0 * em / len(references), "f1": 100.0 * f1 / len(references)}


def load_squad_metric(try_hub: bool = True):
    """The ``evaluate`` SQuAD metric: the Hub's when it can be loaded, else this package's local module.

    Both implement the official normalisation, so the numbers are the same either way.

    Args:
        try_hub: Try ``evaluate.load("squad")`` first (needs network or a cached copy).

    Returns:
        An ``evaluate.EvaluationModule`` with ``compute(predictions=..., references=...)``.
    """
    import evaluate

    if try_hub:
        try:
            return evaluate.load("squad")
        except Exception as err:  # offline, or the Hub module changed: use the local copy
            logger.info("evaluate.load('squad') failed (%s); using hf_sparse's local SQuAD metric.", err)
    return evaluate.load(os.path.join(os.path.dirname(__file__), "squad_v1"))
