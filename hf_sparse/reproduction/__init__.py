"""The reproduction study: the four papers' claims run at small scale through the public API.

``hf-sparse reproduce --suite {smoke,cpu,gpu}`` (or `reproduce` here) trains every arm of every claim with
`hf_sparse.SparseTrainer`, stores each finished run as a small JSON named by the hash of its full configuration
(so a suite resumes where it stopped), decides each claim by comparisons declared before the runs (`claims`,
`verdicts`) and writes REPRODUCTION.md with its figures (`document`).

Modules: `regime` (data and vocabulary), `arms` (suite settings, one run's description, its hash), `claims`,
`runner` (one run through `SparseTrainer`, stored atomically), `verdicts`, `study` (the suite loop), `plots`,
`document`, `reference` (the best sparse BERT re-trained and saved with its model card).
"""

from .claims import SUITES, Claim, Comparison, build_claims
from .document import write_document
from .reference import choose_reference, train_reference
from .study import gpu_commands, reproduce

__all__ = ["SUITES", "Claim", "Comparison", "build_claims", "choose_reference", "gpu_commands", "reproduce",
           "train_reference", "write_document"]
