"""The recipes' options: argument dataclasses, ``--config file.yaml`` + command-line overrides, per-script option
sets and ``--config_overrides`` for model configs.

Arguments come from three layers, later ones winning: the script's paper defaults, the YAML file given with
``--config``, then the command line. Top-level YAML keys are `ModelArguments`, `DataArguments` and
``transformers.TrainingArguments`` fields (``--learning_rate 1e-4``); hf_sparse's configs live in YAML sections
``sparsity:``, ``dynamic:``, ``ift:`` and ``regularizer:`` and are overridden with dotted options
(``--sparsity.sparsity 0.99 --dynamic.algorithm rigl``). A config whose section is absent is ``None`` (a dense
run) unless an option of that section is given on the command line.

Each script sees only its own options: `ONLY_FOR` names the scripts of the script-specific fields (every other
field is common), and a script lists the sections it supports. ``--help`` shows exactly those; giving another
script's option or an unsupported section is an error naming the script that takes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from transformers import HfArgumentParser, TrainingArguments

from hf_sparse import DynamicSparsityConfig, RegularizerConfig, SparseIFTConfig, SparsityConfig

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

_PRETRAIN = ("pretrain_bert", "pretrain_gpt2")
_FINETUNE = ("finetune_squad", "finetune_wikitext")
_TEXT = ("pretrain_bert", "pretrain_gpt2", "finetune_wikitext")
#: Script-specific `ModelArguments` / `DataArguments` fields -> the scripts that use them (all others: every script).
ONLY_FOR: Dict[str, Tuple[str, ...]] = {
    "model_preset": _PRETRAIN, "config_overrides": _PRETRAIN, "tokenizer_vocab_size": _PRETRAIN,
    "masked_mlm_head": ("pretrain_bert",), "sparse_finetune": _FINETUNE, "dense_finetune": _FINETUNE,
    "validation_split_percentage": _TEXT, "text_column": _TEXT, "wikitext_articles": _TEXT,
    "max_predictions": ("pretrain_bert",), "mlm_probability": ("pretrain_bert",),
    "nsp_probability": ("pretrain_bert",), "short_seq_prob": ("pretrain_bert",),
    "doc_stride": ("finetune_squad",), "n_best_size": ("finetune_squad",), "max_answer_length": ("finetune_squad",),
    "teacher_model_name_or_path": _FINETUNE, "distill_temperature": _FINETUNE, "distill_alpha": _FINETUNE,
}


@dataclass
class ModelArguments:
    """What to train: a preset from scratch, or a checkpoint (Hub id or directory)."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Checkpoint to start from (dense or hf_sparse)."})
    model_preset: Optional[str] = field(
        default=None, metadata={"help": f"Train from scratch: {', '.join([*BERT_PRESETS, *GPT2_PRESETS])}."})
    config_overrides: Optional[str] = field(
        default=None, metadata={"help": "Model config overrides 'key=value,key=value' (e.g. 'n_positions=256'); "
                                        "values are parsed as YAML scalars (ints, floats, true/false, none)."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer Hub id or directory; default: the checkpoint's, else trained."})
    tokenizer_vocab_size: int = field(default=30522, metadata={"help": "Vocabulary size of a trained tokenizer."})
    sparse_finetune: bool = field(default=False, metadata={"help": "Fine-tune with the masks kept fixed (static)."})
    dense_finetune: bool = field(default=False, metadata={"help": "Densify first and fine-tune dense (SPDF)."})
    masked_mlm_head: bool = field(
        default=True, metadata={"help": "BERT: run the MLM head only at masked positions (same loss, faster)."})
    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Dense teacher checkpoint for knowledge distillation (same head and "
                                        "vocabulary as the student)."})
    distill_temperature: float = field(
        default=2.0, metadata={"help": "Distillation: softmax temperature T of the soft targets."})
    distill_alpha: float = field(
        default=0.5, metadata={"help": "Distillation: weight of the soft-target loss (the task loss gets 1 - alpha)."})

    def __post_init__(self):
        # "none" on the command line / in YAML clears a default (e.g. train a tokenizer instead of the Hub one).
        for name in ("model_name_or_path", "model_preset", "tokenizer_name", "config_overrides",
                     "teacher_model_name_or_path"):
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
    wikitext_articles: str = field(
        default="auto", metadata={"help": "Text files: split documents at WikiText ' = Title = ' headings: auto "
                                          "(when a file looks like WikiText), true or false (blank lines only)."})
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
        if str(self.wikitext_articles).lower() not in ("auto", "true", "false"):
            raise ValueError(f"wikitext_articles={self.wikitext_articles!r} must be auto, true or false.")
        self.wikitext_articles = str(self.wikitext_articles).lower()
        if not self.train_files and self.dataset_name is None:
            raise ValueError("No data: give --train_files (local files) or --dataset_name (a Hub dataset).")


class _RecipeParser(HfArgumentParser):
    """argparse's usage dump (hundreds of `TrainingArguments`) replaced by one exception the recipes report."""

    def error(self, message: str):
        raise ValueError(f"{message} (see --help)")


def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y"):
        return True
    if v.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _add_section(parser: argparse.ArgumentParser, prefix: str, cls, hidden: bool) -> None:
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
                           help=argparse.SUPPRESS if hidden else f.metadata.get("help"), **kwargs)


