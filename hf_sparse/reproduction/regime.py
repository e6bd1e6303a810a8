"""The data regime of the reproduction study: real text, a small trained vocabulary, held-out evaluation.

Why this regime (the README of the study, REPRODUCTION.md, says the same): the last calibration on this machine
(BERT-Mini, 30k WordPiece vocabulary) stayed in the unigram regime, where the embeddings hold most parameters and a
larger model barely helps. Here

* the text is real and varied: the shared WikiText-2 validation articles, 2.8 MB of Project Gutenberg books and the
  Pile-format arXiv sample (about 1.3 M words in all);
* the vocabulary is a byte-level BPE of ``vocab_size`` tokens (2,048 by default) trained on the training documents
  only, so the transformer layers, not the embeddings, hold most of the parameters the claims are about;
* documents, not blocks, are split into train and evaluation (every ``eval_every``-th document), so evaluation text is
  never trained on; the evaluation blocks and their MLM masks are fixed once, so every arm is scored on exactly the
  same positions.

Everything is cached under ``cache_dir`` keyed by a hash of the settings and the input files' sizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

#: Special tokens of the trained vocabulary (ids 0, 1, 2).
PAD, EOS, MASK = "<pad>", "<eos>", "<mask>"

# A WikiText article starts at a level-1 heading line " = Title = " (level 2 is " = = Section = = ").
_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


@dataclass(frozen=True)
class CorpusSettings:
    """How the study's corpus is built.

    Args:
        vocab_size: Size of the byte-level BPE vocabulary trained on the training documents.
        seq_len: Tokens per block (model context).
        eval_every: Every ``eval_every``-th document is held out for evaluation.
        eval_blocks: Number of evaluation blocks scored by every arm.
        max_chars: Read at most this many characters per source file (``None``: all); the smoke suite uses it.
        mlm_probability: Fraction of evaluation positions masked for the MLM loss (80/10/10 as in BERT).
    """

    vocab_size: int = 2048
    seq_len: int = 64
    eval_every: int = 10
    eval_blocks: int = 256
    max_chars: Optional[int] = None
    mlm_probability: float = 0.15

    def __post_init__(self):
        if self.vocab_size < 260:
            raise ValueError(f"vocab_size must be >= 260 (256 bytes + specials), got {self.vocab_size}.")
        if self.seq_len < 8 or self.eval_every < 2 or self.eval_blocks < 1:
            raise ValueError(f"Bad corpus settings: {self}.")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}.")


@dataclass
class Corpus:
    """Token blocks of the study: ``train`` ``[N, seq_len]``, ``eval`` ``[E, seq_len]`` and the fixed MLM
    evaluation inputs / labels (``-100`` where not scored)."""

    key: str
    vocab_size: int
    train: torch.Tensor
    eval: torch.Tensor
    eval_mlm_inputs: torch.Tensor
    eval_mlm_labels: torch.Tensor
    stats: Dict[str, int]

    pad_id: int = 0
    eos_id: int = 1
    mask_id: int = 2


def _read(path: Path, max_chars: Optional[int]) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read(max_chars) if max_chars else fh.read()


def split_wikitext(text: str) -> List[str]:
    """Articles of a WikiText file: a new one starts at every level-1 ``" = Title = "`` heading line."""
    docs: List[List[str]] = []
    for line in text.splitlines():
        if _WIKITEXT_TITLE.match(line) or not docs:
            docs.append([])
        if line.strip():
            docs[-1].append(line.strip())
    return [" ".join(d) for d in docs if d]


def split_paragraph_runs(text: str, paragraphs_per_doc: int = 40) -> List[str]:
    """Documents of ``paragraphs_per_doc`` consecutive blank-line-separated paragraphs (books have no other marks)."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    return [" ".join(paras[i:i + paragraphs_per_doc]) for i in range(0, len(paras), paragraphs_per_doc)]


def load_study_documents(data_dir: Path, max_chars: Optional[int] = None) -> List[str]:
    """All documents of the study, in a fixed order: WikiText articles, book chunks, arXiv papers."""
    files = {
        "wikitext": data_dir / "text" / "wikitext-2-valid.txt",
        "books": data_dir / "text" / "gutenberg-sample.txt",
        "arxiv": data_dir / "pile" / "arxiv-sample.jsonl",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"The reproduction study reads the shared data files; missing: {missing}. "
                                "Pass --data_dir pointing at the shared data folder.")
    docs = split_wikitext(_read(files["wikitext"], max_chars))
    docs += split_paragraph_runs(_read(files["books"], max_chars))
    with open(files["arxiv"], encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line).get("text") or ""
            docs.append(" ".join(text[:max_chars].split()) if max_chars else " ".join(text.split()))
    return [d for d in docs if d]


