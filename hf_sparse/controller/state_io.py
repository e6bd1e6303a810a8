"""The controller's state files: masks and ever-active records as safetensors, everything else as JSON.

Nothing is unpickled: a resumed run reads only these two files.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Union

STATE_TENSORS_NAME = "sparsity_controller.safetensors"
STATE_META_NAME = "sparsity_controller.json"


def write_state(state: Dict[str, Any], directory: Union[str, os.PathLike]) -> None:
    """Writes a controller ``state_dict`` to ``directory``: masks as safetensors, everything else as JSON."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state["tensors"].items()}, os.path.join(directory, STATE_TENSORS_NAME))
    with open(os.path.join(directory, STATE_META_NAME), "w", encoding="utf-8") as f:
        json.dump(state["meta"], f, indent=2, sort_keys=True)


def read_state(directory: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Reads what `write_state` wrote (safetensors and JSON only; nothing is unpickled)."""
    from safetensors.torch import load_file

    tensor_path = os.path.join(directory, STATE_TENSORS_NAME)
    meta_path = os.path.join(directory, STATE_META_NAME)
    for path in (tensor_path, meta_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No sparsity controller state at {path!r}.")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    return {"tensors": load_file(tensor_path, device="cpu"), "meta": meta}
