"""Reports: the per-layer sparsity report of a model, and reports of training runs (figures + markdown summary).

- `sparsity`: `sparsity_report(model)` (per module: name, shape, structure, target / actual density).
- `run`: `load_run` reads a run's checkpoints and logs; `summary`: `write_report` (``hf-sparse report``);
  `plots`: the figures (matplotlib, imported only when a report is drawn).
"""

from .run import RunData, SparseSnapshot, load_run
from .sparsity import LayerSparsity, SparsityReport, sparsity_report
from .summary import REPORT_NAME, SUMMARY_NAME, run_summary, write_report

__all__ = [
    "REPORT_NAME", "SUMMARY_NAME", "LayerSparsity", "RunData", "SparseSnapshot", "SparsityReport", "load_run",
    "run_summary", "sparsity_report", "write_report",
]
