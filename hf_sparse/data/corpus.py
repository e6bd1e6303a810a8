"""Loading local corpora as ``datasets.Dataset`` of documents.

Three local formats are understood, matching what BERT and GPT-style pre-training pipelines use:

* text files with one sentence per line and a blank line between documents (the input format of BERT's
  pre-training data creation); a line holding only whitespace counts as blank;
* WikiText files (Merity et al. 2016, arXiv:1609.07843), whose blank lines hold a single space and separate
  paragraphs, not articles: they are split at their top-level `` = Title = `` headings instead (the
  ``wikitext_articles`` option; by default when a file looks like WikiText);
* JSON lines with a ``text`` field (the Pile's record format), loaded with the ``json`` builder.

Either way the result has a ``text`` column (one document per row); `split_sentences` turns it into a
``sentences`` column. Every input error (a missing or empty file, a line that is not JSON, a missing text field)
raises ``ValueError`` / ``FileNotFoundError`` naming the file, the line and what to change. Hub datasets are loaded
by the recipes with ``load_dataset`` directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Iterator, List, Optional, Sequence, Union

import datasets

logger = logging.getLogger(__name__)

# A sentence ends at ., ! or ? followed by whitespace and an upper-case letter, digit or quote. Deliberately
# simple: it is only used for JSON-lines corpora, whose documents are not already one sentence per line.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
#: A WikiText article title line: " = Title = " (sections are " = = Section = = ").
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
_WIKITEXT_HEADING = re.compile(r"^\s*(=\s)+.*(\s=)+\s*$")
_SNIFF_LINES = 200


def _first_lines(path: str, n: int) -> List[str]:
    lines = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            lines.append(line.rstrip("\n"))
            if len(lines) >= n:
                break
    return lines


def looks_like_wikitext(path: Union[str, os.PathLike]) -> bool:
    """Whether a text file looks like WikiText: an article title `` = Title = `` and single-space blank lines
    among its first 200 lines.

    Example:
        >>> looks_like_wikitext("../shared/data/text/wikitext-2-valid.txt")
        True
    """
    lines = _first_lines(str(path), _SNIFF_LINES)
    return any(WIKITEXT_TITLE.match(line) for line in lines) and any(line == " " for line in lines)


def _check_text_file(path: str) -> None:
    """Refuses an empty / whitespace-only file or one that is not UTF-8, naming it (reads up to the first text)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
        while head and not head.strip():
            head = fh.read(1 << 16)
    if not head.strip():
        raise ValueError(f"{path}: the file is empty (or holds only blank lines); give a file with text.")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not merely a character cut at the end of the chunk
            raise ValueError(f"{path}: not UTF-8 text (byte {err.start} of the first text); convert it to "
                             "UTF-8.") from None


def _text_documents(paths: List[str], wikitext: List[bool], stamp: List[str]) -> Iterator[dict]:
    # ``stamp`` (size and mtime of every file) is unused here: it is part of the arguments so that datasets'
    # cache fingerprint changes when a file does.
    for path, wiki in zip(paths, wikitext):
        doc: List[str] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if wiki:
                    # WikiText: articles start at a title; blank " " lines are paragraph breaks, kept verbatim.
                    if WIKITEXT_TITLE.match(line.rstrip("\n")) and any(s.strip() for s in doc):
                        yield {"text": "".join(doc)}
                        doc = []
                    doc.append(line if line.endswith("\n") else line + "\n")
                elif line.strip():
                    doc.append(line.rstrip("\n"))
                elif doc:
                    yield {"text": "\n".join(doc)}
                    doc = []
        if doc and any(s.strip() for s in doc):
            yield {"text": "".join(doc) if wiki else "\n".join(doc)}


def _bad_json_line(paths: List[str]) -> Optional[str]:
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as err:
                    return f"{path}:{number}: not valid JSON ({err})"
                if not isinstance(record, dict):
                    return f"{path}:{number}: expected one JSON object per line, got {type(record).__name__}"
    return None


