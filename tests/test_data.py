"""Data pipelines: local corpora, BERT NSP pairs + whole-word masking, causal-LM packing, SQuAD and EM/F1."""

import json

import pytest
import torch

from hf_sparse.data import (
    WholeWordMaskCollator,
    compute_squad,
    create_nsp_examples,
    load_documents,
    load_squad_json,
    load_squad_metric,
    normalize_answer,
    postprocess_predictions,
    prepare_eval_features,
    prepare_train_features,
    split_sentences,
    to_metric_format,
    tokenize_and_pack,
    tokenize_sentences,
)

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma",
         "##s", "##ing", "the", "a", "of", "in", "river", "city", "north", "south"]


def _wordpiece_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(path), do_lower_case=True)


def _corpus(tmp_path, n_docs=6, sentences=8):
    gen = torch.Generator().manual_seed(0)
    docs = []
    for d in range(n_docs):
        lines = []
        for s in range(sentences):
            idx = torch.randint(0, 10, (6,), generator=gen).tolist()
            lines.append(" ".join(WORDS[i] for i in idx) + f" {['river', 'city'][d % 2]}s .")
        docs.append("\n".join(lines))
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def test_text_corpus_documents_and_sentences(tmp_path):
    docs = split_sentences(load_documents(_corpus(tmp_path)))
    assert len(docs) == 6 and all(len(s) == 8 for s in docs["sentences"])
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"text": "First one. Second one! Third?"}) + "\n")
    docs = split_sentences(load_documents(str(jsonl)), one_sentence_per_line=False)
    assert docs[0]["sentences"] == ["First one.", "Second one!", "Third?"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_documents(str(tmp_path / "missing.txt"))


def test_nsp_examples_structure(tmp_path):
    tok = _wordpiece_tokenizer(tmp_path)
    docs = tokenize_sentences(split_sentences(load_documents(_corpus(tmp_path))), tok)
    ex = create_nsp_examples(docs, tok, max_seq_length=32, seed=0)
    again = create_nsp_examples(docs, tok, max_seq_length=32, seed=0)
    assert ex["input_ids"] == again["input_ids"]  # seeded, reproducible
    labels = ex["next_sentence_label"]
    assert 0 < sum(labels) < len(labels)
    for ids, types in zip(ex["input_ids"], ex["token_type_ids"]):
        assert len(ids) <= 32 and len(ids) == len(types)
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.sep_token_id) == 2
        sep = ids.index(tok.sep_token_id)
        assert types == [0] * (sep + 1) + [1] * (len(ids) - sep - 1)


def test_whole_word_masking(tmp_path):
    tok = _wordpiece_tokenizer(tmp_path)
    # "rivers" = river ##s: a whole word of two pieces that must be masked together.
    text = " ".join(["rivers", "alpha", "cities", "singing"] * 10)
    enc = tok(text, "beta gamma")
    features = [{"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"], "next_sentence_label": 1}] * 64
    collator = WholeWordMaskCollator(tok, max_predictions=5, generator=torch.Generator().manual_seed(0))
    batch = collator(features)
    ids = torch.tensor(enc["input_ids"])
    masked = batch["labels"] != -100
    assert torch.equal(batch["labels"][masked], ids.expand(64, -1)[masked])
    per_row = masked.sum(1)
    assert (per_row <= 5).all() and (per_row >= 1).all()
    cont = collator.is_continuation[ids]
    # A continuation piece is masked exactly when the piece before it is.
    assert torch.equal(masked[:, 1:][:, cont[1:]], masked[:, :-1][:, cont[1:]])
    special = torch.isin(ids, collator.special_ids)
    assert not masked[:, special].any()
    replaced = batch["input_ids"][masked]
    frac_mask = (replaced == tok.mask_token_id).float().mean()
    assert 0.6 < frac_mask < 0.95  # 80% [MASK] (10% random, 10% kept)
    assert batch["next_sentence_label"].tolist() == [1] * 64
    assert batch["attention_mask"].all()


