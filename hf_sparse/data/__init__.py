"""Data pipelines the recipes need and tests can import: BERT phase-1 pairs with whole-word masking,
causal-LM packing, SQuAD pre/post-processing and EM / F1."""

from .bert_pretraining import WholeWordMaskCollator, create_nsp_examples, tokenize_sentences
from .causal_lm import tokenize_and_pack
from .corpus import load_documents, looks_like_wikitext, split_sentences
from .squad import (
    load_squad_json,
    nbest_predictions,
    postprocess_predictions,
    prepare_eval_features,
    prepare_train_features,
    to_metric_format,
)
from .squad_metric import compute_squad, exact_match_score, f1_score, load_squad_metric, normalize_answer

__all__ = [
    "WholeWordMaskCollator", "compute_squad", "create_nsp_examples", "exact_match_score", "f1_score",
    "load_documents", "load_squad_json", "load_squad_metric", "looks_like_wikitext", "nbest_predictions",
    "normalize_answer", "postprocess_predictions",
    "prepare_eval_features", "prepare_train_features", "split_sentences", "to_metric_format",
    "tokenize_and_pack", "tokenize_sentences",
]
