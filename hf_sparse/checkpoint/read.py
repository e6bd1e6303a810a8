"""Reading a sparse checkpoint's own files (``sparsity_config.json`` and the masks) and validating them.

Everything here only reads JSON and
safetensors, checks it against itself (format version, record shapes, SHA-256 of every file, active counts, mask
structure) and raises `CheckpointError` naming the file and module at the first problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Union

from . import masks as mask_io
from .masks import CheckpointError, MASKS_NAME
from ..structure import MaskStructure
from ..version import __version__

SPARSITY_CONFIG_NAME = "sparsity_config.json"
#: Version of the on-disk layout; a checkpoint written with a newer layout is refused with a clear error.
FORMAT_VERSION = 1
LAYOUTS = {1: "linear", 0: "conv1d"}  # input_dim -> layout name


def read_sparsity_config(directory: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Reads and checks ``sparsity_config.json`` of a checkpoint directory (JSON only).

    Raises:
        CheckpointError: missing file, invalid JSON, unsupported format version, malformed module records.
    """
    path = Path(directory) / SPARSITY_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{SPARSITY_CONFIG_NAME} is missing from {directory}: not an hf_sparse checkpoint.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{SPARSITY_CONFIG_NAME} in {directory} is not valid JSON: {err}.") from err
    if not isinstance(record, dict):
        raise CheckpointError(f"{SPARSITY_CONFIG_NAME}: expected a JSON object, got {type(record).__name__}.")
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{SPARSITY_CONFIG_NAME}: format_version={version!r} is not supported by hf_sparse {__version__} "
            f"(reads 1..{FORMAT_VERSION}; written by hf_sparse {record.get('hf_sparse_version')!r}); upgrade hf_sparse."
        )
    modules = record.get("modules")
    if not isinstance(modules, list) or not modules:
        raise CheckpointError(f"{SPARSITY_CONFIG_NAME}: 'modules' must be a non-empty list.")
    for i, rec in enumerate(modules):
        try:
            assert isinstance(rec["name"], str) and rec["layout"] in LAYOUTS.values()
            assert len(rec["shape"]) == 2 and all(isinstance(s, int) and s > 0 for s in rec["shape"])
            assert isinstance(rec["active"], int)
            assert rec.get("inactive_mode", "zero") in ("zero", "frozen")
            rec["_structure"] = MaskStructure(**rec["structure"])
        except (AssertionError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{SPARSITY_CONFIG_NAME}: malformed record for module #{i} {rec!r}: {err!r}."
            ) from err
    names = [rec["name"] for rec in modules]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{SPARSITY_CONFIG_NAME}: duplicate module names in {names}.")
    return record


def read_checkpoint(directory: Union[str, os.PathLike], verify_checksums: bool = True):
    """Reads ``sparsity_config.json`` and the masks, checking checksums, shapes, counts and structures.

    Returns:
        ``(record, masks)``: the parsed JSON record and the boolean masks by recorded module name.
    """
    directory = Path(directory)
    record = read_sparsity_config(directory)
    files = record.get("files")
    if not isinstance(files, dict) or MASKS_NAME not in files:
        raise CheckpointError(f"{SPARSITY_CONFIG_NAME}: no 'files' checksums (or none for {MASKS_NAME}).")
    for fname, digest in files.items():
        if not (directory / fname).is_file():
            raise CheckpointError(f"{fname} is missing from {directory} (listed in {SPARSITY_CONFIG_NAME}).")
        if verify_checksums and mask_io.file_sha256(directory / fname) != digest:
            raise CheckpointError(
                f"{fname} in {directory} does not match the SHA-256 recorded in {SPARSITY_CONFIG_NAME}: it was "
                "modified or corrupted after the checkpoint was written."
            )
    masks = mask_io.load_masks(directory / MASKS_NAME, {r["name"]: r["shape"] for r in record["modules"]})
    for rec in record["modules"]:
        mask, name = masks[rec["name"]], rec["name"]
        if int(mask.sum()) != rec["active"]:
            raise CheckpointError(
                f"{MASKS_NAME}: module {name!r} has {int(mask.sum())} active weights, {SPARSITY_CONFIG_NAME} "
                f"records {rec['active']}."
            )
        input_dim = 1 if rec["layout"] == "linear" else 0
        mask_io.check_mask_structure(mask, rec["_structure"], input_dim, name)
    return record, masks
