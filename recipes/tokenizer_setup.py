"""Tokenizer resolution for the recipes: a Hub id or directory, the checkpoint's own, or one trained on the data
(WordPiece for BERT, byte-level BPE for GPT-2) with ``tokenizers`` and saved with the checkpoint."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("hf_sparse.recipes")


def iter_texts(dataset, column: str = "text", batch_size: int = 1000):
    """Batches of strings from a dataset column (for tokenizer training)."""
    for start in range(0, len(dataset), batch_size):
        yield [t for t in dataset[start : start + batch_size][column] if t]


def load_named_tokenizer(model_args, kind: str):
    """The tokenizer of ``--tokenizer_name`` (else ``--model_name_or_path``), or ``None`` when neither is given.

    A local directory is loaded by what it holds, without trial and error (and without AutoTokenizer's
    "install sentencepiece or tiktoken" message for a plain vocabulary): ``tokenizer.json`` or
    ``tokenizer_config.json`` -> ``AutoTokenizer``; only ``vocab.txt`` -> ``BertTokenizer``; only ``vocab.json`` +
    ``merges.txt`` -> ``GPT2Tokenizer``. Hub ids go to ``AutoTokenizer``.

    Args:
        model_args: The recipe's `ModelArguments`.
        kind: ``"bert"`` or ``"gpt2"``: the class for a directory that holds both kinds of vocabulary files.

    Raises:
        FileNotFoundError: a local directory without tokenizer files, naming it.
    """
    from transformers import AutoTokenizer, BertTokenizer, GPT2Tokenizer

    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name is None:
        return None
    source = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    if not os.path.isdir(name):
        # A Hub id is "name" or "org/name"; anything else that is not a directory is a mistyped local path.
        if os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise FileNotFoundError(f"{source} {name!r} is not a directory (give a checkpoint / tokenizer "
                                    "directory or a Hub id).")
        return AutoTokenizer.from_pretrained(name)
    has = {f for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt")
           if os.path.isfile(os.path.join(name, f))}
    if has & {"tokenizer.json", "tokenizer_config.json"}:
        return AutoTokenizer.from_pretrained(name)
    bert_ok, gpt2_ok = "vocab.txt" in has, {"vocab.json", "merges.txt"} <= has
    if bert_ok and (kind == "bert" or not gpt2_ok):
        return BertTokenizer.from_pretrained(name)
    if gpt2_ok:
        return GPT2Tokenizer.from_pretrained(name)
    raise FileNotFoundError(f"{source} {name!r} has no tokenizer files (tokenizer.json, vocab.txt, or vocab.json + "
                            "merges.txt); give --tokenizer_name.")


def resolve_tokenizer(model_args, kind: str, training_texts, output_dir: str, main_process_first):
    """Tokenizer from ``--tokenizer_name``, else from ``--model_name_or_path``, else trained on the data.

    Args:
        model_args: The `common.ModelArguments` (``tokenizer_name``, ``model_name_or_path``, ``tokenizer_vocab_size``).
        kind: ``"bert"`` (WordPiece, lower-cased) or ``"gpt2"`` (byte-level BPE with ``<|endoftext|>``).
        training_texts: A callable returning an iterator of string batches (only called when training).
        output_dir: A trained tokenizer is saved in ``output_dir/tokenizer`` (and later with the checkpoint).
        main_process_first: ``TrainingArguments.main_process_first`` (rank 0 trains, the others load).

    Returns:
        A transformers tokenizer.
    """
    from transformers import BertTokenizer, GPT2Tokenizer

    named = load_named_tokenizer(model_args, kind)
    if named is not None:
        return named
    target = os.path.join(output_dir, "tokenizer")
    with main_process_first(desc="tokenizer training"):
        if not os.path.isdir(target):
            _train_tokenizer(kind, training_texts(), model_args.tokenizer_vocab_size, target)
    return BertTokenizer.from_pretrained(target) if kind == "bert" else GPT2Tokenizer.from_pretrained(target)


def _train_tokenizer(kind: str, batches, vocab_size: int, target: str) -> None:
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer

    os.makedirs(target, exist_ok=True)
    if kind == "bert":
        tok = BertWordPieceTokenizer(lowercase=True)
        tok.train_from_iterator(batches, vocab_size=vocab_size,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    elif kind == "gpt2":
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(batches, vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    else:
        raise ValueError(f"tokenizer kind {kind!r} is not 'bert' or 'gpt2'.")
    tok.save_model(target)
    logger.info("Trained a %s tokenizer (%d tokens) into %s.", kind, tok.get_vocab_size(), target)
