"""Sparse checkpoints: save, load, validate, push to the Hub, export compressed, and their model cards.

- `save`: `save_pretrained` (weights with inactive ones stored as zeros, masks, ``sparsity_config.json``, card).
- `load`: `from_pretrained` with any head class of the base model; `restore_sparse_modules_`.
- `read`: reading and validating ``sparsity_config.json`` and the masks before anything is built.
- `masks`: the bit-packed masks file and `CheckpointError`.
- `atomic`: atomic directory writes (temporary sibling, then swapped in) and the main-process rule.
- `hub`: `push_to_hub` in one commit.
- `compressed`: `export` / `load_compressed` (active values + bitmask).
- `card`: the model card, rendered from the packaged template.
- `citations`: the papers a card cites (BibTeX with arXiv ids where there are any).

Only JSON and safetensors are ever read; nothing is unpickled.

Example:
    >>> hf_sparse.checkpoint.save_pretrained(model, "out/bert-mini-s90", tokenizer=tok)
    >>> model = hf_sparse.checkpoint.from_pretrained(BertForQuestionAnswering, "out/bert-mini-s90")
"""

from .card import render_model_card
from .compressed import COMPRESSED_CONFIG, COMPRESSED_WEIGHTS, ExportReport, export, load_compressed
from .hub import push_to_hub
from .load import from_pretrained, restore_sparse_modules_
from .masks import MASKS_NAME, CheckpointError, load_masks, pack_mask, save_masks, unpack_mask
from .read import FORMAT_VERSION, LAYOUTS, SPARSITY_CONFIG_NAME, read_checkpoint, read_sparsity_config
from .save import MODEL_CARD_NAME, module_records, save_pretrained

__all__ = [
    "COMPRESSED_CONFIG", "COMPRESSED_WEIGHTS", "FORMAT_VERSION", "LAYOUTS", "MASKS_NAME", "MODEL_CARD_NAME",
    "SPARSITY_CONFIG_NAME", "CheckpointError", "ExportReport", "export", "from_pretrained", "load_compressed",
    "load_masks", "module_records", "pack_mask", "push_to_hub", "read_checkpoint", "read_sparsity_config",
    "render_model_card", "restore_sparse_modules_", "save_masks", "save_pretrained", "unpack_mask",
]
