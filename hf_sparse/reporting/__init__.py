"""Reports of training runs: figures (matplotlib) and a markdown summary (`hf-sparse report`)."""

from .run import RunData, SparseSnapshot, load_run
from .summary import REPORT_NAME, SUMMARY_NAME, run_summary, write_report

__all__ = ["REPORT_NAME", "SUMMARY_NAME", "RunData", "SparseSnapshot", "load_run", "run_summary", "write_report"]
