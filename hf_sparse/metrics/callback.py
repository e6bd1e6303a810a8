"""Gathering training metrics inside a Hugging Face ``Trainer`` (the only metrics module that knows about it).

`MetricsCallback` drives a `ThresholdSparsityTracker` (and optionally a `WeightTrajectoryRecorder`) from the
Trainer's step events, adds the latest threshold sparsity to the training log entries (so it lands in
``trainer_state.json``'s ``log_history``), and writes the histories next to every checkpoint and at the end of
training: ``threshold_sparsity.json`` and ``weight_trajectories.safetensors``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

from safetensors.torch import save_file
from transformers import TrainerCallback

from .threshold import ThresholdSparsityTracker
from .weight_correlation import WeightTrajectoryRecorder

logger = logging.getLogger(__name__)

THRESHOLD_SPARSITY_FILE = "threshold_sparsity.json"
TRAJECTORIES_FILE = "weight_trajectories.safetensors"


class MetricsCallback(TrainerCallback):
    """Measures threshold sparsity (and weight trajectories) every N optimizer steps of a ``Trainer``.

    Args:
        tracker: The threshold-sparsity tracker (its ``every`` sets the cadence).
        recorder: Optional weight-trajectory recorder for the correlation analysis.

    Example:
        >>> cb = MetricsCallback(ThresholdSparsityTracker(model, every=10))
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    """

    def __init__(self, tracker: ThresholdSparsityTracker, recorder: Optional[WeightTrajectoryRecorder] = None):
        self.tracker, self.recorder = tracker, recorder

    def _measure(self, step: int, force: bool = False) -> None:
        self.tracker.step(step, force=force)
        if self.recorder is not None:
            self.recorder.step(step, force=force)

    def on_train_begin(self, args, state, control, **kwargs):
        self._measure(state.global_step, force=True)  # the weights training starts from

    def on_step_end(self, args, state, control, **kwargs):
        self._measure(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs and state.log_history and self.tracker.latest is not None:
            state.log_history[-1].update(self.tracker.logs())

    def write(self, directory: str) -> None:
        """Writes the histories into ``directory`` (created if needed)."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, THRESHOLD_SPARSITY_FILE), "w", encoding="utf-8") as f:
            json.dump(self.tracker.history_dict(), f)
        if self.recorder is not None and self.recorder.steps:
            save_file({k: v.contiguous() for k, v in self.recorder.state_dict().items()},
                      os.path.join(directory, TRAJECTORIES_FILE))

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._measure(state.global_step, force=True)
            self.write(args.output_dir)
