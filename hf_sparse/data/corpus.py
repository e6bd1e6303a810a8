"""Loading local corpora as ``datasets.Dataset`` of documents.

Two local formats are understood, matching what BERT and GPT-style pre-training pipelines use:

* text files with one sentence per line and a blank line between documents (the input format of BERT's
  pre-training data creation), loaded with ``datasets``' ``text`` builder in paragraph mode;
* JSON lines with a ``text`` field (the Pile's record format), loaded with the ``json`` builder.

Either way the result has a ``text`` column (one document per row); `split_sentences` turns it into a
``sentences`` column. Hub datasets are loaded by the recipes with ``load_dataset`` directly.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Union

import datasets

# A sentence ends at ., ! or ? followed by whitespace and an upper-case letter, digit or quote. Deliberately
# simple: it is only used for JSON-lines corpora, whose documents are not already one sentence per line.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def load_documents(
    files: Union[str, Sequence[str]], text_column: str = "text", cache_dir: Optional[str] = None
) -> datasets.Dataset:
    """Loads local text (blank-line separated documents) or JSON-lines files as one document per row.

    Args:
        files: A path or a list of paths; ``.json`` / ``.jsonl`` files are read as JSON lines, anything else as
            text. All files must have the same kind.
        text_column: Column holding the document text in JSON lines.
        cache_dir: ``datasets`` cache directory.

    Returns:
        A ``Dataset`` with a ``text`` column.

    Example:
        >>> docs = load_documents("../shared/data/text/bert-sample-text.txt")
    """
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not paths:
        raise ValueError("No training files given.")
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"Training files not found: {missing}.")
    kinds = {str(p).endswith((".json", ".jsonl")) for p in paths}
    if len(kinds) > 1:
        raise ValueError(f"Mixing JSON-lines and text files is not supported: {paths}.")
    paths = [str(p) for p in paths]
    if kinds == {True}:
        ds = datasets.load_dataset("json", data_files=paths, split="train", cache_dir=cache_dir)
        if text_column not in ds.column_names:
            raise ValueError(f"JSON-lines files have no {text_column!r} column (columns: {ds.column_names}).")
        if text_column != "text":
            ds = ds.rename_column(text_column, "text")
        return ds.select_columns(["text"])
    return datasets.load_dataset(
        "text", data_files=paths, split="train", sample_by="paragraph", keep_linebreaks=True, cache_dir=cache_dir
    )


def _split_batch(batch, one_per_line: bool) -> dict:
    out: List[List[str]] = []
    for doc in batch["text"]:
        if one_per_line:
            sentences = [line.strip() for line in doc.split("\n")]
        else:
            sentences = [s.strip() for para in doc.split("\n") for s in _SENTENCE_END.split(para)]
        out.append([s for s in sentences if s])
    return {"sentences": out}


def split_sentences(
    docs: datasets.Dataset, one_sentence_per_line: bool = True, num_proc: Optional[int] = None
) -> datasets.Dataset:
    """Adds a ``sentences`` column (list of strings) and drops empty documents.

    Args:
        docs: A dataset with a ``text`` column.
        one_sentence_per_line: Lines are sentences (BERT's format); otherwise split with a simple punctuation
            rule.
        num_proc: Worker processes for ``datasets.map``.

    Returns:
        The dataset with ``text`` and ``sentences``.
    """
    ds = docs.map(
        _split_batch, batched=True, num_proc=num_proc, fn_kwargs={"one_per_line": one_sentence_per_line},
        desc="Splitting sentences",
    )
    return ds.filter(lambda batch: [len(s) > 0 for s in batch["sentences"]], batched=True, num_proc=num_proc)