def _section_value(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    return value


def strip_debug_flag(argv: Sequence[str]) -> Tuple[List[str], bool]:
    """Removes the recipes' bare ``--debug`` (no value follows it; ``TrainingArguments``' ``--debug`` takes one).

    Returns:
        ``(argv without it, whether it was given)``.
    """
    argv = list(argv)
    keep = [not (a == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("--"))) for i, a in enumerate(argv)]
    return [a for a, k in zip(argv, keep) if k], not all(keep)


def _given(argv: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


def _foreign_options(parser: argparse.ArgumentParser, script: str) -> Dict[str, str]:
    """Hides the options of other scripts from ``--help``; returns ``{option string: the scripts that take it}``."""
    foreign: Dict[str, str] = {}
    for action in parser._actions:
        owners = ONLY_FOR.get(action.dest)
        if owners is not None and script not in owners:
            action.help = argparse.SUPPRESS
            for opt in action.option_strings:
                foreign[opt] = ", ".join(f"{s}.py" for s in owners)
    return foreign


def _check_script_options(script: str, argv: Sequence[str], top: Mapping[str, Any], foreign: Mapping[str, str],
                          file_values: Mapping[str, Any], unsupported: Mapping[str, str], config: str) -> None:
    for opt, owners in foreign.items():
        if _given(argv, opt):
            raise ValueError(f"{opt} is an option of {owners}, not of {script}.py; remove it.")
    for key in top:
        if f"--{key}" in foreign:
            raise ValueError(f"{config}: {key!r} is an option of {foreign['--' + key]}, not of {script}.py; "
                             "remove it from the file.")
    for prefix, why in unsupported.items():
        if prefix in file_values:
            raise ValueError(f"{config}: {script}.py does not support an '{prefix}:' section ({why}); remove it.")
        if any(a.startswith(f"--{prefix}.") for a in argv):
            raise ValueError(f"{script}.py does not support --{prefix}.* options ({why}).")


def parse_args(
    argv: Optional[Sequence[str]] = None,
    defaults: Optional[Dict[str, Any]] = None,
    extra: Sequence[type] = (),
    script: Optional[str] = None,
    unsupported: Optional[Mapping[str, str]] = None,
) -> Tuple[ModelArguments, DataArguments, TrainingArguments, Dict[str, Any]]:
    """Parses script defaults, then ``--config`` YAML, then the command line.

    Args:
        argv: Command line (``sys.argv[1:]`` by default).
        defaults: The script's paper defaults for any top-level field.
        extra: More argument dataclasses of a script; their instances follow ``training_args`` in the result.
        script: The script's name without ``.py`` (e.g. ``"finetune_squad"``): only its options (`ONLY_FOR`) are
            shown and accepted. ``None`` accepts every option.
        unsupported: Sections the script does not take, with the reason: ``{"ift": "why"}``. Giving one (YAML
            or command line) is an error; they are left out of ``--help``.

    ``--plugins mod1,mod2`` imports those modules first (e.g. ones that define algorithms or regularizers with
    `hf_sparse.register_algorithm` / `hf_sparse.register_regularizer`), so their names work in ``dynamic:`` /
    ``regularizer:`` sections and options. A bare ``--debug`` (read by `preflight.run_recipe`) is accepted and ignored.

    Returns:
        ``(model_args, data_args, training_args, sparse, *extra)`` where ``sparse`` maps ``sparsity`` /
        ``dynamic`` / ``ift`` / ``regularizer`` to a config object or ``None``.

    Example:
        >>> margs, dargs, targs, sparse = parse_args(["--config", "c.yaml", "--sparsity.sparsity", "0.99"])
    """
    argv = strip_debug_flag(sys.argv[1:] if argv is None else argv)[0]
    unsupported = dict(unsupported or {})
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--plugins", default=None)
    known, rest = pre.parse_known_args(argv)
    # User algorithms / regularizers register themselves when their module is imported: import them before any
    # config is built, so `--dynamic.algorithm my_regrowth` is accepted like a built-in name.
    for module in filter(None, (known.plugins or "").split(",")):
        try:
            importlib.import_module(module.strip())
        except ImportError as err:
            raise ValueError(f"--plugins: cannot import {module.strip()!r} ({err}).") from err
    file_values: Dict[str, Any] = {}
    if known.config is not None:
        if not os.path.isfile(known.config):
            raise FileNotFoundError(f"--config {known.config!r} does not exist.")
        with open(known.config, encoding="utf-8") as fh:
            try:
                file_values = yaml.safe_load(fh) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"{known.config}: not valid YAML ({' '.join(str(err).split())}).") from err
        if not isinstance(file_values, dict):
            raise ValueError(f"{known.config}: expected a mapping at the top level, got {type(file_values).__name__}.")

    prog = f"{script}.py" if script else None
    parser = _RecipeParser((ModelArguments, DataArguments, TrainingArguments, *extra), prog=prog)
    parser.add_argument("--config", default=None, help="YAML file of defaults; command-line options win.")
    parser.add_argument("--plugins", default=None, help="Modules to import first (user algorithms, regularizers).")
    for action in parser._actions:
        if action.dest == "debug":  # TrainingArguments' --debug takes a value; a bare --debug is the recipes'
            action.help = f"Bare --debug: show the full traceback of an error. With a value: {action.help}"
    for prefix, cls in SECTIONS.items():
        _add_section(parser, prefix, cls, hidden=prefix in unsupported)
    foreign = _foreign_options(parser, script) if script else {}
    top = {k: v for k, v in file_values.items() if k not in SECTIONS}
    if script:
        _check_script_options(script, rest, top, foreign, file_values, unsupported, known.config)
    known_dests = {a.dest for a in parser._actions}
    unknown = sorted(set(top) - known_dests)
    if unknown:
        raise ValueError(f"{known.config}: unknown option(s) {unknown}.")
    parser.set_defaults(**{**(defaults or {}), **top})
    ns, leftover = parser.parse_known_args(rest)
    if leftover:
        raise ValueError(f"Unknown command-line option(s): {leftover} (see --help).")
    values = vars(ns)
    sparse: Dict[str, Any] = {}
    for prefix, cls in SECTIONS.items():
        section = file_values.get(prefix)
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"{known.config}: section {prefix!r} must be a mapping, got {section!r}.")
        cli = {k.split(".", 1)[1]: _section_value(v) for k, v in values.items() if k.startswith(prefix + ".")}
        merged = None if section is None and not cli else {**(section or {}), **cli}
        sparse[prefix] = None if merged is None else cls.from_dict(merged)
    plain = {k: v for k, v in values.items() if "." not in k and k not in ("config", "plugins")}
    outputs = []
    for dtype in (ModelArguments, DataArguments, TrainingArguments, *extra):
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        outputs.append(dtype(**{k: v for k, v in plain.items() if k in names}))
    return (*outputs[:3], sparse, *outputs[3:])


