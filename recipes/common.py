"""Shared pieces of the recipes: tokenizer resolution (or training), model presets, sparse set-up for
fine-tuning, the trainer and the final sparse checkpoint. Options live in `arguments`, the checks made before
data preparation and the one-line error reports in `preflight`; both are re-exported here for the scripts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from transformers import TrainingArguments

import hf_sparse
from hf_sparse import DynamicSparsityConfig, RegularizerConfig

from arguments import (  # noqa: E402,F401  (re-exported for the scripts and tests)
    BERT_PRESETS, GPT2_PRESETS, ONLY_FOR, SECTIONS, DataArguments, ModelArguments, apply_config_overrides, parse_args,
)
from preflight import (  # noqa: E402,F401
    check_output_dir, check_sequence_length, check_sparsity_fits, run_recipe,
)
from tokenizer_setup import iter_texts, load_named_tokenizer, resolve_tokenizer  # noqa: E402,F401

logger = logging.getLogger("hf_sparse.recipes")


# --- models ------------------------------------------------------------------------------------------------------
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
    return apply_config_overrides(cfg, model_args.config_overrides)


def data_card_info(data_args, held_out: bool) -> Dict[str, Any]:
    """The model card's ``datasets`` (Hub ids only), ``training_data`` and ``eval_data`` entries of a run.

    Args:
        data_args: The recipe's `DataArguments`.
        held_out: Without validation files / a Hub validation split the script holds out
            ``--validation_split_percentage`` of the training documents (pre-training); ``False`` when it
            evaluates on a ``validation`` split (fine-tuning on the Hub).

    Returns:
        ``{"datasets": [...], "training_data": [...], "eval_data": [...]}`` (``datasets`` only for Hub data).
    """
    pct = f"{data_args.validation_split_percentage:g}% of the training documents held out"
    if data_args.train_files:
        train = [os.path.basename(str(f)) for f in data_args.train_files]
        evals = ([os.path.basename(str(f)) for f in data_args.validation_files] if data_args.validation_files
                 else [f"{pct} ({', '.join(train)})"])
        return {"training_data": train, "eval_data": evals}
    names = [n for n in data_args.dataset_name.split(",") if n]
    configs = (data_args.dataset_config_name or "").split(",") + [""] * len(names)
    label = [f"{n} ({c}, train)" if c else f"{n} (train)" for n, c in zip(names, configs)]
    evals = ([f"{pct} ({', '.join(names)})"] if held_out
             else [s.replace(", train)", ", validation)").replace("(train)", "(validation)") for s in label])
    return {"datasets": names, "training_data": label, "eval_data": evals}


def fit_vocabulary_(model, tokenizer) -> None:
    """Resizes a model built before its tokenizer was trained to the tokenizer's vocabulary, in place (the model
    is built first so that everything about it is checked before any data is prepared)."""
    if model.get_input_embeddings().num_embeddings != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None and hasattr(model.config, name):
            setattr(model.config, name, token_id)


def hold_out(train, data_args, shuffle: bool):
    """Splits ``--validation_split_percentage`` of the training documents off as validation data.

    Returns:
        ``(train, validation)``.
    """
    source = ", ".join(map(str, data_args.train_files or [data_args.dataset_name]))
    if len(train) < 2:
        raise ValueError(f"{source}: {len(train)} document(s) cannot be split into training and validation data; "
                         "give --validation_files, or more documents (blank lines between documents).")
    held = max(1, int(len(train) * data_args.validation_split_percentage / 100))
    split = train.train_test_split(test_size=held, seed=0, shuffle=shuffle)
    return split["train"], split["test"]


def is_sparse_checkpoint(path: Optional[str]) -> bool:
    return path is not None and os.path.isfile(os.path.join(path, "sparsity_config.json"))


def load_for_finetuning(model_class, model_args: ModelArguments, sparse: Dict[str, Any], **config_kwargs):
    """Loads a dense or hf_sparse checkpoint for fine-tuning as ``--sparse_finetune`` / ``--dense_finetune`` ask.

    A fine-pruning algorithm (``--dynamic.algorithm gmp|movement|soft_movement``) prunes a dense checkpoint down to
    the ``sparsity:`` target while fine-tuning; it implies sparse fine-tuning.

    Returns:
        ``(model, sparsity_config)``: the config `SparseTrainer` needs (``None`` for dense fine-tuning, or when
        the loaded model is already sparse).
    """
    path = model_args.model_name_or_path
    if path is None:
        raise ValueError("Fine-tuning needs --model_name_or_path (a dense or hf_sparse checkpoint).")
    # A Hub id is "name" or "org/name"; anything else that is not a directory is a mistyped local path.
    if not os.path.isdir(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)):
        raise FileNotFoundError(f"--model_name_or_path {path!r} is not a directory (give a checkpoint directory "
                                "or a Hub id).")
    if hasattr(model_class, "_model_mapping"):  # an Auto class: hf_sparse.from_pretrained needs the concrete one
        from transformers import AutoConfig

        config_type = type(AutoConfig.from_pretrained(path))
        if config_type not in model_class._model_mapping:
            raise ValueError(f"--model_name_or_path {path!r} is a {config_type.model_type} model, which has no "
                             f"{model_class.__name__[len('AutoModelFor'):]} head; use a BERT / GPT-2 checkpoint.")
        model_class = model_class._model_mapping[config_type]
    if is_sparse_checkpoint(path):
        model = hf_sparse.from_pretrained(model_class, path, dense=model_args.dense_finetune, **config_kwargs)
    else:
        model = model_class.from_pretrained(path, **config_kwargs)
    fine_pruning = is_fine_pruning(sparse.get("dynamic"))
    if fine_pruning and model_args.dense_finetune:
        raise ValueError(f"--dynamic.algorithm {sparse['dynamic'].algorithm} prunes while fine-tuning; it cannot be "
                         "combined with --dense_finetune.")
    if model_args.dense_finetune:
        if hf_sparse.sparse_modules(model):
            hf_sparse.densify_(model)
        return model, None
    already = bool(hf_sparse.sparse_modules(model))
    if fine_pruning and not already and sparse["sparsity"] is None:
        raise ValueError(f"--dynamic.algorithm {sparse['dynamic'].algorithm} needs the target sparsity (a 'sparsity:' "
                         "section or --sparsity.sparsity) to prune the dense checkpoint to.")
    if fine_pruning and not already:
        return model, dataclasses.replace(sparse["sparsity"], init="keep", mask_init="magnitude")
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


#: Algorithms that prune a dense checkpoint while fine-tuning ("fine-pruning", Sanh et al. 2020, arXiv:2005.07683);
#: fine-tuning forces every other algorithm to ``static``.
FINE_PRUNING_ALGORITHMS = ("gmp", "movement", "soft_movement")


def is_fine_pruning(dynamic: Optional[DynamicSparsityConfig]) -> bool:
    """Whether ``dynamic`` names a fine-pruning algorithm (`FINE_PRUNING_ALGORITHMS`)."""
    return dynamic is not None and dynamic.algorithm in FINE_PRUNING_ALGORITHMS


def static_config(dynamic: Optional[DynamicSparsityConfig]) -> DynamicSparsityConfig:
    """The dynamic config of a fine-tuning run: a fine-pruning algorithm as given, anything else ``static`` (masks
    fixed)."""
    if is_fine_pruning(dynamic):
        return dynamic
    if dynamic is not None and dynamic.algorithm != "static":
        logger.warning("Fine-tuning keeps masks static (fine-pruning takes %s); ignoring dynamic algorithm %r.",
                       ", ".join(FINE_PRUNING_ALGORITHMS), dynamic.algorithm)
    return DynamicSparsityConfig(algorithm="static")


def load_teacher(model_class, model_args: ModelArguments):
    """The distillation teacher (``--teacher_model_name_or_path``, dense or hf_sparse) and its `DistillationConfig`,
    or ``(None, None)`` without one."""
    path = model_args.teacher_model_name_or_path
    if path is None:
        return None, None
    from hf_sparse.trainer import DistillationConfig

    config = DistillationConfig(temperature=model_args.distill_temperature, alpha=model_args.distill_alpha)
    if not os.path.isdir(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)):
        raise FileNotFoundError(f"--teacher_model_name_or_path {path!r} is not a directory (give a checkpoint "
                                "directory or a Hub id).")
    if hasattr(model_class, "_model_mapping"):
        from transformers import AutoConfig

        model_class = model_class._model_mapping[type(AutoConfig.from_pretrained(path))]
    if is_sparse_checkpoint(path):
        return hf_sparse.from_pretrained(model_class, path), config
    return model_class.from_pretrained(path), config


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
    if getattr(model, "loss_type", "") is None and type(model).__name__.endswith("LMHeadModel"):
        # transformers picks the loss from the class name and does not recognise "GPT2LMHeadModel": it falls back
        # to the causal-LM loss with a warning the user cannot act on. Name the loss it falls back to.
        model.loss_type = "ForCausalLM"
    if kwargs.get("teacher") is None:  # distillation (teacher=, distillation_config=) needs SparseTrainer
        kwargs.pop("teacher", None), kwargs.pop("distillation_config", None)
    if sparse_needed or regs or kwargs.get("teacher") is not None:
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
