"""``hf-sparse quickstart``: the whole workflow offline in a couple of minutes on a CPU.

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
import sys
import time
from typing import Any, Dict, List

logger = logging.getLogger(__name__)

#: Default of `hf-sparse quickstart --output_dir`: a folder under the current directory.
DEFAULT_OUTPUT_DIR = "hf_sparse_quickstart"

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
    """A SYNTHETIC SQuAD v1.1-format dataset: questions whose answers are spans of generated paragraphs.

    Every paragraph describes two different creatures with different places, foods and colours, and its three
    questions name one of them, so a reader has to match the creature in the question: a reader that finds
    the right kind of answer but picks the creature at random scores about 50 EM (`QA_BASELINE_EM`).
    """
    rng = random.Random(seed)
    data = []
    for a in range(num_articles):
        paras = []
        for p in range(paragraphs):
            picks = {key: rng.sample(pool, 2) for key, pool in (("creature", _CREATURES), ("place", _PLACES),
                                                                 ("food", _FOODS), ("colour", _COLOURS))}
            facts = [{key: picks[key][i] for key in picks} for i in range(2)]
            context = " ".join(f"The {f['colour']} {f['creature']} lives near {f['place']}. "
                               f"The {f['creature']} eats {f['food']}." for f in facts)
            asked = [(f, kind) for f in facts for kind in ("place", "food", "colour")]
            qas = []
            for k, (f, kind) in enumerate(rng.sample(asked, 3)):
                question = {"place": f"Where does the {f['creature']} live?",
                            "food": f"What does the {f['creature']} eat?",
                            "colour": f"What colour is the {f['creature']}?"}[kind]
                answer = f[kind]
                start = context.index(f" {answer} " if kind == "colour" else answer)
                start += kind == "colour"  # the colour is matched with its spaces: skip the leading one
                qas.append({"id": f"syn-{seed}-{a}-{p}-{k}", "question": question,
                            "answers": [{"text": answer, "answer_start": start}]})
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"Synthetic article {a}", "paragraphs": paras})
    return {"version": "1.1-synthetic", "data": data}


#: EM of a reader that finds the right kind of answer in a `synthetic_squad` paragraph but picks one of its two
#: creatures at random.
QA_BASELINE_EM = 50.0


class _Progress:
    """Names each phase on stderr and draws a tqdm bar for the long ones (the report itself goes to stdout)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.times: Dict[str, float] = {}

    def bar(self, desc: str, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", disable=not self.enabled, dynamic_ncols=True,
                    leave=True, file=sys.stderr)

    def done(self, phase: str, since: float) -> None:
        self.times[phase] = time.perf_counter() - since
        if self.enabled:
            print(f"{phase}: done in {self.times[phase]:.1f}s", file=sys.stderr, flush=True)


