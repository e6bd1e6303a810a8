"""An ``evaluate`` module for SQuAD v1.1 EM / F1, loadable offline with ``evaluate.load(<this folder>)``."""

import datasets
import evaluate

from hf_sparse.data.squad_metric import compute_squad

_DESCRIPTION = "SQuAD v1.1 exact match and F1 (official normalisation), computed by hf_sparse."
_KWARGS = """
Args:
    predictions: list of {"id": str, "prediction_text": str}.
    references: list of {"id": str, "answers": {"text": list of str, "answer_start": list of int}}.
Returns:
    exact_match and f1, in percent.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class SquadV1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, 2016.",
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                "references": {
                    "id": datasets.Value("string"),
                    "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                  "answer_start": datasets.Value("int32")}),
                },
            }),
        )

    def _compute(self, predictions, references):
        return compute_squad(predictions, references)