def _load_json_lines(paths: List[str], text_column: str, cache_dir: Optional[str]) -> datasets.Dataset:
    for path in paths:
        _check_text_file(path)
    bad = _bad_json_line(paths) if sum(os.path.getsize(p) for p in paths) < (64 << 20) else None
    if bad:  # datasets' own error names neither the file nor the line
        raise ValueError(f"{bad}; JSON-lines files hold one object per line.")
    try:
        ds = datasets.load_dataset("json", data_files=paths, split="train", cache_dir=cache_dir)
    except Exception as err:  # a large file (not pre-scanned) or mixed column types across lines
        raise ValueError(f"{', '.join(paths)}: cannot be read as JSON lines ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]}).") from err
    if text_column not in ds.column_names:
        raise ValueError(f"{', '.join(paths)}: no {text_column!r} field in the JSON lines (fields: "
                         f"{ds.column_names}); choose the text field with --text_column.")
    ds = ds.select_columns([text_column])
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    kept = ds.filter(lambda batch: [isinstance(t, str) and bool(t.strip()) for t in batch["text"]], batched=True)
    if len(kept) == 0:
        raise ValueError(f"{', '.join(paths)}: every {text_column!r} value is empty or null; choose the text field "
                         "with --text_column.")
    if len(kept) < len(ds):
        logger.info("Dropped %d JSON lines with an empty or null %r.", len(ds) - len(kept), text_column)
    return kept


def load_documents(
    files: Union[str, Sequence[str]],
    text_column: str = "text",
    cache_dir: Optional[str] = None,
    wikitext_articles: Union[str, bool] = "auto",
) -> datasets.Dataset:
    """Loads local text or JSON-lines files as one document per row.

    Args:
        files: A path or a list of paths; ``.json`` / ``.jsonl`` files are read as JSON lines, anything else as
            text. All files must have the same kind.
        text_column: Field holding the document text in JSON lines.
        cache_dir: ``datasets`` cache directory.
        wikitext_articles: Text files: split documents at WikiText `` = Title = `` headings (``True``), at blank
            lines (``False``, whitespace-only lines count as blank), or decide per file with
            `looks_like_wikitext` (``"auto"``).

    Returns:
        A ``Dataset`` with a ``text`` column.

    Raises:
        FileNotFoundError: a file does not exist. ValueError: an empty file, bad JSON (file and line), or no
        ``text_column`` field.

    Example:
        >>> docs = load_documents("../shared/data/text/wikitext-2-valid.txt")   # one row per article
    """
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not paths:
        raise ValueError("No training files given.")
    paths = [str(p) for p in paths]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"Data file(s) not found: {missing}.")
    kinds = {p.endswith((".json", ".jsonl")) for p in paths}
    if len(kinds) > 1:
        raise ValueError(f"Mixing JSON-lines and text files is not supported: {paths}.")
    if kinds == {True}:
        return _load_json_lines(paths, text_column, cache_dir)
    mode = str(wikitext_articles).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"wikitext_articles={wikitext_articles!r} must be 'auto', True or False.")
    for path in paths:
        _check_text_file(path)
    wiki = [looks_like_wikitext(p) if mode == "auto" else mode == "true" for p in paths]
    stamp = [f"{p}:{os.path.getsize(p)}:{os.stat(p).st_mtime_ns}" for p in paths]
    return datasets.Dataset.from_generator(
        _text_documents, gen_kwargs={"paths": paths, "wikitext": wiki, "stamp": stamp}, cache_dir=cache_dir,
        features=datasets.Features({"text": datasets.Value("string")}),
    )


def _split_batch(batch, one_per_line: bool) -> dict:
    out: List[List[str]] = []
    for doc in batch["text"]:
        if one_per_line:
            sentences = [line.strip() for line in doc.split("\n")]
        else:  # WikiText's " = = Section = = " lines are headings, not sentences
            sentences = [s.strip() for para in doc.split("\n") if not _WIKITEXT_HEADING.match(para)
                         for s in _SENTENCE_END.split(para)]
        out.append([s for s in sentences if s])
    return {"sentences": out}


def split_sentences(
    docs: datasets.Dataset, one_sentence_per_line: bool = True, num_proc: Optional[int] = None
) -> datasets.Dataset:
    """Adds a ``sentences`` column (list of strings) and drops empty documents.

    Args:
        docs: A dataset with a ``text`` column.
        one_sentence_per_line: Lines are sentences (BERT's format); otherwise split with a simple punctuation
            rule (WikiText heading lines are dropped).
        num_proc: Worker processes for ``datasets.map``.

    Returns:
        The dataset with ``text`` and ``sentences``.
    """
    ds = docs.map(
        _split_batch, batched=True, num_proc=num_proc, fn_kwargs={"one_per_line": one_sentence_per_line},
        desc="Splitting sentences",
    )
    return ds.filter(lambda batch: [len(s) > 0 for s in batch["sentences"]], batched=True, num_proc=num_proc)