def test_causal_lm_packing(tmp_path):
    from transformers import GPT2TokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(["alpha beta gamma delta"] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = GPT2TokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    docs = load_documents(str(_jsonl(tmp_path, ["alpha beta", "gamma delta alpha", "beta"])))
    packed = tokenize_and_pack(docs, tok, block_size=4)
    flat = [t for doc in ["alpha beta", "gamma delta alpha", "beta"] for t in tok(doc)["input_ids"] + [tok.eos_token_id]]
    assert [t for b in packed["input_ids"] for t in b] == flat[: len(flat) // 4 * 4]
    assert packed["labels"] == packed["input_ids"]
    assert all(len(b) == 4 for b in packed["input_ids"])


def _jsonl(tmp_path, texts):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_squad_metric_hand_made():
    refs = [{"id": "1", "answers": {"text": ["the Denver Broncos"], "answer_start": [0]}},
            {"id": "2", "answers": {"text": ["Santa Clara, California", "Levi's Stadium"], "answer_start": [0, 5]}},
            {"id": "3", "answers": {"text": ["1990"], "answer_start": [0]}}]
    preds = [{"id": "1", "prediction_text": "Denver Broncos!"},
             {"id": "2", "prediction_text": "in Santa Clara"},
             {"id": "3", "prediction_text": "nothing"}]
    scores = compute_squad(preds, refs)
    assert scores["exact_match"] == pytest.approx(100 / 3)
    # id 2: "in santa clara" vs "santa clara california": 2 common, p=2/3, r=2/3 -> F1 2/3.
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert normalize_answer("  An Apple, the  PIE.") == "apple pie"
    local = load_squad_metric(try_hub=False).compute(predictions=preds, references=refs)
    assert local == pytest.approx(scores)
    with pytest.raises(ValueError, match="No prediction"):
        compute_squad(preds[:1], refs)


def test_squad_features_and_postprocessing_round_trip(shared_data):
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(shared_data / "tokenizers/bert-base-uncased"))
    ds = load_squad_json(shared_data / "squad/squad-v1.1-dev-articles-00-23.json").select(range(60))
    train = ds.map(prepare_train_features, batched=True, remove_columns=ds.column_names,
                   fn_kwargs={"tokenizer": tok, "max_length": 128, "doc_stride": 32})
    assert len(train) > len(ds)  # long contexts were split into windows
    # Token positions decode back to the answer wherever the answer is inside the window.
    hits = 0
    for f in train.select(range(40)):
        if f["start_positions"]:
            span = tok.decode(f["input_ids"][f["start_positions"]: f["end_positions"] + 1])
            hits += 1
            assert span.strip() != ""
    assert hits > 0
    evalf = ds.map(prepare_eval_features, batched=True, remove_columns=ds.column_names,
                   fn_kwargs={"tokenizer": tok, "max_length": 128, "doc_stride": 32})
    # Perfect logits: put the maximum at the gold answer's tokens in the window that contains it.
    gold = train  # same tokenizer settings: the training windows are the evaluation windows
    assert len(gold) == len(evalf)
    start = torch.full((len(evalf), 128), -10.0)
    end = torch.full((len(evalf), 128), -10.0)
    for i, (s, e) in enumerate(zip(gold["start_positions"], gold["end_positions"])):
        if s:
            start[i, s], end[i, e] = 10.0, 10.0
    answers = postprocess_predictions(ds, evalf, start.numpy(), end.numpy(), max_answer_length=30)
    preds, refs = to_metric_format(answers, ds)
    scores = compute_squad(preds, refs)
    assert scores["f1"] > 90.0


def test_whitespace_only_lines_separate_documents(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first doc line one\nfirst doc line two\n \t\nsecond doc\n   \n\nthird doc\n", encoding="utf-8")
    docs = load_documents(str(path), wikitext_articles=False)
    assert docs["text"] == ["first doc line one\nfirst doc line two", "second doc", "third doc"]
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n\t\n")
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        load_documents(str(empty))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_documents([str(path), str(tmp_path / "nope.txt")])


def _wikitext(n_articles: int) -> str:
    lines = []
    for i in range(n_articles):
        lines += [" ", f" = Article {i} = ", " ", f" Article {i} opens here . It has two sentences . ", " ",
                  " = = Section = = ", " ", f" More about {i} . ", " "]
    return "\n".join(lines) + "\n"


def test_wikitext_files_split_at_article_titles(tmp_path):
    from hf_sparse.data import looks_like_wikitext

    path = tmp_path / "wiki.txt"
    text = _wikitext(3)
    path.write_text(text, encoding="utf-8")
    assert looks_like_wikitext(str(path)) and not looks_like_wikitext(str(_corpus(tmp_path)))
    docs = load_documents(str(path))  # auto: looks like WikiText
    assert len(docs) == 3 and "".join(docs["text"]) == text  # verbatim, nothing lost
    assert all(d.lstrip(" \n").startswith(f"= Article {i} =") for i, d in enumerate(docs["text"]))
    # Without the option every " " line would be a blank line: one document per paragraph.
    assert len(load_documents(str(path), wikitext_articles=False)) == 3 * 4
    sentences = split_sentences(docs, one_sentence_per_line=False)["sentences"]
    assert sentences[1] == ["Article 1 opens here .", "It has two sentences .", "More about 1 ."]  # no headings


def test_shared_wikitext_gives_articles_and_real_nsp_negatives(shared_data, tmp_path):
    docs = load_documents(str(shared_data / "text" / "wikitext-2-valid.txt"))
    assert len(docs) > 20  # one document per article, not one for the whole file
    tok = _wordpiece_tokenizer(tmp_path)
    ids = tokenize_sentences(split_sentences(docs, one_sentence_per_line=False), tok)
    examples = create_nsp_examples(ids, tok, max_seq_length=64, seed=0)
    labels = examples["next_sentence_label"]
    assert 0.3 < sum(labels) / len(labels) < 0.7  # random next segments come from other articles