def _step_bar_callback(progress: _Progress, desc: str):
    """A `TrainerCallback` that advances a named tqdm bar per optimizer step and shows the latest loss."""
    from transformers import TrainerCallback

    class StepBar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress.bar(desc, state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return StepBar()


def run_quickstart(output_dir: str = DEFAULT_OUTPUT_DIR, pretrain_steps: int = 120, finetune_steps: int = 80,
                   seed: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Pre-trains, saves, reloads and fine-tunes a tiny DynSparse BERT on synthetic data; returns the report.

    Args:
        output_dir: Where the tokenizer, the pre-trained checkpoint and the two Trainer runs go (created).
        pretrain_steps: DynSparse pre-training steps.
        finetune_steps: Sparse (fixed-mask) SQuAD-format fine-tuning steps.
        seed: Seed of data, masks and training.
        progress: Name every phase and draw progress bars for the training phases on stderr.

    Returns:
        A dict with the pre-training and fine-tuning metrics, their baselines, densities, the checkpoint path,
        the reload check and the seconds spent per phase.

    Example:
        >>> report = run_quickstart("hf_sparse_quickstart", pretrain_steps=20, finetune_steps=20)
        >>> print(format_report(report))
    """
    import torch

    # The model's matrices are 64 wide: extra intra-op threads only add synchronisation, and on a busy 2-core
    # machine OpenMP's spinning threads made a step over 10x slower (4.2 s vs 0.33 s) than one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(output_dir, pretrain_steps, finetune_steps, seed, _Progress(progress))
    finally:
        torch.set_num_threads(threads)


def _run(output_dir: str, pretrain_steps: int, finetune_steps: int, seed: int, prog: _Progress) -> Dict[str, Any]:
    start = time.perf_counter()
    import datasets
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizer, TrainingArguments
    from transformers import default_data_collator
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..checkpoint import from_pretrained, save_pretrained
    from ..config import DynamicSparsityConfig, SparsityConfig
    from ..data import (
        WholeWordMaskCollator, compute_squad, create_nsp_examples, postprocess_predictions, prepare_eval_features,
        prepare_train_features, to_metric_format, tokenize_sentences,
    )
    from ..heads import BertForPreTrainingMasked
    from ..patching import sparse_modules
    from ..trainer import SparseTrainer

    prog.done("loading libraries", start)
    t = time.perf_counter()
    out = os.path.abspath(output_dir)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    docs = synthetic_documents(300, seed)
    tok_dir = os.path.join(out, "tokenizer")
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator((" ".join(d) for d in docs), vocab_size=400, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    os.makedirs(tok_dir, exist_ok=True)
    wp.save_model(tok_dir)
    tokenizer = BertTokenizer.from_pretrained(tok_dir)
    sentences = datasets.Dataset.from_dict({"sentences": docs})
    pairs = create_nsp_examples(tokenize_sentences(sentences, tokenizer), tokenizer, max_seq_length=64, seed=seed)
    split = pairs.train_test_split(test_size=0.1, seed=seed)
    prog.done("synthetic corpus and WordPiece tokenizer", t)

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    model = BertForPreTrainingMasked(config)
    sparsity = SparsityConfig(sparsity=0.8, init="truncated_normal", seed=seed)
    dynamic = DynamicSparsityConfig(algorithm="dynsparse", num_updates=6, prune_ratio=0.5)
    # Logging every 10 steps feeds the bars' loss display; nothing is printed (PrinterCallback is removed).
    args = dict(per_device_train_batch_size=16, learning_rate=5e-3, warmup_steps=0.1, weight_decay=0.01,
                adam_epsilon=1e-6, max_grad_norm=1.0, use_cpu=True, report_to="none", save_strategy="no",
                logging_strategy="steps", logging_steps=10, disable_tqdm=True, seed=seed)

    def trainer(model, run: str, steps: int, desc: str, **kwargs) -> SparseTrainer:
        tr = SparseTrainer(model=model, args=TrainingArguments(os.path.join(out, run), max_steps=steps,
                                                               **{**args, **kwargs.pop("args", {})}), **kwargs)
        tr.model_accepts_loss_kwargs = False  # the loss is a mean (see recipes/common.make_trainer)
        for cb in (PrinterCallback, ProgressCallback):  # the named bar below and the report are the output
            tr.remove_callback(cb)
        tr.add_callback(_step_bar_callback(prog, desc))
        return tr

    pt = trainer(model, "pretrain-run", pretrain_steps, "pre-training (DynSparse, MLM + NSP)",
                 train_dataset=split["train"], data_collator=WholeWordMaskCollator(tokenizer),
                 sparsity_config=sparsity, dynamic_config=dynamic)
    t = time.perf_counter()
    unigram = _unigram_loss(split["train"], split["test"], tokenizer, seed)
    before = _mlm_nsp(model, split["test"], tokenizer, seed)
    pt.train()
    after = _mlm_nsp(model, split["test"], tokenizer, seed)
    prog.done("pre-training", t)

    t = time.perf_counter()
    layers = pt.sparsity_callback.controller.layer_metrics()
    numel = {n: m.weight_mask.numel() for n, m in sparse_modules(model).items()}
    dof = sum(layers[n]["dof"] * numel[n] for n in numel) / sum(numel.values())
    density = sum(layers[n]["density"] * numel[n] for n in numel) / sum(numel.values())
    model.config.architectures = ["BertForPreTraining"]
    ckpt = os.path.join(out, "bert-tiny-dynsparse")
    save_pretrained(model, ckpt, dynamic_config=dynamic, tokenizer=tokenizer,
                    training_stats={"step": pretrain_steps, "dof": dof, "density": density},
                    card_info={"model_name": "bert-tiny-dynsparse-quickstart (synthetic data)"})
    saved_masks = {n: m.weight_mask.clone() for n, m in sparse_modules(model).items()}
    qa = from_pretrained(BertForQuestionAnswering, ckpt)
    reloaded = sparse_modules(qa)
    # The encoder of the QA model is the pre-training model's encoder: same layer names under `bert.`.
    reload_exact = set(reloaded) == set(saved_masks) and all(
        torch.equal(saved_masks[n], m.weight_mask) for n, m in reloaded.items())
    prog.done("checkpoint saved and reloaded with hf_sparse.from_pretrained", t)

    t = time.perf_counter()
    masks_before = {n: m.weight_mask.clone() for n, m in reloaded.items()}
    squad_train = _squad_dataset(synthetic_squad(100, seed + 1))
    squad_eval = _squad_dataset(synthetic_squad(10, seed + 2))
    fn = dict(tokenizer=tokenizer, max_length=64, doc_stride=16)
    train_feats = squad_train.map(prepare_train_features, batched=True, fn_kwargs=fn,
                                  remove_columns=squad_train.column_names)
    eval_feats = squad_eval.map(prepare_eval_features, batched=True, fn_kwargs=fn,
                                remove_columns=squad_eval.column_names)
    ft = trainer(qa, "finetune-run", finetune_steps, "fine-tuning (fixed masks, synthetic QA)",
                 args={"learning_rate": 3e-3}, train_dataset=train_feats, data_collator=default_data_collator,
                 dynamic_config=DynamicSparsityConfig(algorithm="static"))
    ft.train()
    pred = ft.predict(eval_feats.remove_columns(["example_id", "offset_mapping"])).predictions
    answers = postprocess_predictions(squad_eval, eval_feats, pred[0], pred[1])
    scores = compute_squad(*to_metric_format(answers, squad_eval))
    kept = all(torch.equal(masks_before[n], m.weight_mask) for n, m in sparse_modules(qa).items())
    prog.done("fine-tuning and evaluation", t)
    return {"output_dir": out, "checkpoint": ckpt, "reload_exact": reload_exact,
            "mlm_loss_before": before[0], "mlm_loss_after": after[0], "mlm_unigram_loss": unigram,
            "nsp_loss_before": before[1], "nsp_loss_after": after[1], "nsp_chance_loss": math.log(2),
            "density": density, "dof": dof, "exact_match": scores["exact_match"], "f1": scores["f1"],
            "qa_baseline_em": QA_BASELINE_EM, "qa_questions": len(squad_eval),
            "masks_fixed_in_finetuning": kept, "vocab_size": len(tokenizer),
            "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
            "phase_seconds": prog.times, "seconds": time.perf_counter() - start}


def _unigram_loss(train, test, tokenizer, seed: int) -> float:
    """Cross-entropy of predicting the masked test tokens from the training tokens' frequencies alone.

    The MLM loss of a model that ignores the context; pre-training below it means the model reads the context.
    """
    import torch

    from ..data import WholeWordMaskCollator

    counts = torch.ones(len(tokenizer), dtype=torch.float64)  # add-one smoothing: no infinite loss
    for ids in train["input_ids"]:
        counts += torch.bincount(torch.tensor(ids), minlength=len(tokenizer)).double()
    counts[torch.tensor(sorted(set(tokenizer.all_special_ids)))] = 0  # never a prediction target
    logp = (counts / counts.sum()).log()
    batch = WholeWordMaskCollator(tokenizer, generator=torch.Generator().manual_seed(seed))(list(test))
    labels = batch["labels"][batch["labels"] != -100]
    return float(-logp[labels].mean())


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
    """The quickstart report: what was done, each number next to the baseline that gives it meaning."""
    mlm_gain = r["mlm_unigram_loss"] - r["mlm_loss_after"]
    nsp = ("learnt" if r["nsp_loss_after"] < r["nsp_chance_loss"] - 0.05 else
           "not learnt in so few steps: the synthetic sentences all share one grammar")
    if r["exact_match"] > r["qa_baseline_em"] + 10:
        qa = "the model matches the creature in the question"
    elif r["f1"] > 25:
        qa = "the model finds the kind of answer each question asks for, not yet which creature: train longer"
    else:
        qa = "the model has not learnt the task yet: train longer"
    times = ", ".join(f"{k.split(' ')[0]} {v:.0f}s" for k, v in r["phase_seconds"].items())
    return "\n".join([
        "hf-sparse quickstart (SYNTHETIC data generated by hf_sparse; no real text)",
        f"1. pre-trained a tiny DynSparse BERT for {r['pretrain_steps']} steps: density {r['density']:.3f}, "
        f"explored DOF {r['dof']:.3f} (fraction of weights ever active)",
        f"   MLM loss {r['mlm_loss_before']:.3f} -> {r['mlm_loss_after']:.3f}; a context-free unigram guess scores "
        f"{r['mlm_unigram_loss']:.3f} ({'below' if mlm_gain > 0 else 'not below'} it by {abs(mlm_gain):.3f}: "
        f"{'the model uses the context' if mlm_gain > 0 else 'train longer'})",
        f"   NSP loss {r['nsp_loss_before']:.3f} -> {r['nsp_loss_after']:.3f} (chance ln 2 = "
        f"{r['nsp_chance_loss']:.3f}: {nsp})",
        f"2. saved {r['checkpoint']} (hf_sparse format; try `hf-sparse inspect` on it)",
        f"3. reloaded it with hf_sparse.from_pretrained(BertForQuestionAnswering, ...): masks identical: "
        f"{r['reload_exact']}",
        f"4. fine-tuned on synthetic SQuAD-format QA for {r['finetune_steps']} steps, masks fixed: "
        f"{r['masks_fixed_in_finetuning']}",
        f"   EM {r['exact_match']:.1f}, F1 {r['f1']:.1f} on {r['qa_questions']} questions (two creatures per "
        f"paragraph; the right kind of answer for a creature picked at random gives EM {r['qa_baseline_em']:.0f}: "
        f"{qa})",
        f"outputs in {r['output_dir']}",
        f"time {r['seconds']:.0f}s ({times})",
    ])
