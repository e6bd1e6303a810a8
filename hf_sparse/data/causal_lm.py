"""Causal-LM data: tokenize documents and pack them into fixed-length blocks with EOS between documents.

Packing (as in GPT-2 / Cerebras-GPT pre-training) wastes no compute on padding: documents are concatenated,
each followed by the tokenizer's EOS token, and cut into ``block_size`` tokens. Packing happens inside
batched ``datasets.map`` calls, so the remainder of each map batch (fewer than ``block_size`` tokens) is dropped.
"""

from __future__ import annotations

from itertools import chain
from typing import Optional

import datasets


def _tokenize(batch, tokenizer, text_column: str, eos_id: int) -> dict:
    ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
    return {"input_ids": [seq + [eos_id] for seq in ids]}


def _pack(batch, block_size: int) -> dict:
    flat = list(chain.from_iterable(batch["input_ids"]))
    usable = len(flat) // block_size * block_size
    blocks = [flat[i : i + block_size] for i in range(0, usable, block_size)]
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}


def tokenize_and_pack(
    docs: datasets.Dataset,
    tokenizer,
    block_size: int,
    text_column: str = "text",
    num_proc: Optional[int] = None,
    batch_size: int = 1000,
) -> datasets.Dataset:
    """Tokenizes ``text_column`` and packs it into ``block_size``-token training examples.

    Args:
        docs: Dataset with one document per row.
        tokenizer: A tokenizer with an EOS token (GPT-2's ``<|endoftext|>``).
        block_size: Tokens per example (the context length).
        text_column: Column holding the text.
        num_proc: Worker processes for ``datasets.map``.
        batch_size: Documents per ``map`` batch (the packing window).

    Returns:
        A dataset with ``input_ids`` and ``labels`` (a copy of the inputs; models shift them internally).

    Example:
        >>> blocks = tokenize_and_pack(load_documents("arxiv-sample.jsonl"), gpt2_tokenizer, block_size=128)
    """
    if block_size < 2:
        raise ValueError(f"block_size={block_size!r} must be at least 2.")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS token to separate documents.")
    if text_column not in docs.column_names:
        raise ValueError(f"Column {text_column!r} not in dataset columns {docs.column_names}.")
    tokenized = docs.map(
        _tokenize, batched=True, num_proc=num_proc, remove_columns=docs.column_names, batch_size=batch_size,
        fn_kwargs={"tokenizer": tokenizer, "text_column": text_column, "eos_id": tokenizer.eos_token_id},
        desc="Tokenizing",
    )
    return tokenized.map(
        _pack, batched=True, num_proc=num_proc, batch_size=batch_size, fn_kwargs={"block_size": block_size},
        desc=f"Packing into blocks of {block_size}",
    )