# --- model config overrides ----------------------------------------------------------------------------------------
def apply_config_overrides(config, overrides: Optional[str]):
    """Applies ``--config_overrides "key=value,key=value"`` to a transformers config, in place.

    Values are YAML scalars (``512``, ``0.1``, ``true``, ``none``, ``gelu_new``), so keys whose default is
    ``None`` (GPT-2's ``n_inner``) can be set too. Every pair is checked before anything changes.

    Returns:
        The same config.

    Example:
        >>> apply_config_overrides(GPT2Config(), "n_inner=512,n_positions=256").n_inner
        512
    """
    if not overrides:
        return config
    updates = {}
    for pair in overrides.split(","):
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--config_overrides {overrides!r}: {pair!r} is not key=value.")
        if not hasattr(config, key):
            close = difflib.get_close_matches(key, list(config.to_dict()), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see the model's config.json for its keys"
            raise ValueError(f"--config_overrides: {type(config).__name__} has no key {key!r} ({hint}).")
        try:
            value = yaml.safe_load(raw.strip()) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw.strip()
        old = getattr(config, key)
        if isinstance(old, bool) and not isinstance(value, bool):
            raise ValueError(f"--config_overrides: {key}={raw!r} is not true / false.")
        if isinstance(old, (int, float)) and not isinstance(old, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(old, int) and isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"--config_overrides: {key}={raw!r} is not a number "
                                 f"(its default is {json.dumps(old)}).")
            value = type(old)(value)
        if isinstance(value, (dict, list)):
            raise ValueError(f"--config_overrides: {key}={raw!r} must be a single value.")
        updates[key] = value
    for key, value in updates.items():
        setattr(config, key, value)
    return config