def _fingerprint(settings: CorpusSettings, data_dir: Path) -> str:
    sizes = sorted((p.name, p.stat().st_size) for p in data_dir.rglob("*") if p.is_file() and p.suffix in
                   {".txt", ".jsonl"})
    blob = json.dumps({"settings": asdict(settings), "files": sizes, "format": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _train_tokenizer(train_docs: List[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, MASK], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_docs, trainer=trainer)
    return tok


def _blocks(token_docs: List[List[int]], eos_id: int, seq_len: int) -> torch.Tensor:
    flat = torch.tensor([t for doc in token_docs for t in doc + [eos_id]], dtype=torch.int64)
    n = flat.numel() // seq_len
    return flat[: n * seq_len].view(n, seq_len)


def mask_for_mlm(blocks: torch.Tensor, vocab_size: int, probability: float, generator: torch.Generator,
                 mask_id: int = 2, first_regular_id: int = 3):
    """BERT's masking (Devlin et al. 2019, arXiv:1810.04805): ``probability`` of the positions are scored; of those
    80% become ``mask_id``, 10% a random regular token, 10% stay. Vectorised over the whole tensor.

    Returns:
        ``(inputs, labels)`` with ``labels == -100`` where a position is not scored.
    """
    scored = torch.rand(blocks.shape, generator=generator) < probability
    action = torch.rand(blocks.shape, generator=generator)
    random_tokens = torch.randint(first_regular_id, vocab_size, blocks.shape, generator=generator)
    inputs = blocks.clone()
    inputs[scored & (action < 0.8)] = mask_id
    swap = scored & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_tokens[swap]
    labels = torch.where(scored, blocks, torch.full_like(blocks, -100))
    return inputs, labels


def build_corpus(settings: CorpusSettings, data_dir: os.PathLike, cache_dir: os.PathLike) -> Corpus:
    """Builds (or loads from ``cache_dir``) the study's corpus.

    Args:
        settings: The corpus settings.
        data_dir: The shared data folder (``text/``, ``pile/``).
        cache_dir: Where the tokenizer and token blocks are cached.

    Returns:
        The `Corpus`.

    Example:
        >>> corpus = build_corpus(CorpusSettings(), "../shared/data", "out/cache")
        >>> corpus.train.shape   # [blocks, seq_len]
    """
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    key = _fingerprint(settings, data_dir)
    folder = cache_dir / f"corpus-{key}"
    tensors_file, stats_file = folder / "blocks.safetensors", folder / "stats.json"
    if tensors_file.is_file() and stats_file.is_file():
        t = load_file(str(tensors_file))
        stats = json.loads(stats_file.read_text())
        return Corpus(key, stats["vocab_size"], t["train"], t["eval"], t["eval_mlm_inputs"], t["eval_mlm_labels"],
                      stats)
    docs = load_study_documents(data_dir, settings.max_chars)
    eval_docs = docs[settings.eval_every - 1:: settings.eval_every]
    train_docs = [d for i, d in enumerate(docs) if (i + 1) % settings.eval_every]
    tok = _train_tokenizer(train_docs, settings.vocab_size)
    eos_id = tok.token_to_id(EOS)
    encode = lambda texts: [e.ids for e in tok.encode_batch(texts)]  # noqa: E731
    train = _blocks(encode(train_docs), eos_id, settings.seq_len)
    evaluation = _blocks(encode(eval_docs), eos_id, settings.seq_len)
    if evaluation.shape[0] < settings.eval_blocks:
        raise ValueError(f"Only {evaluation.shape[0]} evaluation blocks of {settings.seq_len} tokens; lower "
                         f"eval_blocks ({settings.eval_blocks}) or seq_len.")
    # Evenly spaced evaluation blocks cover every held-out source, not only the first one.
    pick = torch.linspace(0, evaluation.shape[0] - 1, settings.eval_blocks).round().long()
    evaluation = evaluation[pick].contiguous()
    gen = torch.Generator().manual_seed(1234)
    mlm_inputs, mlm_labels = mask_for_mlm(evaluation, tok.get_vocab_size(), settings.mlm_probability, gen)
    stats = {"vocab_size": tok.get_vocab_size(), "documents": len(docs), "train_documents": len(train_docs),
             "eval_documents": len(eval_docs), "train_tokens": int(train.numel()),
             "eval_tokens": int(evaluation.numel())}
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    tmp = folder / "blocks.safetensors.tmp"
    save_file({"train": train, "eval": evaluation, "eval_mlm_inputs": mlm_inputs, "eval_mlm_labels": mlm_labels},
              str(tmp))
    os.replace(tmp, tensors_file)
    stats_file.write_text(json.dumps(stats, indent=1))
    logger.info("Built the study corpus %s: %s", key, stats)
    return Corpus(key, stats["vocab_size"], train, evaluation, mlm_inputs, mlm_labels, stats)
