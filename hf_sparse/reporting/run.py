"""Reading a training run from disk for `hf-sparse report` (JSON and safetensors only, never a pickle).

A run directory is a Trainer ``output_dir``: ``trainer_state.json`` (its ``log_history``), ``checkpoint-N``
sub-directories (hf_sparse writes ``sparsity_config.json`` and ``sparsity_masks.safetensors`` into them),
optionally a final hf_sparse checkpoint in the directory itself, and the files `MetricsCallback` writes:
``threshold_sparsity.json`` and ``weight_trajectories.safetensors``. A single checkpoint directory is a run too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..checkpoint import SPARSITY_CONFIG_NAME, read_checkpoint
from ..metrics import THRESHOLD_SPARSITY_FILE, TRAJECTORIES_FILE

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


@dataclass
class SparseSnapshot:
    """One hf_sparse checkpoint of a run: its step, directory and parsed ``sparsity_config.json``."""

    step: int
    path: Path
    record: Dict[str, Any]

    def masks(self) -> Dict[str, torch.Tensor]:
        """The boolean masks by module name (checksums, counts and structures are verified)."""
        return read_checkpoint(self.path)[1]


@dataclass
class RunData:
    """Everything `hf-sparse report` reads from one run directory.

    Attributes:
        name: Display name (the directory name).
        path: The run directory.
        log_history: ``trainer_state.json``'s ``log_history`` (``[]`` when absent).
        max_steps: The run's planned optimizer steps (``None`` when unknown).
        snapshots: hf_sparse checkpoints by increasing step (the final one in the run directory last).
        threshold: ``threshold_sparsity.json`` content, or ``None``.
        trajectories: ``weight_trajectories.safetensors`` tensors (``step``, ``series``), or ``None``.
    """

    name: str
    path: Path
    log_history: List[Dict[str, Any]] = field(default_factory=list)
    max_steps: Optional[int] = None
    snapshots: List[SparseSnapshot] = field(default_factory=list)
    threshold: Optional[Dict[str, Any]] = None
    trajectories: Optional[Dict[str, torch.Tensor]] = None

    def series(self, key: str, x: str = "step") -> Tuple[List[float], List[float]]:
        """``(xs, ys)`` of the log entries holding both ``x`` and ``key`` (finite values only)."""
        xs, ys = [], []
        for entry in self.log_history:
            a, b = entry.get(x), entry.get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b):
                xs.append(float(a))
                ys.append(float(b))
        return xs, ys

    def last(self, key: str) -> Optional[float]:
        """The last logged value of ``key`` (``None`` when never logged)."""
        _, ys = self.series(key)
        return ys[-1] if ys else None

    @property
    def final_snapshot(self) -> Optional[SparseSnapshot]:
        return self.snapshots[-1] if self.snapshots else None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is not readable JSON: {err}.") from err


def _checkpoint_dirs(path: Path) -> List[Tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := _CHECKPOINT.fullmatch(p.name))]
    return sorted(found)


def _step_of(directory: Path, record: Dict[str, Any], default: int) -> int:
    stats = record.get("training_stats") or {}
    step = stats.get("step") if isinstance(stats, dict) else None
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    m = _CHECKPOINT.fullmatch(directory.name)
    return int(m.group(1)) if m else default


def _newest(paths: List[Path], name: str) -> Optional[Path]:
    for p in paths:
        if (p / name).is_file():
            return p / name
    return None


def load_run(path: str | Path, name: Optional[str] = None) -> RunData:
    """Reads a run directory (or a single checkpoint directory).

    Args:
        path: The Trainer ``output_dir`` (or one checkpoint).
        name: Display name (default: the directory name).

    Returns:
        A `RunData`.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        ValueError: it holds neither a trainer state nor an hf_sparse checkpoint, or a file is malformed.

    Example:
        >>> run = load_run("out/bert-s90")
        >>> run.series("loss")
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Run directory {str(path)!r} does not exist.")
    checkpoints = _checkpoint_dirs(root)
    newest_first = [root] + [p for _, p in reversed(checkpoints)]
    run = RunData(name=name or root.resolve().name, path=root)

    state_path = _newest(newest_first, TRAINER_STATE_NAME)
    if state_path is not None:
        state = _read_json(state_path, "Trainer state")
        history = state.get("log_history") if isinstance(state, dict) else None
        if not isinstance(history, list):
            raise ValueError(f"{state_path} has no 'log_history' list.")
        run.log_history = [e for e in history if isinstance(e, dict)]
        max_steps = state.get("max_steps")
        run.max_steps = int(max_steps) if isinstance(max_steps, int) and max_steps > 0 else None

    for step, directory in checkpoints + [(None, root)]:
        if (directory / SPARSITY_CONFIG_NAME).is_file():
            record = read_checkpoint(directory)[0]
            default = step if step is not None else (run.max_steps or (checkpoints[-1][0] if checkpoints else 0))
            run.snapshots.append(SparseSnapshot(_step_of(directory, record, default), directory, record))
    run.snapshots.sort(key=lambda s: (s.step, s.path == root))
    # The final save usually repeats the last checkpoint's step: keep one snapshot per step (the final one), so
    # accumulated masks do not count that pattern twice.
    by_step = {s.step: s for s in run.snapshots}
    run.snapshots = [by_step[k] for k in sorted(by_step)]

    threshold_path = _newest(newest_first, THRESHOLD_SPARSITY_FILE)
    if threshold_path is not None:
        data = _read_json(threshold_path, "Threshold-sparsity history")
        if not (isinstance(data, dict) and isinstance(data.get("sparsity"), dict) and "thresholds" in data):
            raise ValueError(f"{threshold_path} is not a threshold-sparsity history (thresholds, step, sparsity).")
        run.threshold = data
    traj_path = _newest(newest_first, TRAJECTORIES_FILE)
    if traj_path is not None:
        from safetensors.torch import load_file

        tensors = load_file(str(traj_path))
        if "series" not in tensors or "step" not in tensors:
            raise ValueError(f"{traj_path} holds no 'series' / 'step' tensors.")
        run.trajectories = tensors

    if state_path is None and not run.snapshots:
        raise ValueError(
            f"{root} holds no {TRAINER_STATE_NAME} and no hf_sparse checkpoint ({SPARSITY_CONFIG_NAME}): "
            "not a training run directory."
        )
    return run
