"""The papers' claims the study tests, each as arms plus the comparisons that decide its verdict.

A claim is decided only by comparisons declared here, before any result exists (`Comparison`); `verdicts` applies
them. Arms take the package's defaults (each algorithm's literature defaults) except what the claim varies, and
every value that is not a default says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .arms import Arm, Suite
from .regime import CorpusSettings

S = 0.9  # the DynSparse paper's headline sparsity (Dietrich et al. 2021, arXiv:2108.06277, Fig. 3)
#: Sequence of eps the regularizer claim reads s(eps) at (the Cerebras paper plots 2^-13 ... 2^-8; 2^-10 is the
#: middle of that range, fixed here before any result).
THRESHOLD = "2^-10"


@dataclass(frozen=True)
class Comparison:
    """One declared comparison between two arms.

    Args:
        better: Label of the arm that the paper says is better.
        worse: Label of the other arm.
        metric: ``"eval_loss"`` (lower is better), ``"final_dof"`` or ``"threshold"`` (higher is better).
        mode: ``"significant"``: ``better`` must beat ``worse`` by more than 2 standard errors of the difference;
            ``"sign"``: the means must only be in the paper's order; ``"close"``: ``better`` may be worse by at most
            ``margin`` (relative) — an equivalence check for "loses little".
        margin: Relative margin of ``"close"``.
    """

    better: str
    worse: str
    metric: str = "eval_loss"
    mode: str = "significant"
    margin: float = 0.0


@dataclass
class Claim:
    """A paper's claim: its arms (all on one model kind) and the comparisons that decide it."""

    id: str
    title: str
    paper: str
    where: str
    arms: List[Arm]
    comparisons: List[Comparison]
    note: str = ""
    plots: Tuple[str, ...] = field(default_factory=tuple)


def _dense(model: str) -> Arm:
    return Arm("dense", model)


def _dyn(label: str = "DynSparse", **sparsity) -> Arm:
    return Arm(label, "bert", sparsity={"sparsity": S, **sparsity}, dynamic={"algorithm": "dynsparse"})


def _dyn_eq3(label: str, **sparsity) -> Arm:
    # The learning rate Eq. 3 of the DynSparse paper gives a model at s=0.9, as its sparse runs use.
    return Arm(label, "bert", sparsity={"sparsity": S, **sparsity},
               dynamic={"algorithm": "dynsparse", "apply_sparse_lr": True})


#: Note of the claims added after the first results (the declared ones above them keep their verdicts).
FOLLOW_UP = ("Added on 2026-12-02, after the declared claims' results: every s=0.9 arm trained at the dense learning "
             "rate ended at the same eval loss (6.349 ± 0.008 for static, DynSparse and all block sizes) while the "
             "same DynSparse model at the Eq. 3 learning rate reached 6.194, so at the dense rate those comparisons "
             "measure models that had not left the early plateau. These are the same comparisons at the learning "
             "rate the paper's Eq. 3 gives for s=0.9 (the paper's sparse runs use it); the comparisons are unchanged.")


def _topk(label: str, exploitation: str, sparsity: float = S, reset_interval: Optional[int] = None, **structure) -> Arm:
    # Algorithm 1 of the NVIDIA paper picks the top-d weights at every iteration: update_interval=1.
    dynamic = {"algorithm": "topk", "update_interval": 1, "topk_exploitation": exploitation}
    if reset_interval is not None:
        dynamic["topk_reset_interval"] = reset_interval
    return Arm(label, "bert", sparsity={"sparsity": sparsity, **structure}, dynamic=dynamic)


