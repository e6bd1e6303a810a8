"""``hf-sparse quickstart``: the whole workflow offline in about a minute on a CPU.

Pre-trains a tiny DynSparse BERT (MLM + NSP, whole-word masking) on a SYNTHETIC corpus generated here from a
small made-up grammar (no copied text), saves it as an hf_sparse checkpoint, reloads it with
`hf_sparse.from_pretrained`, fine-tunes it with fixed masks on a synthetic SQuAD-format question-answering set
and prints a short report. The same generators give the recipe tests data that always exists.

Example:
    >>> from hf_sparse.cli.quickstart_run import synthetic_documents
    >>> synthetic_documents(2, seed=0)[0][:2]
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)

# A made-up world: every fact is a (creature, verb, place / thing) triple. Words are ordinary English so a
# WordPiece / BPE tokenizer trained on the corpus has something to split.
_CREATURES = ["otter", "heron", "badger", "lynx", "falcon", "beaver", "marten", "ibis", "gecko", "tapir",
              "walrus", "condor", "ferret", "jackal", "puffin", "salamander", "tortoise", "weasel"]
_PLACES = ["the river", "the marsh", "the hills", "the forest", "the desert", "the valley", "the canyon",
           "the island", "the meadow", "the glacier", "the lagoon", "the orchard"]
_FOODS = ["berries", "fish", "beetles", "seeds", "roots", "snails", "acorns", "crabs", "mushrooms", "worms"]
_COLOURS = ["grey", "brown", "golden", "spotted", "striped", "silver", "black", "russet"]
_TIMES = ["at dawn", "at night", "in winter", "after rain", "in spring", "at noon"]


def _fact(rng: random.Random) -> Dict[str, str]:
    return {"creature": rng.choice(_CREATURES), "place": rng.choice(_PLACES), "food": rng.choice(_FOODS),
            "colour": rng.choice(_COLOURS), "time": rng.choice(_TIMES)}


def _sentences(f: Dict[str, str], rng: random.Random) -> List[str]:
    out = [f"The {f['colour']} {f['creature']} lives near {f['place']}.",
           f"It eats {f['food']} {f['time']}.",
           f"Travellers often see the {f['creature']} close to {f['place']}.",
           f"Its {f['colour']} coat hides it well {f['time']}.",
           f"When {f['food']} are scarce, the {f['creature']} moves further from {f['place']}."]
    # Keep the first sentence (the topic) and shuffle the rest a little, so documents are not all identical.
    rest = out[1:]
    rng.shuffle(rest)
    return [out[0], *rest[: rng.randint(2, 4)]]


def synthetic_documents(num_docs: int, seed: int = 0, facts_per_doc: int = 3) -> List[List[str]]:
    """SYNTHETIC documents (lists of sentences) about made-up facts; deterministic given ``seed``."""
    if num_docs < 1:
        raise ValueError(f"num_docs={num_docs!r} must be >= 1.")
    rng = random.Random(seed)
    return [[s for _ in range(facts_per_doc) for s in _sentences(_fact(rng), rng)] for _ in range(num_docs)]


def write_synthetic_text(path: str, num_docs: int, seed: int = 0) -> str:
    """Writes a synthetic corpus in BERT's format: one sentence per line, a blank line between documents."""
    docs = synthetic_documents(num_docs, seed)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n\n".join("\n".join(d) for d in docs) + "\n")
    return path


def write_synthetic_jsonl(path: str, num_docs: int, seed: int = 0) -> str:
    """Writes a synthetic corpus as JSON lines with a ``text`` field (the Pile's format)."""
    with open(path, "w", encoding="utf-8") as fh:
        for doc in synthetic_documents(num_docs, seed):
            fh.write(json.dumps({"text": " ".join(doc)}) + "\n")
    return path


