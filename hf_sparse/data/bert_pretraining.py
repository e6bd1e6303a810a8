"""BERT phase-1 pre-training data: sentence pairs with next-sentence labels, and whole-word masking.

The pipeline follows BERT's original data creation (as used by the DynSparse paper's phase-1 runs, sequence
length 128 with at most 20 predictions):

1. `tokenize_sentences`: every sentence of every document to WordPiece ids (``datasets.map``, batched,
   cached, parallel with ``num_proc``).
2. `create_nsp_examples`: documents are cut into segments of about ``max_seq_length`` tokens; each segment is
   split into A and B at a random sentence boundary, and half of the time B is replaced by text from another
   document (``next_sentence_label=1``). The random document is drawn from the same ``datasets.map`` batch
   (1,000 documents by default), which keeps the step parallel and cacheable. Randomness is seeded per batch
   from the seed and the batch's first row index, so results do not depend on ``num_proc``.
3. `WholeWordMaskCollator`: dynamic whole-word masking at batch time (15% of tokens, whole WordPiece words,
   at most 20 per sequence; 80% ``[MASK]``, 10% random token, 10% unchanged), fully vectorised over the batch.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence

import datasets
import torch

from ..structure import derive_seed


def _tokenize_batch(batch, tokenizer) -> dict:
    flat = [s for doc in batch["sentences"] for s in doc]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, pos = [], 0
    for doc in batch["sentences"]:
        out.append([s for s in ids[pos : pos + len(doc)] if s])
        pos += len(doc)
    return {"sentence_ids": out}


def tokenize_sentences(docs: datasets.Dataset, tokenizer, num_proc: Optional[int] = None) -> datasets.Dataset:
    """Tokenizes the ``sentences`` column into ``sentence_ids`` (list of lists of token ids per document).

    Args:
        docs: Dataset with a ``sentences`` column (see `hf_sparse.data.split_sentences`).
        tokenizer: A BERT (WordPiece) tokenizer.
        num_proc: Worker processes for ``datasets.map``.

    Returns:
        A dataset with one ``sentence_ids`` column.
    """
    return docs.map(
        _tokenize_batch, batched=True, num_proc=num_proc, remove_columns=docs.column_names,
        fn_kwargs={"tokenizer": tokenizer}, desc="Tokenizing sentences",
    )


def _truncate_pair(a: List[int], b: List[int], max_tokens: int, rng: random.Random) -> None:
    # Trim the longer side, from the front or the back at random, so no position is favoured.
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]


def _nsp_batch(batch, indices, *, max_seq_length, short_seq_prob, nsp_probability, seed, cls_id, sep_id) -> dict:
    rng = random.Random(derive_seed(seed, "nsp", indices[0] if indices else 0))
    docs = batch["sentence_ids"]
    max_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    out: Dict[str, list] = {"input_ids": [], "token_type_ids": [], "next_sentence_label": []}
    for d, doc in enumerate(docs):
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk: List[List[int]] = []
        length, j = 0, 0
        while j < len(doc):
            chunk.append(doc[j])
            length += len(doc[j])
            if j == len(doc) - 1 or length >= target:
                a_end = 1 if len(chunk) < 2 else rng.randint(1, len(chunk) - 1)
                tokens_a = [t for s in chunk[:a_end] for t in s]
                random_next = len(docs) > 1 and (len(chunk) == 1 or rng.random() < nsp_probability)
                if random_next:
                    other = rng.randrange(len(docs) - 1)
                    other += other >= d  # any document but this one
                    other_doc = docs[other]
                    tokens_b: List[int] = []
                    for s in other_doc[rng.randrange(len(other_doc)) :] if other_doc else []:
                        tokens_b.extend(s)
                        if len(tokens_b) >= target - len(tokens_a):
                            break
                    j -= len(chunk) - a_end  # the unused sentences of this chunk start the next one
                else:
                    tokens_b = [t for s in chunk[a_end:] for t in s]
                if tokens_a and tokens_b:
                    _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
                    out["input_ids"].append([cls_id] + tokens_a + [sep_id] + tokens_b + [sep_id])
                    out["token_type_ids"].append([0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1))
                    out["next_sentence_label"].append(int(random_next))
                chunk, length = [], 0
            j += 1
    return out


def create_nsp_examples(
    tokenized: datasets.Dataset,
    tokenizer,
    max_seq_length: int = 128,
    short_seq_prob: float = 0.1,
    nsp_probability: float = 0.5,
    seed: int = 0,
    num_proc: Optional[int] = None,
    batch_size: int = 1000,
) -> datasets.Dataset:
    """Builds sentence-pair examples with next-sentence labels from tokenized documents.

    Args:
        tokenized: Output of `tokenize_sentences`.
        tokenizer: The tokenizer (for ``[CLS]`` / ``[SEP]`` ids).
        max_seq_length: Length of a full example including special tokens (128 in BERT phase 1).
        short_seq_prob: Probability of a shorter target length, so the model also sees short inputs.
        nsp_probability: Probability that segment B comes from another document (label 1).
        seed: Seed of the random choices.
        num_proc: Worker processes for ``datasets.map``.
        batch_size: Documents per ``map`` batch; random B segments are drawn within a batch.

    Returns:
        A dataset with ``input_ids``, ``token_type_ids`` and ``next_sentence_label``.

    Example:
        >>> examples = create_nsp_examples(tokenize_sentences(split_sentences(docs), tok), tok)
    """
    if max_seq_length < 8:
        raise ValueError(f"max_seq_length={max_seq_length} is too short for sentence pairs.")
    if not 0.0 <= nsp_probability <= 1.0:
        raise ValueError(f"nsp_probability={nsp_probability!r} must be in [0, 1].")
    kwargs = dict(max_seq_length=max_seq_length, short_seq_prob=short_seq_prob, nsp_probability=nsp_probability,
                  seed=seed, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id)
    return tokenized.map(
        _nsp_batch, batched=True, with_indices=True, batch_size=batch_size, num_proc=num_proc,
        remove_columns=tokenized.column_names, fn_kwargs=kwargs, desc="Creating NSP sentence pairs",
    )


class WholeWordMaskCollator:
    """Pads sentence-pair examples and applies whole-word masking, vectorised over the batch.

    Produces ``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels`` (``-100`` except at masked
    positions) and, when present in the features, ``next_sentence_label`` — exactly what
    ``BertForPreTraining`` takes.

    Args:
        tokenizer: A WordPiece tokenizer (continuation pieces start with ``##``).
        mlm_probability: Fraction of (non-special) tokens to predict.
        max_predictions: Cap on predictions per sequence (20 in BERT phase 1).
        generator: Optional ``torch.Generator``; the global RNG (seeded by the Trainer) otherwise.

    Example:
        >>> batch = WholeWordMaskCollator(tokenizer)([examples[0], examples[1]])
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, max_predictions: int = 20,
                 generator: Optional[torch.Generator] = None) -> None:
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={mlm_probability!r} must be in (0, 1).")
        if max_predictions < 1:
            raise ValueError(f"max_predictions={max_predictions!r} must be >= 1.")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.max_predictions = max_predictions
        self.generator = generator
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.is_continuation = torch.tensor([t is not None and t.startswith("##") for t in vocab])
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.vocab_size = len(tokenizer)

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        batch, width = len(features), int(lengths.max())
        ids = torch.full((batch, width), self.tokenizer.pad_token_id, dtype=torch.long)
        types = torch.zeros((batch, width), dtype=torch.long)
        for i, f in enumerate(features):  # padding: one copy per example, not per token
            ids[i, : lengths[i]] = torch.as_tensor(f["input_ids"])
            if "token_type_ids" in f:
                types[i, : lengths[i]] = torch.as_tensor(f["token_type_ids"])
        attention = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)

        maskable = attention & ~torch.isin(ids, self.special_ids)
        starts = maskable & ~self.is_continuation[ids]
        word = (starts.cumsum(1) - 1).clamp(min=0)  # word index of every token (continuations join their start)
        n_words = starts.sum(1, keepdim=True)
        n_pred = (maskable.sum(1, keepdim=True) * self.mlm_probability).round().clamp(1, self.max_predictions)
        # Shuffle each row's words, then take whole words while the running token count stays within n_pred.
        keys = self._rand(batch, width).masked_fill(torch.arange(width) >= n_words, float("inf"))
        order = keys.argsort(dim=1)
        word_len = torch.zeros((batch, width), dtype=torch.long).scatter_add_(1, word, maskable.long())
        chosen_sorted = word_len.gather(1, order).cumsum(1) <= n_pred
        chosen_sorted &= torch.arange(width) < n_words
        chosen_word = torch.zeros((batch, width), dtype=torch.bool).scatter_(1, order, chosen_sorted)
        masked = chosen_word.gather(1, word) & maskable

        labels = ids.masked_fill(~masked, -100)
        r = self._rand(batch, width)
        inputs = ids.masked_fill(masked & (r < 0.8), self.tokenizer.mask_token_id)
        random_tokens = torch.randint(self.vocab_size, (batch, width), generator=self.generator)
        inputs = torch.where(masked & (r >= 0.8) & (r < 0.9), random_tokens, inputs)
        out = {"input_ids": inputs, "token_type_ids": types, "attention_mask": attention.long(), "labels": labels}
        if "next_sentence_label" in features[0]:
            out["next_sentence_label"] = torch.tensor([f["next_sentence_label"] for f in features])
        return out
