"""Pushing sparse checkpoints to the Hugging Face Hub (`push_to_hub`).

The checkpoint is written with `checkpoint.save_pretrained` into a temporary directory and uploaded as *one*
commit through ``huggingface_hub`` (``create_repo`` + ``create_commit``): weights, config, masks, sparsity
metadata and model card land together, so the repo never shows weights without their masks. The endpoint is
``huggingface_hub``'s own setting (``HF_ENDPOINT`` / ``huggingface_hub.constants.ENDPOINT``), read when the
``HfApi`` client is created.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from torch import nn

from .atomic import is_main_process as _is_main_process
from .save import save_pretrained

logger = logging.getLogger(__name__)


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    token: Optional[Union[str, bool]] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    card_info: Optional[Dict[str, Any]] = None,
    is_main_process: Optional[bool] = None,
    **save_kwargs,
):
    """Uploads a sparse model (weights, masks, ``sparsity_config.json``, model card) to the Hub in one commit.

    Args:
        model: A sparsified transformers model.
        repo_id: ``"namespace/name"`` of the model repo (created if missing).
        commit_message: Defaults to ``"Upload sparse checkpoint (hf_sparse)"``.
        commit_description: Optional longer description of the commit.
        private: Visibility when the repo is created.
        token: Hub token (default: the saved login / ``HF_TOKEN``).
        revision: Branch to commit to (default ``main``).
        create_pr: Open a pull request instead of committing to the branch.
        card_info: Model card inputs (see `model_card.render_model_card`); ``repo_id`` is filled in.
        is_main_process: Whether this process uploads (default: rank 0 of a distributed run).
        **save_kwargs: Passed to `checkpoint.save_pretrained` (``dynamic_config``, ``training_stats``, ...).

    Returns:
        The ``huggingface_hub.CommitInfo`` of the commit, or ``None`` on non-main processes.

    Example:
        >>> hf_sparse.push_to_hub(model, "org/bert-mini-s90", training_stats={"step": 1000})
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"repo_id={repo_id!r} must look like 'namespace/name' or 'name'.")
    if not _is_main_process(is_main_process):
        return None
    card = {**(card_info or {}), "repo_id": repo_id}
    with tempfile.TemporaryDirectory(prefix="hf_sparse_push_") as tmp:
        folder = save_pretrained(model, Path(tmp) / "checkpoint", card_info=card, is_main_process=True,
                                 **save_kwargs)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        operations = [
            CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files
        ]
        api = HfApi(token=token)  # endpoint: huggingface_hub.constants.ENDPOINT (HF_ENDPOINT) at this moment
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or "Upload sparse checkpoint (hf_sparse)",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
    logger.info("Pushed %d files to %s (%s).", len(operations), repo_id, getattr(info, "commit_url", info))
    return info