def build_claims(suite: Suite) -> List[Claim]:
    """The study's claims for ``suite`` (a few values scale with the number of steps, as each says)."""
    # RESET zeroes non-participating weights about every 1k steps in the NVIDIA paper (Sec. 3.3), runs of 100k+
    # steps; 1k is longer than our whole run, so z keeps the same ~5% of training instead.
    reset_z = max(2, suite.steps // 20)
    calib = [
        Claim("calibration-bert", "A 2x wider dense BERT beats the base dense BERT by > 3 seed standard deviations",
              "(study design)", "issue: capacity calibration",
              [_dense("bert"), Arm("dense 2x", "bert", width=2.0)],
              [Comparison("dense 2x", "dense", mode="calibration")]),
        Claim("calibration-gpt2", "A 2x wider dense GPT-2 beats the base dense GPT-2 by > 3 seed standard deviations",
              "(study design)", "issue: capacity calibration",
              [_dense("gpt2"), Arm("dense 2x", "gpt2", width=2.0)],
              [Comparison("dense 2x", "dense", mode="calibration")]),
    ]
    claims = [
        Claim("dynsparse-vs-static", "DynSparse beats static sparsity at s=0.9 at equal FLOPs",
              "Dietrich et al. 2021 (arXiv:2108.06277)", "Fig. 3",
              [_dense("bert"), Arm("static", "bert", sparsity={"sparsity": S}, dynamic={"algorithm": "static"}),
               _dyn()],
              [Comparison("DynSparse", "static")], plots=("loss_vs_flops",)),
        Claim("dof-random-vs-gradient", "Random re-allocation explores more degrees of freedom than gradient "
              "re-allocation", "Dietrich et al. 2021 (arXiv:2108.06277)", "Fig. 11",
              [_dyn(), Arm("RigL", "bert", sparsity={"sparsity": S}, dynamic={"algorithm": "rigl"})],
              [Comparison("DynSparse", "RigL", metric="final_dof")], plots=("dof",)),
        Claim("block-size", "Larger blocks cost loss: B=1 < 4 < 8 < 16", "Dietrich et al. 2021 (arXiv:2108.06277)",
              "Table 1",
              [_dyn("B=1")] + [_dyn(f"B={b}", structure="block", block_size=b) for b in (4, 8, 16)],
              [Comparison("B=1", "B=16"), Comparison("B=1", "B=4", mode="sign"),
               Comparison("B=4", "B=8", mode="sign"), Comparison("B=8", "B=16", mode="sign")], plots=("bars",)),
        Claim("sparse-lr-rule", "A sparse model wants a larger learning rate: Eq. 3 beats the dense LR at s=0.9",
              "Dietrich et al. 2021 (arXiv:2108.06277)", "Eq. 3",
              [_dyn("dense LR"), Arm("Eq. 3 LR", "bert", sparsity={"sparsity": S},
                                     dynamic={"algorithm": "dynsparse", "apply_sparse_lr": True})],
              [Comparison("Eq. 3 LR", "dense LR")]),
        Claim("exploitation", "Exploitation helps: FIX, RESET and REGULARIZE beat top-k without exploitation",
              "NVIDIA, Advances in Sparse Neural Model Training (no arXiv id)", "Fig. 3",
              [_topk("none", "none"), _topk("FIX", "fix"), _topk("RESET", "reset", reset_interval=reset_z),
               _topk("REGULARIZE", "regularize")],
              [Comparison("FIX", "none"), Comparison("RESET", "none"), Comparison("REGULARIZE", "none")],
              note=f"RESET interval z={reset_z} steps (5% of training; the paper's ~1k steps is longer than a run).",
              plots=("bars",)),
        Claim("nm-vs-unstructured", "2:4 and transposable 2:4 lose little against unstructured 50%",
              "NVIDIA, Advances in Sparse Neural Model Training (no arXiv id)", "App. E",
              [_topk("unstructured 50%", "none", 0.5), _topk("2:4", "none", 0.5, structure="nm", n=2, m=4),
               _topk("T2:4", "none", 0.5, structure="nm_transposable", n=2, m=4)],
              [Comparison("2:4", "unstructured 50%", mode="close", margin=0.01),
               Comparison("T2:4", "unstructured 50%", mode="close", margin=0.01)],
              note="'Little' is declared as at most 1% higher eval loss than unstructured 50%.", plots=("bars",)),
        Claim("sparse-wide", "Sparse Wide beats dense at equal training FLOPs",
              "Saxena et al. 2023 (arXiv:2303.11525)", "Table 8",
              [_dense("gpt2"), Arm("Sparse Wide s=0.5", "gpt2", ift={"kind": "wide", "sparsity": 0.5},
                                   dynamic={"algorithm": "rigl"}),
               Arm("Sparse Parallel s=0.5", "gpt2", ift={"kind": "parallel", "sparsity": 0.5},
                   dynamic={"algorithm": "rigl"})],
              [Comparison("Sparse Wide s=0.5", "dense"), Comparison("Sparse Parallel s=0.5", "dense")],
              note="Sparse-IFT models are trained with RigL, as in the paper's main results (Sec. 4).",
              plots=("loss_vs_flops",)),
        Claim("regularizers", "Sparsifying regularizers raise threshold sparsity s(eps) at a small loss cost",
              "Singh et al. 2024 (NeurIPS 2024 Compression Workshop)", "Fig. 2/3",
              [_dense("bert"),
               Arm("L1", "bert", regularizers=({"name": "l1", "strength": 1e-3},)),
               Arm("pWD p=0.5", "bert", regularizers=({"name": "pwd", "strength": 0.1, "p": 0.5},)),
               Arm("Group Lasso", "bert", regularizers=({"name": "group_lasso", "strength": 0.1,
                                                          "block_size": 16},))],
              [c for reg in ("L1", "pWD p=0.5", "Group Lasso") for c in (
                  Comparison(reg, "dense", metric="threshold"),
                  Comparison(reg, "dense", mode="close", margin=0.02))],
              note=f"s(eps) read at eps={THRESHOLD}; 'small cost' declared as at most 2% higher eval loss than "
                   "AdamW (the dense arm). One a-priori strength per regularizer, since the paper reports the best "
                   "of a sweep it does not list: 0.1 for the decoupled ones (10x the AdamW weight decay; Dietrich "
                   "et al. 2021 scale Group Lasso to be comparable with weight decay), 1e-3 for coupled L1.", plots=("bars",)),
    ]
    follow_up = [
        Claim("dynsparse-vs-static-eq3", "DynSparse beats static sparsity at s=0.9, both at the Eq. 3 LR (follow-up)",
              "Dietrich et al. 2021 (arXiv:2108.06277)", "Fig. 3",
              [_dense("bert"), Arm("static, Eq. 3 LR", "bert", sparsity={"sparsity": S},
                                   dynamic={"algorithm": "static", "apply_sparse_lr": True}),
               _dyn_eq3("DynSparse, Eq. 3 LR")],
              [Comparison("DynSparse, Eq. 3 LR", "static, Eq. 3 LR")], note=FOLLOW_UP, plots=("loss_vs_flops",)),
        Claim("block-size-eq3", "Larger blocks cost loss at the Eq. 3 LR: B=1 < 4 < 8 < 16 (follow-up)",
              "Dietrich et al. 2021 (arXiv:2108.06277)", "Table 1",
              [_dyn_eq3("B=1, Eq. 3 LR")] + [_dyn_eq3(f"B={b}, Eq. 3 LR", structure="block", block_size=b)
                                             for b in (4, 8, 16)],
              [Comparison(f"B={a}, Eq. 3 LR", f"B={b}, Eq. 3 LR", mode=mode)
               for a, b, mode in ((1, 16, "significant"), (1, 4, "sign"), (4, 8, "sign"), (8, 16, "sign"))],
              note=FOLLOW_UP,
              plots=("bars",)),
    ]
    return calib + claims + follow_up


SUITES: Dict[str, Suite] = {
    "smoke": Suite("smoke", CorpusSettings(vocab_size=300, seq_len=16, eval_blocks=8, max_chars=60_000),
                   hidden=32, layers=1, heads=2, steps=8, batch_size=4, seeds=1),
    "cpu": Suite("cpu", CorpusSettings(vocab_size=2048, seq_len=64, eval_blocks=256), hidden=128, layers=2,
                 heads=4, steps=600, batch_size=16, seeds=3),
}