def synthetic_squad(num_articles: int, seed: int = 0, paragraphs: int = 3) -> Dict[str, Any]:
    """A SYNTHETIC SQuAD v1.1-format dataset: questions whose answers are spans of generated paragraphs."""
    rng = random.Random(seed)
    data = []
    for a in range(num_articles):
        paras = []
        for p in range(paragraphs):
            f = _fact(rng)
            context = " ".join(_sentences(f, rng)[:1] + [f"It eats {f['food']} {f['time']}."])
            qas = []
            for k, (question, answer) in enumerate([
                (f"Where does the {f['creature']} live?", f["place"]),
                (f"What does the {f['creature']} eat?", f["food"]),
                (f"What colour is the {f['creature']}?", f["colour"]),
            ]):
                start = context.index(answer)
                qas.append({"id": f"syn-{seed}-{a}-{p}-{k}", "question": question,
                            "answers": [{"text": answer, "answer_start": start}]})
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"Synthetic article {a}", "paragraphs": paras})
    return {"version": "1.1-synthetic", "data": data}


def run_quickstart(output_dir: Optional[str] = None, pretrain_steps: int = 200, finetune_steps: int = 60,
                   seed: int = 0) -> Dict[str, Any]:
    """Pre-trains, saves, reloads and fine-tunes a tiny DynSparse BERT on synthetic data; returns the report.

    Args:
        output_dir: Where checkpoints go (a temporary directory by default).
        pretrain_steps: DynSparse pre-training steps.
        finetune_steps: Sparse (fixed-mask) SQuAD-format fine-tuning steps.
        seed: Seed of data, masks and training.

    Returns:
        A dict with the pre-training and fine-tuning metrics, densities and checkpoint paths.
    """
    import datasets
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizer, TrainingArguments
    from transformers import default_data_collator
    from transformers.trainer_callback import PrinterCallback

    from ..checkpoint import from_pretrained, save_pretrained
    from ..config import DynamicSparsityConfig, SparsityConfig
    from ..data import (
        WholeWordMaskCollator, compute_squad, create_nsp_examples, postprocess_predictions, prepare_eval_features,
        prepare_train_features, to_metric_format, tokenize_sentences,
    )
    from ..heads import BertForPreTrainingMasked
    from ..patching import sparse_modules
    from ..trainer import SparseTrainer

    start = time.perf_counter()
    out = output_dir or tempfile.mkdtemp(prefix="hf_sparse_quickstart_")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    docs = synthetic_documents(400, seed)
    tok_dir = os.path.join(out, "tokenizer")
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator((" ".join(d) for d in docs), vocab_size=400,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    os.makedirs(tok_dir, exist_ok=True)
    wp.save_model(tok_dir)
    tokenizer = BertTokenizer.from_pretrained(tok_dir)

    sentences = datasets.Dataset.from_dict({"sentences": docs})
    pairs = create_nsp_examples(tokenize_sentences(sentences, tokenizer), tokenizer, max_seq_length=64, seed=seed)
    split = pairs.train_test_split(test_size=0.1, seed=seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    model = BertForPreTrainingMasked(config)
    sparsity = SparsityConfig(sparsity=0.8, init="truncated_normal", seed=seed)
    dynamic = DynamicSparsityConfig(algorithm="dynsparse", num_updates=8, prune_ratio=0.5)
    args = dict(per_device_train_batch_size=16, learning_rate=2e-3, warmup_steps=0.1, weight_decay=0.01,
                adam_epsilon=1e-6, max_grad_norm=1.0, use_cpu=True, report_to="none", save_strategy="no",
                logging_strategy="no", disable_tqdm=True, seed=seed)
    trainer = SparseTrainer(model=model, args=TrainingArguments(os.path.join(out, "pretrain-run"),
                                                                max_steps=pretrain_steps, **args),
                            train_dataset=split["train"], data_collator=WholeWordMaskCollator(tokenizer),
                            sparsity_config=sparsity, dynamic_config=dynamic)
    trainer.model_accepts_loss_kwargs = False  # the loss is a mean (see recipes/common.make_trainer)
    trainer.remove_callback(PrinterCallback)  # the report is the output
    before = _mlm_nsp(model, split["test"], tokenizer, seed)
    trainer.train()
    after = _mlm_nsp(model, split["test"], tokenizer, seed)
    layers = trainer.sparsity_callback.controller.layer_metrics()
    numel = {n: m.weight_mask.numel() for n, m in sparse_modules(model).items()}
    dof = sum(layers[n]["dof"] * numel[n] for n in numel) / sum(numel.values())
    density = sum(layers[n]["density"] * numel[n] for n in numel) / sum(numel.values())
    model.config.architectures = ["BertForPreTraining"]
    ckpt = os.path.join(out, "bert-tiny-dynsparse")
    save_pretrained(model, ckpt, dynamic_config=dynamic, tokenizer=tokenizer,
                    training_stats={"step": pretrain_steps, "dof": dof, "density": density},
                    card_info={"model_name": "bert-tiny-dynsparse-quickstart (synthetic data)"})

    qa = from_pretrained(BertForQuestionAnswering, ckpt)
    masks_before = {n: m.weight_mask.clone() for n, m in sparse_modules(qa).items()}
    squad_train = _squad_dataset(synthetic_squad(60, seed + 1))
    squad_eval = _squad_dataset(synthetic_squad(6, seed + 2))
    fn = dict(tokenizer=tokenizer, max_length=64, doc_stride=16)
    train_feats = squad_train.map(prepare_train_features, batched=True, fn_kwargs=fn,
                                  remove_columns=squad_train.column_names)
    eval_feats = squad_eval.map(prepare_eval_features, batched=True, fn_kwargs=fn,
                                remove_columns=squad_eval.column_names)
    ft = SparseTrainer(model=qa, args=TrainingArguments(os.path.join(out, "finetune-run"), max_steps=finetune_steps,
                                                         **{**args, "learning_rate": 3e-3}),
                       train_dataset=train_feats, data_collator=default_data_collator,
                       dynamic_config=DynamicSparsityConfig(algorithm="static"))
    ft.model_accepts_loss_kwargs = False
    ft.remove_callback(PrinterCallback)
    ft.train()
    pred = ft.predict(eval_feats.remove_columns(["example_id", "offset_mapping"])).predictions
    answers = postprocess_predictions(squad_eval, eval_feats, pred[0], pred[1])
    scores = compute_squad(*to_metric_format(answers, squad_eval))
    kept = all(torch.equal(masks_before[n], m.weight_mask) for n, m in sparse_modules(qa).items())
    return {"output_dir": out, "checkpoint": ckpt, "mlm_loss_before": before[0], "mlm_loss_after": after[0],
            "nsp_loss_before": before[1], "nsp_loss_after": after[1], "density": density, "dof": dof,
            "exact_match": scores["exact_match"], "f1": scores["f1"], "masks_fixed_in_finetuning": kept,
            "vocab_size": len(tokenizer), "seconds": time.perf_counter() - start}


def _squad_dataset(raw: Dict[str, Any]):
    import datasets

    rows: Dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in raw["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article["title"])
                rows["context"].append(para["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [a["answer_start"] for a in qa["answers"]]})
    return datasets.Dataset.from_dict(rows)


def _mlm_nsp(model, examples, tokenizer, seed: int):
    import torch
    import torch.nn.functional as F

    from ..data import WholeWordMaskCollator

    model.eval()
    batch = WholeWordMaskCollator(tokenizer, generator=torch.Generator().manual_seed(seed))(list(examples))
    labels, nsp = batch.pop("labels"), batch.pop("next_sentence_label")
    with torch.no_grad():
        out = model(**batch, labels=labels)
    model.train()
    return (float(F.cross_entropy(out.prediction_logits, labels[labels != -100])),
            float(F.cross_entropy(out.seq_relationship_logits, nsp)))


def format_report(r: Dict[str, Any]) -> str:
    """The quickstart report as a few lines of text."""
    return "\n".join([
        "hf-sparse quickstart (SYNTHETIC data generated by hf_sparse; no real text)",
        f"  pre-training  tiny DynSparse BERT: density {r['density']:.3f}, explored DOF {r['dof']:.3f}",
        f"                MLM loss {r['mlm_loss_before']:.3f} -> {r['mlm_loss_after']:.3f} "
        f"(uniform guess {math.log(r['vocab_size']):.3f}), "
        f"NSP loss {r['nsp_loss_before']:.3f} -> {r['nsp_loss_after']:.3f}",
        f"  checkpoint    {r['checkpoint']} (hf_sparse format; `hf-sparse inspect` it)",
        f"  fine-tuning   synthetic SQuAD-format QA, masks fixed: {r['masks_fixed_in_finetuning']}; "
        f"EM {r['exact_match']:.1f}, F1 {r['f1']:.1f}",
        f"  time          {r['seconds']:.0f}s",
    ])
