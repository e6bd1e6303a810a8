"""Shared pieces of the recipes: argument dataclasses, ``--config file.yaml`` + command-line overrides, tokenizer
resolution (or training), model presets, sparse set-up for fine-tuning and the final sparse checkpoint.

Arguments come from three layers, later ones winning: the script's paper defaults, the YAML file given with
``--config``, then the command line. Top-level YAML keys are `ModelArguments`, `DataArguments` and
``transformers.TrainingArguments`` fields (``--learning_rate 1e-4``); hf_sparse's configs live in YAML sections
``sparsity:``, ``dynamic:``, ``ift:`` and ``regularizer:`` and are overridden with dotted options
(``--sparsity.sparsity 0.99 --dynamic.algorithm rigl``). A config whose section is absent is ``None`` (a dense
run) unless an option of that section is given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from transformers import HfArgumentParser, TrainingArguments

import hf_sparse
from hf_sparse import DynamicSparsityConfig, RegularizerConfig, SparseIFTConfig, SparsityConfig

from tokenizer_setup import iter_texts, resolve_tokenizer  # noqa: E402,F401  (re-exported for the scripts)

logger = logging.getLogger("hf_sparse.recipes")

#: YAML section / option prefix -> hf_sparse config class.
SECTIONS = {"sparsity": SparsityConfig, "dynamic": DynamicSparsityConfig, "ift": SparseIFTConfig,
            "regularizer": RegularizerConfig}

#: Turc et al. (2019) BERT sizes: layers, hidden (heads = hidden / 64, intermediate = 4 x hidden).
BERT_PRESETS = {"bert-tiny": (2, 128), "bert-mini": (4, 256), "bert-small": (4, 512), "bert-medium": (8, 512),
                "bert-base": (12, 768), "bert-test": (2, 32)}
#: GPT-2 family: layers, hidden, heads, context. GPT-3 Small = GPT-2 small with a 2048 context (Sparse-IFT App. C);
#: Cerebras-GPT 111M: 10 x 768 (Cerebras-GPT paper, Table 2).
GPT2_PRESETS = {"gpt2-small": (12, 768, 12, 1024), "gpt3-small": (12, 768, 12, 2048),
                "cerebras-gpt-111m": (10, 768, 12, 2048), "gpt2-test": (2, 32, 4, 128)}


@dataclass
class ModelArguments:
    """What to train: a preset from scratch, or a checkpoint (Hub id or directory)."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Checkpoint to start from (dense or hf_sparse)."})
    model_preset: Optional[str] = field(
        default=None, metadata={"help": f"Train from scratch: {', '.join([*BERT_PRESETS, *GPT2_PRESETS])}."})
    config_overrides: Optional[str] = field(
        default=None, metadata={"help": "Model config overrides 'key=value,key=value' (e.g. 'n_positions=256')."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer Hub id or directory; default: the checkpoint's, else trained."})
    tokenizer_vocab_size: int = field(default=30522, metadata={"help": "Vocabulary size of a trained tokenizer."})
    sparse_finetune: bool = field(default=False, metadata={"help": "Fine-tune with the masks kept fixed (static)."})
    dense_finetune: bool = field(default=False, metadata={"help": "Densify first and fine-tune dense (SPDF)."})
    masked_mlm_head: bool = field(
        default=True, metadata={"help": "BERT: run the MLM head only at masked positions (same loss, faster)."})

    def __post_init__(self):
        # "none" on the command line / in YAML clears a default (e.g. train a tokenizer instead of the Hub one).
        for name in ("model_name_or_path", "model_preset", "tokenizer_name", "config_overrides"):
            if isinstance(getattr(self, name), str) and getattr(self, name).lower() in ("none", "null", ""):
                setattr(self, name, None)
        if self.sparse_finetune and self.dense_finetune:
            raise ValueError("--sparse_finetune and --dense_finetune are mutually exclusive; got both.")
        if self.model_preset is not None and self.model_preset not in {**BERT_PRESETS, **GPT2_PRESETS}:
            raise ValueError(f"model_preset={self.model_preset!r} is not one of {[*BERT_PRESETS, *GPT2_PRESETS]}.")


@dataclass
class DataArguments:
    """Where the data comes from and how it is cut."""

    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id(s), comma-separated."})
    dataset_config_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset config(s), comma-separated."})
    train_files: Optional[List[str]] = field(default=None, metadata={"help": "Local training files."})
    validation_files: Optional[List[str]] = field(default=None, metadata={"help": "Local validation files."})
    validation_split_percentage: float = field(
        default=1.0, metadata={"help": "Percent of the training documents held out when no validation data."})
    text_column: str = field(default="text", metadata={"help": "Text column of JSON-lines / Hub data."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per example (BERT 128/384, GPT-2 2048)."})
    max_predictions: int = field(default=20, metadata={"help": "BERT: masked positions per sequence at most."})
    mlm_probability: float = field(default=0.15, metadata={"help": "BERT: fraction of tokens masked."})
    nsp_probability: float = field(default=0.5, metadata={"help": "BERT: probability of a random next segment."})
    short_seq_prob: float = field(default=0.1, metadata={"help": "BERT: probability of a shorter example."})
    doc_stride: int = field(default=128, metadata={"help": "SQuAD: overlap between windows."})
    n_best_size: int = field(default=20, metadata={"help": "SQuAD: start / end candidates per window."})
    max_answer_length: int = field(default=30, metadata={"help": "SQuAD: longest answer in tokens."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training examples."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation examples."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "datasets.map processes."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "datasets / Hub cache directory."})

    def __post_init__(self):
        for name in ("train_files", "validation_files"):  # a single path given as a string in YAML
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        if self.dataset_name is not None and self.dataset_name.lower() in ("none", "null", ""):
            self.dataset_name = None
        if self.max_seq_length < 8:
            raise ValueError(f"max_seq_length={self.max_seq_length} is too short (at least 8 tokens).")
        if not 0.0 < self.validation_split_percentage < 100.0:
            raise ValueError(f"validation_split_percentage={self.validation_split_percentage} must be in (0, 100).")
        if not self.train_files and self.dataset_name is None:
            raise ValueError("No data: give --train_files (local files) or --dataset_name (a Hub dataset).")


# --- argument parsing -------------------------------------------------------------------------------------------
def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y"):
        return True
    if v.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _add_section(parser: argparse.ArgumentParser, prefix: str, cls) -> None:
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{prefix} ({cls.__name__})")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, kwargs = hints[f.name], {}
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if any(typing.get_origin(a) in (list, List) for a in args) or typing.get_origin(tp) in (list, List):
            kwargs["nargs"] = "+"  # a list of names; a single regex is a one-element list, unwrapped below
        else:
            base = args[0] if typing.get_origin(tp) is typing.Union and args else tp
            kwargs["type"] = _str2bool if base is bool else base if base in (int, float) else str
        group.add_argument(f"--{prefix}.{f.name}", dest=f"{prefix}.{f.name}", default=argparse.SUPPRESS,
                           help=f.metadata.get("help"), **kwargs)


def _section_value(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    return value


def parse_args(
    argv: Optional[Sequence[str]] = None, defaults: Optional[Dict[str, Any]] = None, extra: Sequence[type] = ()
) -> Tuple[ModelArguments, DataArguments, TrainingArguments, Dict[str, Any]]:
    """Parses script defaults, then ``--config`` YAML, then the command line.

    Args:
        argv: Command line (``sys.argv[1:]`` by default).
        defaults: The script's paper defaults for any top-level field.
        extra: Unused hook for scripts with more dataclasses (kept empty by the recipes here).

    ``--plugins mod1,mod2`` imports those modules first (e.g. ones that define algorithms or regularizers with
    `hf_sparse.register_algorithm` / `hf_sparse.register_regularizer`), so their names work in ``dynamic:`` /
    ``regularizer:`` sections and options.

    Returns:
        ``(model_args, data_args, training_args, sparse)`` where ``sparse`` maps ``sparsity`` / ``dynamic`` /
        ``ift`` / ``regularizer`` to a config object or ``None``.

    Example:
        >>> margs, dargs, targs, sparse = parse_args(["--config", "c.yaml", "--sparsity.sparsity", "0.99"])
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--plugins", default=None)
    known, rest = pre.parse_known_args(argv)
    # User algorithms / regularizers register themselves when their module is imported: import them before any
    # config is built, so `--dynamic.algorithm my_regrowth` is accepted like a built-in name.
    for module in filter(None, (known.plugins or "").split(",")):
        importlib.import_module(module.strip())
    file_values: Dict[str, Any] = {}
    if known.config is not None:
        if not os.path.isfile(known.config):
            raise FileNotFoundError(f"--config {known.config!r} does not exist.")
        with open(known.config, encoding="utf-8") as fh:
            file_values = yaml.safe_load(fh) or {}
        if not isinstance(file_values, dict):
            raise ValueError(f"{known.config}: expected a mapping at the top level, got {type(file_values).__name__}.")

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, *extra))
    parser.add_argument("--config", default=None, help="YAML file of defaults; command-line options win.")
    for prefix, cls in SECTIONS.items():
        _add_section(parser, prefix, cls)
    top = {k: v for k, v in file_values.items() if k not in SECTIONS}
    known_dests = {a.dest for a in parser._actions}
    unknown = sorted(set(top) - known_dests)
    if unknown:
        raise ValueError(f"{known.config}: unknown option(s) {unknown}.")
    parser.set_defaults(**{**(defaults or {}), **top})
    ns, leftover = parser.parse_known_args(rest)
    if leftover:
        raise ValueError(f"Unknown command-line option(s): {leftover}.")
    values = vars(ns)
    sparse: Dict[str, Any] = {}
    for prefix, cls in SECTIONS.items():
        section = file_values.get(prefix)
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"{known.config}: section {prefix!r} must be a mapping, got {section!r}.")
        cli = {k.split(".", 1)[1]: _section_value(v) for k, v in values.items() if k.startswith(prefix + ".")}
        merged = None if section is None and not cli else {**(section or {}), **cli}
        sparse[prefix] = None if merged is None else cls.from_dict(merged)
    plain = {k: v for k, v in values.items() if "." not in k and k != "config"}
    outputs = []
    for dtype in (ModelArguments, DataArguments, TrainingArguments, *extra):
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        outputs.append(dtype(**{k: v for k, v in plain.items() if k in names}))
    return (*outputs[:3], sparse)


# --- models ------------------------------------------------------------------------------------------------------
def _apply_overrides(config, overrides: Optional[str]):
    if overrides:
        config.update_from_string(overrides)
    return config


def preset_config(model_args: ModelArguments, vocab_size: int, **extra):
    """The transformers config of ``--model_preset`` with ``--config_overrides`` applied."""
    from transformers import BertConfig, GPT2Config

    preset = model_args.model_preset
    if preset in BERT_PRESETS:
        layers, hidden = BERT_PRESETS[preset]
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=max(hidden // 64, 2), intermediate_size=4 * hidden, **extra)
    elif preset in GPT2_PRESETS:
        layers, hidden, heads, ctx = GPT2_PRESETS[preset]
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=ctx, **extra)
    else:
        raise ValueError(f"model_preset={preset!r} is not one of {[*BERT_PRESETS, *GPT2_PRESETS]}.")
    return _apply_overrides(cfg, model_args.config_overrides)


def is_sparse_checkpoint(path: Optional[str]) -> bool:
    return path is not None and os.path.isfile(os.path.join(path, "sparsity_config.json"))


def load_for_finetuning(model_class, model_args: ModelArguments, sparse: Dict[str, Any], **config_kwargs):
    """Loads a dense or hf_sparse checkpoint for fine-tuning as ``--sparse_finetune`` / ``--dense_finetune`` ask.

    Returns:
        ``(model, sparsity_config)``: the config `SparseTrainer` needs (``None`` for dense fine-tuning, or when
        the loaded model is already sparse).
    """
    path = model_args.model_name_or_path
    if path is None:
        raise ValueError("Fine-tuning needs --model_name_or_path (a dense or hf_sparse checkpoint).")
    if hasattr(model_class, "_model_mapping"):  # an Auto class: hf_sparse.from_pretrained needs the concrete one
        from transformers import AutoConfig

        model_class = model_class._model_mapping[type(AutoConfig.from_pretrained(path))]
    if is_sparse_checkpoint(path):
        model = hf_sparse.from_pretrained(model_class, path, dense=model_args.dense_finetune, **config_kwargs)
    else:
        model = model_class.from_pretrained(path, **config_kwargs)
    if model_args.dense_finetune:
        if hf_sparse.sparse_modules(model):
            hf_sparse.densify_(model)
        return model, None
    already = bool(hf_sparse.sparse_modules(model))
    if model_args.sparse_finetune and not already and sparse["sparsity"] is None:
        raise ValueError(f"--sparse_finetune from the dense checkpoint {path!r} needs a sparsity config "
                         "(a 'sparsity:' section or --sparsity.sparsity) to choose magnitude masks.")
    if not model_args.sparse_finetune and already:
        raise ValueError(f"{path!r} is a sparse checkpoint: choose --sparse_finetune (masks fixed) or "
                         "--dense_finetune (densify first, SPDF).")
    if not model_args.sparse_finetune:
        return model, None
    cfg = None if already else dataclasses.replace(sparse["sparsity"], init="keep", mask_init="magnitude")
    return model, cfg


def static_config(dynamic: Optional[DynamicSparsityConfig]) -> DynamicSparsityConfig:
    """Fine-tuning keeps masks fixed: the dynamic config is forced to ``static``."""
    if dynamic is not None and dynamic.algorithm != "static":
        logger.warning("Fine-tuning keeps masks static; ignoring dynamic algorithm %r.", dynamic.algorithm)
    return DynamicSparsityConfig(algorithm="static")


def make_trainer(model, args, sparse_needed: bool, sparsity_config=None, dynamic_config=None, mean_loss=False,
                 regularizer: Optional[RegularizerConfig] = None, **kwargs):
    """`hf_sparse.SparseTrainer` when the model is (or becomes) sparse or is regularized, else a plain ``Trainer``.

    Args:
        regularizer: A sparsifying regularizer, applied by `hf_sparse.SparseTrainer` (``regularizers=``): coupled
            ones add their penalty to the loss, decoupled ones run after each optimizer step; STR / spred install
            their reparametrisation before the optimizer exists, and `save_final` folds them back.
        mean_loss: The model returns a mean loss and ignores ``num_items_in_batch`` although its ``forward`` takes
            ``**kwargs`` (BERT pre-training / QA heads in transformers 5). The Trainer would otherwise treat the
            loss as a sum and multiply it by the number of processes under DDP (and not divide it over gradient
            accumulation steps), scaling the gradients and breaking gradient clipping.
    """
    from transformers import Trainer

    regs = [hf_sparse.build_regularizer(regularizer)] if regularizer is not None else []
    if sparse_needed or regs:
        # SparseTrainer applies the regularizers itself (and trains a dense model dense when nothing is sparse).
        if sparse_needed:
            kwargs.update(sparsity_config=sparsity_config, dynamic_config=dynamic_config)
        trainer = hf_sparse.SparseTrainer(model=model, args=args, regularizers=regs, **kwargs)
    else:
        trainer = Trainer(model=model, args=args, **kwargs)
        trainer.regularizers = []
    if mean_loss:
        trainer.model_accepts_loss_kwargs = False
    return trainer


# --- results and checkpoint ---------------------------------------------------------------------------------
def train_and_evaluate_lm(trainer, training_args: TrainingArguments) -> Dict[str, Any]:
    """Trains (resuming when asked), evaluates, and adds perplexity = exp(mean eval loss) and the world size."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))  # capped: exp overflows past ~700
    metrics["world_size"] = int(training_args.world_size)
    return metrics


def training_stats(trainer, seq_len: int) -> Dict[str, Any]:
    """Step, explored DOF and training FLOPs (forward + backward, from the current masks) of a finished run."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    args = trainer.args
    step = int(trainer.state.global_step)
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    count = hf_sparse.flops.count(model, seq_len=seq_len, batch_size=batch)
    stats: Dict[str, Any] = {"step": step, "world_size": int(args.world_size),
                             "train_flops": float(step * count.sparse_train),
                             "dense_train_flops": float(step * count.dense_train)}
    controller = getattr(getattr(trainer, "sparsity_callback", None), "controller", None)
    if controller is not None:
        layers = controller.layer_metrics()
        numel = {n: m.weight_mask.numel() for n, m in controller.modules.items()}
        total = sum(numel.values())
        for key in ("dof", "density"):  # weighted by layer size: the model-wide fractions
            stats[key] = sum(v[key] * numel[n] for n, v in layers.items()) / total
    return stats


#: Evaluation bookkeeping that is not a quality metric (kept in results.json, left off the model card).
_NOT_QUALITY = {"eval_examples", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def save_final(trainer, tokenizer, output_dir: str, sparse: Dict[str, Any], stats: Dict[str, Any],
               metrics: Dict[str, Any], task: Tuple[str, str] = ("fill-mask", "text"),
               card_info: Optional[Dict[str, Any]] = None) -> None:
    """Saves the final model (hf_sparse checkpoint with card when sparse) and ``results.json``.

    Args:
        task: ``(task_type, dataset_name)`` of the evaluation results put on the model card.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainer.accelerator.wait_for_everyone()
    main = trainer.is_world_process_zero()
    if getattr(trainer, "regularizers", None):
        hf_sparse.fold_(model)  # STR / spred reparametrisations back to plain weights (a no-op otherwise)
    if hf_sparse.sparse_modules(model):
        dynamic = getattr(getattr(trainer, "sparsity_callback", None), "dynamic_config", None) or sparse.get("dynamic")
        evals = [{"task_type": task[0], "dataset_type": task[1], "dataset_name": task[1],
                  "metric_type": k[len("eval_"):], "metric_value": float(v)}
                 for k, v in metrics.items() if k.startswith("eval_") and k not in _NOT_QUALITY]
        # A fine-tuned Sparse-IFT model keeps describing its transformation (recorded in its config.json).
        ift = sparse.get("ift") or hf_sparse.get_sparse_ift_config(model)
        hf_sparse.save_pretrained(model, output_dir, dynamic_config=dynamic, ift_config=ift,
                                  training_stats=stats, tokenizer=tokenizer, is_main_process=main,
                                  card_info={"eval_results": evals, **(card_info or {})})
    elif main:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    if main:
        Path(output_dir, "results.json").write_text(
            json.dumps({"metrics": metrics, "training_stats": stats}, indent=2) + "\n", encoding="utf-8")
    trainer.accelerator.wait_for_everyone()


def setup_logging(training_args: TrainingArguments) -> None:
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logging.getLogger("hf_sparse").setLevel(level)
